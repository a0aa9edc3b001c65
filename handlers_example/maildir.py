"""Crash-safe writes: into a maildir (write into ``tmp/``, fsync, rename into ``new/``), and
the same way into any file (``write_durably``)."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path


def deliver(folder: Path, data: bytes) -> str:
    """Store ``data`` as a new message in the maildir ``folder`` (created if needed); its name."""
    for sub in ("tmp", "new", "cur"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}.P{os.getpid()}R{secrets.token_hex(8)}.mailrouter"
    tmp = folder / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    write_durably(fd, tmp, folder / "new" / name, data)
    return name


def write_durably(fd: int, tmp: Path, target: Path, data: bytes) -> None:
    """Write ``data`` into ``tmp`` (open as ``fd``), fsync it, rename it to ``target`` and make
    the rename durable; on any failure ``tmp`` is removed and ``target`` left as it was."""
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename into ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
