"""Serving the console with uvicorn: inside the running server (``serve_console``, which the
runtime loads by name) or alone beside it (``mailrouter console``, over the control socket).

The socket is bound here, before uvicorn starts, so a taken port is one clear error; uvicorn
then serves in the loop it is given (over TLS with ``console_tls_cert``), and leaves the
process's signals to their owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator, Mapping

import uvicorn

from mailrouter.config import Settings
from mailrouter.console.app import create_app
from mailrouter.console.auth import check_listen
from mailrouter.console.client import Commands, LocalCommands
from mailrouter.console.throttle import Throttle
from mailrouter.errors import MailRouterError
from mailrouter.runtime.control import Command

log = logging.getLogger(__name__)

MAX_REQUESTS_AT_ONCE = 32  # console requests served at once; more get 503
SHUTDOWN_GRACE = 2.0  # seconds open requests get at a stop


class _Embedded(uvicorn.Server):
    """uvicorn's server without its signal handlers: the process that hosts it owns them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ConsoleServer:
    """The console's HTTP server on ``console_host:console_port``, in the running loop."""

    def __init__(
        self, settings: Settings, commands: Commands, *, throttle: Throttle | None = None
    ) -> None:
        check_listen(settings)
        self.settings = settings
        self.app = create_app(commands, settings, throttle=throttle)
        self._socket: socket.socket | None = None
        self._server: _Embedded | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Where the console is served (with the bound port)."""
        assert self._socket is not None, "the console is not started"
        host, port = self._socket.getsockname()[:2]
        scheme = "https" if self.settings.console_tls_cert else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/"

    async def start(self) -> None:
        """Bind, then serve until ``stop``."""
        config = self._config()
        self._socket = _bind(self.settings.console_host, self.settings.console_port)
        self._server = _Embedded(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                await self._task  # its error
                raise MailRouterError("the console stopped as it started")
            await asyncio.sleep(0.01)
        log.info("console on %s", self.url)

    def _config(self) -> uvicorn.Config:
        """uvicorn's configuration, loaded: a certificate that does not load is a clear error."""
        cert = self.settings.console_tls_cert
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            server_header=False,
            limit_concurrency=MAX_REQUESTS_AT_ONCE,
            timeout_graceful_shutdown=int(SHUTDOWN_GRACE),
            ssl_certfile=self.settings.path(cert) if cert else None,
            ssl_keyfile=self.settings.path(self.settings.console_tls_key or cert) if cert else None,
        )
        try:
            config.load()
        except (OSError, ssl.SSLError) as exc:
            raise MailRouterError(
                f"cannot load the console's certificate {cert!r} (settings 'console_tls_cert',"
                f" 'console_tls_key'): {exc}"
            ) from exc
        return config

    async def stop(self) -> None:
        """Stop accepting, let open requests finish (briefly), close."""
        server, task, self._server, self._task = self._server, self._task, None, None
        if server is not None and task is not None:
            server.should_exit = True
            await task
        if self._socket is not None:
            self._socket.close()

    async def serve_forever(self) -> None:
        """``start``, then serve until the task is cancelled or uvicorn exits."""
        await self.start()
        assert self._task is not None
        try:
            await self._task
        finally:
            await self.stop()


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise MailRouterError(f"console_host {host!r}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise MailRouterError(
            f"cannot serve the console on {host}:{port} (settings 'console_host',"
            f" 'console_port'): {exc.strerror or exc}"
        ) from exc
    return sock


async def serve_console(settings: Settings, commands: Mapping[str, Command]) -> ConsoleServer:
    """The console of the server whose command table is ``commands``, started."""
    console = ConsoleServer(settings, LocalCommands(commands))
    await console.start()
    return console
