"""Several server processes on one address, so that one host uses all its cores.

A supervisor reserves the port, forks ``workers`` processes that each listen on it with
SO_REUSEPORT (the kernel spreads connections between them) and run their own event loop,
restarts a worker that dies, forwards SIGHUP, and on SIGTERM lets every worker drain. The
first worker serves the control socket and the console; its ``stop`` and ``reload`` come back
here as signals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator

from mailrouter.config import Settings
from mailrouter.errors import MailRouterError
from mailrouter.runtime.serve import run_in_process
from mailrouter.runtime.web import load_console
from mailrouter.state import open_store

log = logging.getLogger(__name__)

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}


def check_workers(settings: Settings) -> None:
    """Refuse settings that several worker processes cannot share."""
    if settings.unix_socket:
        raise MailRouterError("workers > 1 needs a TCP address, not unix_socket")
    if settings.metrics_port:
        raise MailRouterError(
            "metrics_port needs workers = 1: each worker process would count only its share"
        )
    if settings.console_port:
        load_console()  # the missing extra's error here, not a worker's failure in the log
    store = open_store(settings.state_store_url(), readonly=True)
    try:
        shared = bool(getattr(store, "cross_process", False))
    finally:
        store.close()
    if not shared:
        raise MailRouterError(
            f"workers = {settings.workers} needs a state store that is safe across processes "
            f"(sqlite://, redis:// or postgresql://), not {settings.state_url!r}"
        )


def run_workers(settings: Settings, on_ready: Callable[[str], None] | None = None) -> None:
    """Supervise ``settings.workers`` server processes until SIGTERM or SIGINT."""
    check_workers(settings)
    with _reserve_port(settings.host, settings.port) as port:
        shared = dataclasses.replace(settings, port=port)
        ready_read, ready_write = os.pipe()
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        children: dict[int, int] = {}  # pid -> worker number
        try:
            for number in range(settings.workers):
                children[_spawn(shared, number, ready_write)] = number
            _await_ready(ready_read, settings.workers, children)
            address = f"{settings.host}:{port}"
            log.info("%d workers ready on %s", settings.workers, address)
            if on_ready is not None:
                on_ready(address)
            _supervise(shared, children, ready_write)
        finally:
            for pid in children:
                _signal(pid, signal.SIGKILL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            os.close(ready_read)
            os.close(ready_write)


@contextlib.contextmanager
def _reserve_port(host: str, port: int) -> Iterator[int]:
    """Hold the port with a bound, non-listening SO_REUSEPORT socket; yield its number."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise MailRouterError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        yield int(sock.getsockname()[1])


def _spawn(settings: Settings, number: int, ready_write: int) -> int:
    """Fork one worker; in the child, serve until stopped and exit."""
    supervisor = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

        def ready(_: str) -> None:
            os.write(ready_write, b"r")

        # each worker recovers its own spool at start: a shared one would steal live claims;
        # the first one serves the control socket and the console for them all (every one
        # keeps its copies of messages for the console, in the one file)
        own = dataclasses.replace(
            settings,
            spool=f"{settings.spool}/worker-{number}",
            control_socket=settings.control_socket if number == 0 else "",
        )
        run_in_process(own, ready, supervisor, console=number == 0)
        status = 0
    except BaseException:
        log.exception("worker %d failed", number)
    finally:
        os._exit(status)


def _await_ready(ready_read: int, count: int, children: dict[int, int]) -> None:
    """Wait until every worker has bound its socket; fail if one dies first."""
    seen = 0
    while seen < count:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid:
            raise MailRouterError(f"worker {children.pop(pid)} exited during startup")
        ready = _poll_read(ready_read, 0.1)
        seen += len(ready)


def _poll_read(fd: int, timeout: float) -> bytes:
    readable, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 64) if readable else b""


def _supervise(settings: Settings, children: dict[int, int], ready_write: int) -> None:
    """Forward signals; restart dead workers; on SIGTERM/SIGINT drain them all and return."""
    while True:
        info = signal.sigtimedwait(_SIGNALS, 1.0)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            break
        if info is not None and info.si_signo == signal.SIGHUP:
            for pid in children:
                if pid != info.si_pid:  # a worker asking has reloaded itself already
                    _signal(pid, signal.SIGHUP)
        for pid, number in _reap(children):
            log.warning("worker %d (pid %d) died; restarting it", number, pid)
            children[_spawn(settings, number, ready_write)] = number
    for pid in children:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.drain_timeout + 5
    while children and time.monotonic() < deadline:
        signal.sigtimedwait({signal.SIGCHLD}, 0.2)
        _reap(children)
    log.info("all workers stopped")


def _reap(children: dict[int, int]) -> list[tuple[int, int]]:
    """Collect exited workers: their pids and numbers, removed from ``children``."""
    dead = []
    while children:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if not pid:
            break
        if pid in children:
            dead.append((pid, children.pop(pid)))
    return dead


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
