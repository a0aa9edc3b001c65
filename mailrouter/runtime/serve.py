"""Serving until stopped: the signals, the control socket, reloads, and the event loop to run on.

``serve`` runs a ``Server`` (``server.py``) for a process's life: it starts it, opens the
control socket (and the console), drops privileges, and on SIGTERM, SIGINT or the control
socket's ``stop`` lets it drain; SIGHUP or ``reload`` rebuild the routes off the event loop.
``run_in_process`` runs that on the configured event loop; ``workers.py`` forks it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable

from mailrouter.config import Settings, handler_modules
from mailrouter.errors import MailRouterError
from mailrouter.outbound import sender as outgoing
from mailrouter.outbound import templates as views
from mailrouter.routing.router import Router
from mailrouter.runtime.commands import Operations, server_commands
from mailrouter.runtime.control import ControlServer
from mailrouter.runtime.daemon import drop_privileges
from mailrouter.runtime.server import HANDLER_THREADS, IO_THREADS, Server, build_router
from mailrouter.runtime.watchdog import LoopWatchdog
from mailrouter.runtime.web import Console, load_console

log = logging.getLogger(__name__)

RELOAD_TIMEOUT = 60.0  # seconds the handler modules may take to import on SIGHUP


async def serve(
    settings: Settings,
    *,
    on_ready: Callable[[str], None] | None = None,
    supervisor: int | None = None,
    console: bool = True,
) -> None:
    """Run a server for ``settings`` until SIGTERM, SIGINT or the control socket's ``stop``;
    SIGHUP or its ``reload`` reloads the handlers. ``supervisor`` is the pid of the process
    that forked this one as a worker: stop and reload then go through it, to every worker.
    With ``console_port``, every process keeps copies of its messages, and serves the console
    only with ``console`` (the first worker).

    The relay and the template folder handlers use are this context's, set before the socket
    opens: every session's task, and every handler thread, runs in a copy of it.
    """
    relay = outgoing.from_settings(settings)
    with outgoing.using(relay), views.using(settings.path(settings.templates)):
        await _serve(settings, relay, on_ready, supervisor, console)
    log.info("mailrouter stopped")


async def _serve(
    settings: Settings,
    relay: outgoing.Relay,
    on_ready: Callable[[str], None] | None,
    supervisor: int | None,
    serves_console: bool,
) -> None:
    loop = asyncio.get_running_loop()
    router = build_router(settings)
    server = Server(settings, router)
    stopping = asyncio.Event()
    retries: asyncio.Task[None] | None = None
    reloads: set[asyncio.Task[int | None]] = set()
    control: ControlServer | None = None
    console: Console | None = None
    watchdog = LoopWatchdog(router, settings.loop_block_warning)

    def on_sighup() -> None:
        task = asyncio.create_task(_logged(_reload(router, settings)))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def stop() -> None:
        if supervisor is None:
            stopping.set()
        else:
            _signal_supervisor(supervisor, signal.SIGTERM)

    async def reload() -> int:
        count = await _reload(router, settings)
        if supervisor is not None:  # the supervisor passes it on to the other workers
            _signal_supervisor(supervisor, signal.SIGHUP)
        return count

    try:
        await server.start()
        watchdog.start()
        commands = server_commands(
            server,
            Operations(settings, router, relay),
            stop=stop,
            reload=reload,
            supervisor=supervisor,
        )
        if settings.control_socket:
            control = ControlServer(settings.path(settings.control_socket), commands)
            await control.start()
        if settings.console_port:
            server.keep_copies()
            if serves_console:
                console = await load_console()(settings, commands)
        drop_privileges(settings)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        log.info(
            "mailrouter ready on %s (pid %d, %d routes, %s)",
            server.address,
            os.getpid(),
            len(router.routes()),
            type(loop).__module__.partition(".")[0],
        )
        retries = asyncio.create_task(relay.run_retries(stopping))
        if on_ready is not None:
            on_ready(server.address)
        await stopping.wait()
        log.info("stopping: draining deliveries")
        if control is not None:
            await control.stop()
        await server.stop()
    finally:
        stopping.set()
        if control is not None:
            await control.stop()
        if console is not None:
            await console.stop()
        await server.stop(timeout=0)  # if something failed before the drain: close the rest
        if retries is not None:
            await retries
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        for task in list(reloads):  # a reload still importing: the old routes served to the end
            task.cancel()
        watchdog.stop()
        router.close()


def _signal_supervisor(pid: int, signum: signal.Signals) -> None:
    """Signal the workers' supervisor, only while it is still this process's parent."""
    if os.getppid() != pid:
        raise MailRouterError(f"the supervisor (pid {pid}) is gone; not signalling anything")
    os.kill(pid, signum)


async def _logged(reloading: Awaitable[int]) -> int | None:
    """A SIGHUP's reload: its failure is logged, since nobody waits for its answer."""
    try:
        return await reloading
    except MailRouterError as exc:
        log.error("%s", exc)
        return None


async def _reload(router: Router, settings: Settings) -> int:
    """Rebuild the routes from what the handler files say now, off the event loop; how many.

    Deleted functions and files disappear, new ones appear. A module that fails, exits or takes
    longer than ``RELOAD_TIMEOUT`` to import is a failed reload (a MailRouterError): the old
    routes stay whole.
    """
    try:
        compiling = asyncio.to_thread(lambda: router.compile(handler_modules(settings)))
        table = await asyncio.wait_for(compiling, RELOAD_TIMEOUT)
    except TimeoutError:
        raise MailRouterError(
            f"reload failed, keeping the old routes: imports took over {RELOAD_TIMEOUT:g}s"
        ) from None
    except MailRouterError as exc:
        raise MailRouterError(f"reload failed, keeping the old routes: {exc}") from exc
    router.use(table)
    count = len(router.routes())
    log.info("reloaded handlers: %d routes", count)
    return count


def run_in_process(
    settings: Settings,
    on_ready: Callable[[str], None] | None = None,
    supervisor: int | None = None,
    console: bool = True,
) -> None:
    """``serve`` on the configured event loop (uvloop's when it is installed, unless disabled),
    with the process's GIL switch interval set to ``gil_switch_interval`` meanwhile."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(settings.gil_switch_interval)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings, on_ready=on_ready, supervisor=supervisor, console=console))
    finally:
        sys.setswitchinterval(interval)


def leave_hung_handlers(status: int = 0) -> None:
    """End the process now if executor threads still run after the drain (handlers, or store
    calls, that hung past ``drain_timeout``), instead of letting the interpreter wait for them
    at exit. What they were doing was never acknowledged (direct mode) or is still in the spool.
    """
    deadline = time.monotonic() + 1.0  # idle threads, told to stop, go within moments
    ours = (HANDLER_THREADS, IO_THREADS)
    for thread in threading.enumerate():
        if thread.name.startswith(ours):
            thread.join(max(0.0, deadline - time.monotonic()))
    hung = [t for t in threading.enumerate() if t.name.startswith(ours)]
    if hung:
        log.warning("exiting with %d executor threads still running", len(hung))
        logging.shutdown()
        os._exit(status)


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise MailRouterError(
                "event_loop = 'uvloop' needs uvloop: pip install 'mailrouter[speed]'"
            ) from None
        return None
    return uvloop.new_event_loop
