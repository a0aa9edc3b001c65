"""Process management: the server lock, the pid file, detaching, stopping, dropping privileges.

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

About 500 lines for one concept, the process on the machine: the lock, the pid file, the
detach, the stop and the privilege drop each need the others' view of the same files.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import logging
import os
import pwd
import select
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mailrouter.config import Settings
from mailrouter.errors import MailRouterError

log = logging.getLogger(__name__)

Ready = Callable[[str], None]
STARTUP_TIMEOUT = 60.0
_POLL = 0.05
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
            time.sleep(_POLL / 5)
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


def detach(settings: Settings, start: Callable[[Ready], None]) -> str:
    """Run ``start(on_ready)`` in a daemon process; return the address once it is bound.

    Double fork and ``setsid`` so the daemon has no controlling terminal; it runs in the project
    folder with umask 022 and stdio on /dev/null. A pipe carries ``ready ADDRESS`` or
    ``error MESSAGE`` back; a daemon that dies silently, or never answers, is an error too.
    The daemon takes the server lock before anything else, and that decides between two starts;
    the check here only answers early.
    """
    ensure_not_running(settings)
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the first child: a new session, then the daemon in a second fork
        os.close(read_end)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        os._exit(_daemon_main(settings, start, write_end))
    os.close(write_end)
    try:
        os.waitpid(child, 0)
        answer = _read_answer(read_end, STARTUP_TIMEOUT)
    finally:
        os.close(read_end)
    status, _, detail = answer.partition(" ")
    if status == "ready" and detail:
        return detail
    if status == "error" and detail:
        raise MailRouterError(detail)
    log_file = settings.path(settings.log_file)
    if status == "timeout":
        raise MailRouterError(
            f"mailrouter did not get ready within {STARTUP_TIMEOUT:g}s; see {log_file}"
        )
    raise MailRouterError(f"mailrouter exited during startup; see {log_file}")


def _read_answer(fd: int, timeout: float) -> str:
    """The first line the daemon writes to the readiness pipe; "" on EOF, "timeout" on none."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return "timeout"
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\n")[0].decode("utf-8", "replace").strip()


def _daemon_main(settings: Settings, start: Callable[[Ready], None], pipe: int) -> int:
    """The daemon's life: detach from the caller's context, run ``start``, report on the pipe."""
    reported = False

    def report(line: str) -> None:
        nonlocal reported
        if not reported:
            reported = True
            with contextlib.suppress(OSError):
                os.write(pipe, (" ".join(line.split()) + "\n").encode())
                os.close(pipe)

    code = 0
    try:
        os.chdir(settings.root)
        os.umask(0o022)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        with pid_file(settings) as write_pid:

            def on_ready(address: str) -> None:
                write_pid(address)
                report(f"ready {address}")

            start(on_ready)
    except (MailRouterError, OSError) as exc:
        log.error("%s", exc)
        report(f"error {exc}")
        code = 1
    except BaseException as exc:
        log.exception("mailrouter failed")
        report(f"error {type(exc).__name__}: {exc}")
        code = 1
    finally:
        report("error mailrouter stopped before it was ready")
        logging.shutdown()
    return code


def stop(settings: Settings, timeout: float, force: bool) -> int:
    """Stop the running server: SIGTERM, wait up to ``timeout`` seconds, SIGKILL if ``force``.

    Only the process the kernel names as the holder of the server lock is signalled, through a
    pidfd opened before the holder is checked again, so a pid reused meanwhile is never hit; the
    SIGKILL only if it still holds the lock. Returns its pid; raises if no server is running
    (a stale pid file is left alone) or it would not stop.
    """
    holder = lock_holder(settings)
    if holder is None:
        raise MailRouterError(not_running(settings))
    if holder.pid is None:
        raise MailRouterError(
            f"mailrouter is running, but the process holding {lock_path(settings)} cannot be "
            "identified; not signalling anything"
        )
    pid = holder.pid
    with _process(pid) as handle:
        if running_pid(settings) != pid:
            raise MailRouterError("mailrouter is not running")  # it exited meanwhile
        _signal(handle, pid, signal.SIGTERM)
        if not _wait_for_exit(handle, pid, timeout):
            if not force:
                raise MailRouterError(
                    f"mailrouter (pid {pid}) is still running after {timeout:g}s; "
                    "use --force to kill it"
                )
            if running_pid(settings) != pid:
                raise MailRouterError(
                    f"pid {pid} is still running after {timeout:g}s but no longer holds the "
                    "server lock; not killing it"
                )
            log.warning("mailrouter (pid %d) did not stop in %gs; killing it", pid, timeout)
            _signal(handle, pid, signal.SIGKILL)
            if not _wait_for_exit(handle, pid, 10.0):
                raise MailRouterError(f"mailrouter (pid {pid}) survived SIGKILL")
    remove_pid_file(settings, pid)  # left behind by a SIGKILL
    return pid


@contextlib.contextmanager
def _process(pid: int) -> Iterator[int | None]:
    """A pidfd for ``pid`` (None where the kernel has none: then the pid itself is used)."""
    try:
        handle: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        raise MailRouterError("mailrouter is not running") from None
    except OSError:
        handle = None
    try:
        yield handle
    finally:
        if handle is not None:
            os.close(handle)


def _signal(handle: int | None, pid: int, signum: signal.Signals) -> None:
    try:
        if handle is None:
            os.kill(pid, signum)
        else:
            signal.pidfd_send_signal(handle, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise MailRouterError(f"not permitted to signal mailrouter (pid {pid})") from None


def _wait_for_exit(handle: int | None, pid: int, timeout: float) -> bool:
    """Wait until the process is gone or ``timeout`` seconds have passed; whether it is gone."""
    if handle is not None:  # a pidfd turns readable when its process exits
        return bool(select.select([handle], [], [], timeout)[0])
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def drop_privileges(settings: Settings) -> None:
    """Switch to ``settings.user``/``settings.group`` (after binding); refuse to stay root.

    What the server created as root and still writes (the pid file's folder, the queue, the
    state file, the log file, the Unix socket) is handed to the new user first. Still running
    as root afterwards is an error unless ``allow_root`` is set.
    """
    if settings.user or settings.group:
        _switch_user(settings)
    if os.geteuid() == 0 and not settings.allow_root:
        raise MailRouterError(
            "refusing to run as root: set user (and group) to switch to after binding, "
            "or allow_root = true"
        )


def _switch_user(settings: Settings) -> None:
    """setgid/initgroups/setuid to the configured user and group (by name or number)."""
    user = _user(settings.user) if settings.user else None
    gid = _group(settings.group) if settings.group else (user.pw_gid if user else os.getgid())
    uid = user.pw_uid if user else os.getuid()
    if os.geteuid() != 0:
        if uid == os.geteuid() and gid == os.getegid():
            return
        raise MailRouterError(
            f"cannot switch to user {settings.user or '-'!r} / group {settings.group or '-'!r}: "
            "mailrouter must be started as root to change user"
        )
    try:
        for path in _runtime_paths(settings):
            with contextlib.suppress(FileNotFoundError):
                os.chown(path, uid, gid)
        if user is not None:
            os.initgroups(user.pw_name, gid)
        else:
            os.setgroups([gid])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        raise MailRouterError(f"cannot switch to uid {uid}, gid {gid}: {exc.strerror}") from None
    log.info("running as uid %d, gid %d", uid, gid)


def _runtime_paths(settings: Settings) -> list[Path]:
    """The files and folders a running server writes to."""
    paths = [pid_path(settings).parent, lock_path(settings)]
    for queue in (settings.undeliverable, settings.outbox, settings.failed):
        folder = settings.path(queue)
        paths += [folder, *(folder / name for name in ("tmp", "new", "cur"))]
    log_file = settings.path(settings.log_file)
    paths += [log_file.parent, log_file]
    url = settings.state_store_url()
    if url.startswith("shelve://"):
        state = Path(url.removeprefix("shelve://"))
        paths += [state.parent, state]
        paths += [Path(f"{state}{suffix}") for suffix in ("-wal", "-shm", ".lock")]
    if settings.unix_socket:
        paths.append(settings.path(settings.unix_socket))
    return paths


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise MailRouterError(f"unknown user {name!r} (setting 'user')") from None


def _group(name: str) -> int:
    try:
        return (grp.getgrgid(int(name)) if name.isdigit() else grp.getgrnam(name)).gr_gid
    except KeyError:
        raise MailRouterError(f"unknown group {name!r} (setting 'group')") from None
