"""Process management: detaching into the background, stopping the server, dropping privileges.

Who runs is decided by the server lock (``pidlock.py``): ``stop`` asks the server on its control
socket, and signals only the process the kernel names as the lock's holder, through a pidfd, so
a reused pid is never hit."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mailrouter.config import Settings
from mailrouter.errors import MailRouterError
from mailrouter.runtime import control
from mailrouter.runtime.pidlock import (
    POLL,
    STARTUP_TIMEOUT,
    Ready,
    ensure_not_running,
    lock_holder,
    lock_path,
    not_running,
    pid_alive,
    pid_file,
    pid_path,
    remove_pid_file,
    running_pid,
)

log = logging.getLogger(__name__)


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
    """Stop the running server: ask it on its control socket (SIGTERM if that does not answer),
    wait up to ``timeout`` seconds, SIGKILL if ``force``.

    Only the process the kernel names as the holder of the server lock is signalled, through a
    pidfd opened before the holder is checked again, so a pid reused meanwhile is never hit; the
    SIGKILL only if it still holds the lock. Returns its pid; raises if no server is running
    (a stale pid file is left alone) or it would not stop.
    """
    pid = _holder_pid(settings)
    with _process(pid) as handle:
        if running_pid(settings) != pid:
            raise MailRouterError("mailrouter is not running")  # it exited meanwhile
        if not _asked_to_stop(settings):
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


def signal_server(settings: Settings, signum: signal.Signals) -> int:
    """Send ``signum`` to the server lock's holder (through a pidfd); its pid."""
    pid = _holder_pid(settings)
    with _process(pid) as handle:
        if running_pid(settings) != pid:
            raise MailRouterError("mailrouter is not running")
        _signal(handle, pid, signum)
    return pid


def _holder_pid(settings: Settings) -> int:
    """The pid of the process holding the server lock; raises if there is none to name."""
    holder = lock_holder(settings)
    if holder is None:
        raise MailRouterError(not_running(settings))
    if holder.pid is None:
        raise MailRouterError(
            f"mailrouter is running, but the process holding {lock_path(settings)} cannot be "
            "identified; not signalling anything"
        )
    return holder.pid


def _asked_to_stop(settings: Settings) -> bool:
    """Whether the server took ``stop`` on its control socket."""
    if not settings.control_socket:
        return False
    try:
        control.request(settings.path(settings.control_socket), "stop", timeout=5.0)
    except MailRouterError:
        return False
    return True


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
        time.sleep(POLL)
    return True


def drop_privileges(settings: Settings) -> None:
    """Switch to ``settings.user``/``settings.group`` (after binding); refuse to stay root.

    What the server created as root and still writes (the pid file's folder, the queue, the
    state file, the log file, the Unix socket) is handed to the new user first; the socket
    keeps its ``unix_socket_group`` when one is set. Still running as root afterwards is an
    error unless ``allow_root`` is set.
    """
    if settings.user or settings.group:
        _switch_user(settings)
    if os.geteuid() == 0 and not settings.allow_root:
        raise MailRouterError(
            "refusing to run as root: start with --user NAME (and --group) to switch to that"
            " user after binding, or --allow-root to stay root (settings user, group,"
            " allow_root)"
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
        grouped = settings.unix_socket and settings.unix_socket_group
        keep = settings.path(settings.unix_socket) if grouped else None  # its group stays
        for path in _runtime_paths(settings):
            with contextlib.suppress(FileNotFoundError):
                os.chown(path, uid, -1 if path == keep else gid)
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
    for queue in (settings.undeliverable, settings.outbox, settings.failed, settings.spool):
        folder = settings.path(queue)
        paths += [folder, *(folder / name for name in ("tmp", "new", "cur"))]
    log_file = settings.path(settings.log_file)
    paths += [log_file.parent, log_file]
    for url in (settings.state_store_url(), settings.journal_store_url()):
        scheme, _, where = url.partition("://")
        if scheme in ("shelve", "sqlite") and where:  # the file, and SQLite's beside it
            database = Path(where.partition("?")[0])
            paths += [database.parent, database]
            paths += [Path(f"{database}{suffix}") for suffix in ("-wal", "-shm", ".lock")]
    for socket_path in (settings.unix_socket, settings.control_socket):
        if socket_path:
            paths.append(settings.path(socket_path))
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
