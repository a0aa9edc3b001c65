"""The server lock and the pid file: who runs, proven by a lock, not by a pid that is alive.

The server holds a lock on ``<pid_file>.lock`` for its whole life (the kernel drops it when the
process dies, even by SIGKILL), and the pid in the pid file is believed only while that lock is
held: a pid file left by a crash may name any live process, and that one is never signalled.
The lock is two locks on one open file: an ``flock`` that says "a mailrouter runs" (forked
workers share it, so workers that outlive their supervisor still count) and a POSIX record lock
whose holder the kernel names (``F_GETLK``), which is the only pid ``stop`` will signal. The lock
file stays in place: unlinking it could let two servers lock two different files.

The pid file holds only the pid (as systemd's ``PIDFile=`` expects); the address the server is
bound to is written beside it, in ``<pid_file>.address``, for ``mailrouter status``. Both are
written by the server process once its socket is bound, and removed when it exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mailrouter.config import Settings
from mailrouter.errors import MailRouterError

log = logging.getLogger(__name__)

Ready = Callable[[str], None]  # called with the bound address once the server listens

STARTUP_TIMEOUT = 60.0
POLL = 0.05
_PROBE_GRACE = 0.5  # seconds a start waits out another command's momentary probe of the lock
_FLOCK = "hhqqi4x"  # struct flock (Linux, 64-bit off_t): type, whence, start, len, pid


def pid_path(settings: Settings) -> Path:
    """Where the pid file is."""
    return settings.path(settings.pid_file)


def address_path(settings: Settings) -> Path:
    """Where the bound address is written, beside the pid file."""
    return Path(f"{pid_path(settings)}.address")


def lock_path(settings: Settings) -> Path:
    """The file the running server keeps locked, beside the pid file."""
    return Path(f"{pid_path(settings)}.lock")


def read_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid in the pid file ``path``; None if it is missing or holds no pid."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MailRouterError(f"cannot read pid file {path}: {exc.strerror}") from None
    return int(text) if text.isdigit() and int(text) > 0 else None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, but belongs to another user
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    return True


# -- the server lock -------------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """A mailrouter holds the server lock: process ``pid``, or one that cannot be named (None:
    workers left by a killed supervisor, a server in a pid namespace not visible from here, or
    this very process, whose own POSIX lock does not show)."""

    pid: int | None


def _posix_holder(fd: int) -> int | None:
    """The pid holding a POSIX lock on ``fd``'s file (0: not visible from here); None: nobody."""
    query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    return None if kind == fcntl.F_UNLCK else max(pid, 0)


def lock_holder(settings: Settings) -> Holder | None:
    """Who holds the server lock; None if no mailrouter does.

    The POSIX lock is only looked at (``F_GETLK`` takes nothing); the ``flock`` is tried shared
    and non-blocking, and released at once. Not for the process that holds the lock itself:
    closing any descriptor of the file would drop its POSIX lock.
    """
    path = lock_path(settings)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MailRouterError(f"cannot open lock file {path}: {exc.strerror}") from None
    try:
        pid = _posix_holder(fd)
        if pid is not None:
            return Holder(pid or None)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return Holder(None)
        return None
    finally:
        os.close(fd)  # releases the shared flock, if it was taken


def running_pid(settings: Settings) -> int | None:
    """The pid of the running server, as the lock it holds proves; None if there is none."""
    holder = lock_holder(settings)
    return holder.pid if holder is not None else None


def _already_running(settings: Settings, holder: Holder) -> MailRouterError:
    if holder.pid is not None:
        return MailRouterError(f"mailrouter is already running (pid {holder.pid})")
    return MailRouterError(
        f"mailrouter is already running: {lock_path(settings)} is locked by a process "
        "that cannot be identified"
    )


def not_running(settings: Settings) -> str:
    """The "not running" line, saying what a stale pid file names, if one was left behind."""
    path = pid_path(settings)
    if not path.exists():
        return "mailrouter is not running"
    pid = read_pid(path)
    if pid is None:
        return f"mailrouter is not running (stale pid file {path} holds no pid)"
    return f"mailrouter is not running (stale pid file {path}: pid {pid} does not hold the lock)"


def ensure_not_running(settings: Settings) -> None:
    """Raise if a mailrouter holds the server lock (a stale pid file is no reason to refuse)."""
    holder = lock_holder(settings)
    if holder is not None:
        raise _already_running(settings, holder)


@contextlib.contextmanager
def server_lock(settings: Settings) -> Iterator[None]:
    """Hold the server lock for the life of the block; raise if another mailrouter holds it.

    The descriptor is close-on-exec, so programs a handler runs do not inherit the lock; forked
    workers do share the ``flock``, which is right: while one lives, a mailrouter runs.
    """
    path = lock_path(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise MailRouterError(f"cannot open lock file {path}: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + _PROBE_GRACE
        while not _try_lock(fd):
            pid = _posix_holder(fd)
            if pid is not None or time.monotonic() >= deadline:  # a server, not a probe
                raise _already_running(settings, Holder(pid or None))
            time.sleep(POLL / 5)
        yield
    finally:
        os.close(fd)  # never LOCK_UN: that would unlock the workers' shared flock too


def _try_lock(fd: int) -> bool:
    """Take the flock, then the POSIX lock that names this process; False if either is held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):  # EAGAIN, or EACCES for a POSIX lock
        return False
    return True


def read_address(settings: Settings) -> str:
    """The address the running server is bound to, or ``"?"`` if it was not recorded."""
    with contextlib.suppress(OSError):
        return address_path(settings).read_text(encoding="utf-8").strip() or "?"
    return "?"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_pid_file(settings: Settings, address: str) -> None:
    """Record this process's pid and its bound address (each file replaced atomically)."""
    path = pid_path(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(address_path(settings), f"{address}\n")
        _write_atomically(path, f"{os.getpid()}\n")
    except OSError as exc:
        raise MailRouterError(f"cannot write pid file {path}: {exc.strerror}") from None


def remove_pid_file(settings: Settings, pid: int | None) -> None:
    """Remove the pid and address files, if the pid file names ``pid`` (None: whatever it says)."""
    path = pid_path(settings)
    with contextlib.suppress(MailRouterError):
        if pid is not None and read_pid(path) != pid:
            return
    for name in (path, address_path(settings)):
        with contextlib.suppress(FileNotFoundError):
            name.unlink()


@contextlib.contextmanager
def pid_file(settings: Settings) -> Iterator[Ready]:
    """Take the server lock and yield the ``on_ready`` callback that writes the pid file.

    A pid file found under the lock is stale (no server held it) and is removed at once; on
    exit this process's pid file is removed, then the lock released.
    """
    with server_lock(settings):
        if pid_path(settings).exists():
            log.info("removing stale pid file %s", pid_path(settings))
            remove_pid_file(settings, pid=None)
        try:
            yield lambda address: write_pid_file(settings, address)
        finally:
            with contextlib.suppress(OSError):
                remove_pid_file(settings, os.getpid())
