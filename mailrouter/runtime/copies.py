"""Copies of the messages received, kept for the web console's message page.

The journal keeps each message's envelope, headers and outcomes, not its bytes. While the
console is on (``console_port``), the server registers ``MessageCopies.observe`` with the
receiver: it only puts the bytes on a list. After the event loop's pass (the replies of that
pass written, so never on the way to a 250), one thread of its own writes the batch, each
message to ``console_messages/<delivery id>`` (written to a temporary name, then renamed into
place): one thread hop per batch, not per message. It is a convenience copy, not the
delivery promise: no fsync, and a failed write is logged and forgotten. Copies older than the
journal's retention are purged by the same thread, at start and then hourly as mail arrives.
``console_messages = ""`` keeps none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailrouter.config import Settings
from mailrouter.inbound.outcome import DeliveryRecord
from mailrouter.message import delivery_id

log = logging.getLogger(__name__)

PURGE_EVERY = 3600.0  # seconds between purges of old copies
THREAD = "mailrouter-io-copies"  # the writer's thread name (an I/O thread of the server)
_ID = re.compile(r"[0-9a-f]{32}")


class MessageCopies:
    """The folder of kept messages, named by delivery id; ``observe`` is a receiver observer."""

    def __init__(self, folder: Path, retention_days: float) -> None:
        self.folder = folder
        self.retention = retention_days * 86400  # seconds
        self._writer: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._purged = 0.0
        self._pending: list[tuple[str, bytes]] = []

    @classmethod
    def of_settings(cls, settings: Settings) -> MessageCopies | None:
        """The copies ``settings`` name (``console_messages``; ``""``: none are kept)."""
        if not settings.console_messages:
            return None
        return cls(settings.path(settings.console_messages), settings.journal_retention_days)

    def start(self) -> None:
        """Start the writer thread, on the running loop; it purges old copies first."""
        self._loop = asyncio.get_running_loop()
        self._writer = ThreadPoolExecutor(1, THREAD)
        self._writer.submit(self._purge_due)

    def stop(self) -> None:
        """Write what is pending, let the writes finish, then end the thread."""
        self._flush()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)

    def observe(self, record: DeliveryRecord) -> None:
        """Keep ``record``'s bytes, once the reply is on its way (see the module doc)."""
        if self._loop is None or not record.data:
            return
        self._pending.append((record.sender, record.data))
        if len(self._pending) == 1:  # after this loop pass: once the replies are written
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if self._writer is not None and batch:
            self._writer.submit(self._write, batch)

    def _write(self, batch: list[tuple[str, bytes]]) -> None:
        self.keep(batch)
        self._purge_due()

    def keep(self, batch: list[tuple[str, bytes]]) -> None:
        """Write each (sender, bytes) copy to a temporary name, then rename it into place:
        os-level calls on the folder's descriptor, a few system calls a copy. Blocks."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            log.warning("cannot keep copies of messages in %s: %s", self.folder, exc)
            return
        try:
            for sender, data in batch:
                _write_one(folder, delivery_id(sender, data), data)
        finally:
            os.close(folder)

    def _purge_due(self) -> None:
        now = time.time()
        if now - self._purged >= PURGE_EVERY:
            self._purged = now
            self.purge(now - self.retention)

    def purge(self, before: float) -> int:
        """Delete the copies last written before ``before`` (epoch seconds); how many."""
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for path in self.folder.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < before:
                        path.unlink()
                        removed += 1
        if removed:
            log.info("purged %d kept message copies", removed)
        return removed

    def read(self, ident: str) -> bytes | None:
        """The bytes kept for delivery id ``ident``, or None."""
        if not _ID.fullmatch(ident):
            return None
        try:
            return (self.folder / ident).read_bytes()
        except FileNotFoundError:
            return None


def _write_one(folder: int, ident: str, data: bytes) -> None:
    temporary = f".{ident}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=folder)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(temporary, ident, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError as exc:
        log.warning("cannot keep a copy of message %s: %s", ident, exc)
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder)
