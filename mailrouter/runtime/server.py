"""The SMTP/LMTP receiver on aiosmtpd and the server's start, serve and shutdown lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException

from mailrouter.config import Settings, handler_modules
from mailrouter.errors import MailRouterError, QueueError, QueueFullError, Status
from mailrouter.inbound.outcome import DeliveryRecord, Observer, delivery_log
from mailrouter.inbound.smtp import LMTPSession, SMTPSession
from mailrouter.inbound.spool import Spool
from mailrouter.inbound.wire import HookListing
from mailrouter.message import MailRequest
from mailrouter.outbound import sender as outgoing
from mailrouter.outbound import templates as views
from mailrouter.queue import Queue
from mailrouter.routing.result import DeliveryResult
from mailrouter.routing.router import Router
from mailrouter.state import open_store

if TYPE_CHECKING:
    from mailrouter.runtime.metrics import Metrics

log = logging.getLogger(__name__)

_CONTROL = frozenset("\x00\r\n")


def build_router(settings: Settings, *, readonly: bool = False) -> Router:
    """A Router for ``settings``: its state store, undeliverable queue and handler modules."""
    store = open_store(settings.state_store_url(), readonly=readonly)
    try:
        router = Router(
            store=store,
            undeliverable=Queue(settings.path(settings.undeliverable)),
            defaults=settings.defaults,
            lock_scope=settings.lock_scope,
            executor=ThreadPoolExecutor(settings.executor_threads, "mailrouter-handler"),
        )
        router.load(handler_modules(settings))
    except BaseException:
        store.close()
        raise
    return router


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The STARTTLS context from the configured certificate and key, if any."""
    if not settings.tls_cert:
        if settings.require_starttls:
            raise MailRouterError("require_starttls needs tls_cert (and tls_key)")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(
            settings.path(settings.tls_cert), settings.path(settings.tls_key or settings.tls_cert)
        )
    except (OSError, ssl.SSLError) as exc:
        raise MailRouterError(f"cannot load TLS certificate {settings.tls_cert!r}: {exc}") from exc
    return context


def _header_section(data: bytes) -> bytes:
    """The message's header section: everything before the first empty line."""
    if data.startswith((b"\r\n", b"\n")):
        return b""
    ends = [end for end in (data.find(b"\n\r\n"), data.find(b"\n\n")) if end >= 0]
    return data[: min(ends) + 1] if ends else data


def _hops(header: bytes) -> int:
    """How many ``Received:`` headers there are (each MTA on the way adds one)."""
    return sum(1 for line in header.split(b"\n") if line[:9].lower() == b"received:")


class Handler(HookListing):
    """The aiosmtpd event handler: records the envelope and hands each message to the router."""

    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router
        self.lmtp = settings.protocol == "lmtp"
        self.observers: list[Observer] = []  # told of each message (metrics, delivery log)
        self.spool: Spool | None = None  # spool mode: where messages go before the router
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if _CONTROL.intersection(address):
            return "501 5.1.7 Bad sender address syntax"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        address = address.strip()
        if _CONTROL.intersection(address) or address in ("", "<>"):
            return "501 5.1.3 Bad recipient address syntax"
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return "452 4.5.3 Too many recipients"
        if self.settings.reject_unroutable and not self.router.match(address):
            return f"550 5.1.1 <{address}>: no route for this address"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, SMTPSession)
        started = time.perf_counter()
        # 64 random bits without a system call per message (random reseeds in forked workers)
        message_id = f"{random.getrandbits(64):016x}"
        sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        request = MailRequest(
            session.peer, sender, envelope.rcpt_tos, envelope.original_content or b""
        )
        reply, result = await self._deliver(server, request, message_id)
        if self.observers:
            duration = time.perf_counter() - started
            record = DeliveryRecord.of(message_id, request, reply, result, duration)
            for observer in self.observers:
                observer(record)
        return reply

    async def _deliver(
        self, server: SMTPSession, request: MailRequest, message_id: str
    ) -> tuple[str, DeliveryResult | None]:
        """Check the header, run the router: the reply, and the router's result if it ran."""
        header = _header_section(request.data)
        if len(header) > self.settings.max_header_size:
            return self._all("552 5.3.4 Message header too large", request), None
        if _hops(header) > self.settings.max_received_headers:
            log.warning("%s: mail loop from %r refused", message_id, request.sender)
            return self._all("554 5.4.6 Too many hops: mail loop detected", request), None
        self.in_flight += 1
        self.idle.clear()
        server.delivering = True
        try:
            if self.spool is not None:
                return await self._spool(self.spool, request), None
            result = await asyncio.wait_for(
                self.router.deliver(request), self.settings.handler_timeout or None
            )
        except TimeoutError:
            log.error(
                "%s: handlers for %r took over %ss",
                message_id,
                request.recipients,
                self.settings.handler_timeout,
            )
            return self._all("451 4.3.0 Handler timed out, try again later", request), None
        except Exception:
            log.exception("%s: delivery from %r failed", message_id, request.sender)
            return self._all("451 4.3.0 Temporary failure, try again later", request), None
        finally:
            server.delivering = False
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()
        return self._answer(result, message_id), result

    async def _spool(self, spool: Spool, request: MailRequest) -> str:
        """Spool mode: store the message for the spool's workers and accept it."""
        try:
            key = await spool.accept(request)
        except QueueFullError:
            return self._all("452 4.3.1 Insufficient storage, try again later", request)
        except QueueError as exc:
            log.error("cannot spool a message from %r: %s", request.sender, exc)
            return self._all("451 4.3.0 Temporary failure, try again later", request)
        if self.lmtp:
            return "\r\n".join(f"250 2.0.0 <{rcpt}> {key}" for rcpt in request.recipients)
        return f"{Status.OK} 2.0.0 Ok: queued as {key}"

    def _answer(self, result: DeliveryResult, message_id: str) -> str:
        """LMTP: one reply per recipient, in RCPT order. SMTP: the first refusal, else 250."""
        if self.lmtp:
            return "\r\n".join(
                f"{r.code} {r.text}"
                if r.code >= 300
                else f"{r.code} 2.0.0 <{r.recipient}> {message_id}"
                for r in result.replies
            )
        refusal = result.first_refusal()
        if refusal is not None:
            return str(refusal)
        return f"{Status.OK} 2.0.0 Ok: queued as {message_id}"

    def _all(self, status: str, request: MailRequest) -> str:
        return "\r\n".join([status] * len(request.recipients)) if self.lmtp else status

    async def handle_exception(self, error: Exception) -> str:
        """An unexpected error in a session: answer temporarily and keep serving."""
        if isinstance(error, TLSSetupException):  # a client's failed handshake, not our bug
            log.warning("TLS handshake failed: %s", error.__cause__ or error)
            return "454 4.7.0 TLS handshake failed"
        log.error("session error: %s: %s", type(error).__name__, error, exc_info=error)
        return "451 4.3.0 Internal error, try again later"


class Server:
    """A listening mailrouter: binds, accepts SMTP or LMTP sessions, and stops gracefully."""

    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router
        self.handler = Handler(settings, router)
        if settings.mode == "spool":
            self.handler.spool = Spool(
                Queue(settings.path(settings.spool)),
                router,
                concurrency=settings.spool_concurrency,
                handler_timeout=settings.handler_timeout,
            )
        self.sessions: set[SMTPSession] = set()
        self.draining = False
        self.hostname = settings.hostname or socket.getfqdn()  # once, not per connection
        self.tls_context = _tls_context(settings)
        self.metrics: Metrics | None = None
        log_line = delivery_log(settings.log_format)
        if log_line is not None:
            self.handler.observers.append(log_line)
        self._server: asyncio.Server | None = None
        self._port: int | None = None

    def refusal(self) -> str | None:
        """The reply that turns a new connection away, or None to serve it."""
        if self.draining:
            return "421 4.3.2 Service shutting down, try again later"
        if len(self.sessions) >= self.settings.max_connections:
            return "421 4.7.0 Too many connections, try again later"
        return None

    def _session(self) -> SMTP:
        session_class = LMTPSession if self.settings.protocol == "lmtp" else SMTPSession
        session = session_class(
            self.handler,
            data_size_limit=self.settings.max_message_size or None,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=self.hostname,
            tls_context=self.tls_context,
            require_starttls=self.settings.require_starttls,
            ident="mailrouter",
            timeout=self.settings.idle_timeout,
            loop=asyncio.get_running_loop(),
        )
        session.owner = self
        return session

    async def start(self) -> None:
        """Bind the listening socket (TCP, or a Unix socket when ``unix_socket`` is set).

        In spool mode, the spool's workers start first, with what an earlier run left.
        """
        loop = asyncio.get_running_loop()
        if self.handler.spool is not None:
            await self.handler.spool.start()
        try:
            if self.settings.unix_socket:
                path = self.settings.path(self.settings.unix_socket)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                self._server = await loop.create_unix_server(self._session, str(path))
            else:
                self._server = await loop.create_server(
                    self._session,
                    self.settings.host,
                    self.settings.port,
                    reuse_port=self.settings.workers > 1 or None,
                )
                self._port = int(self._server.sockets[0].getsockname()[1])
        except OSError as exc:
            if self.handler.spool is not None:
                await self.handler.spool.stop(0)
            raise MailRouterError(
                f"cannot listen on {self.settings.address}: {exc.strerror}"
            ) from exc
        if self.settings.metrics_port:
            try:
                self.serve_metrics(self.settings.metrics_port)
            except MailRouterError:
                await self.stop(timeout=0)
                raise

    def serve_metrics(self, port: int) -> Metrics:
        """Serve Prometheus metrics on ``metrics_host:port`` (0: a free port) until ``stop``."""
        try:
            from mailrouter.runtime.metrics import Metrics
        except ImportError as exc:
            raise MailRouterError(
                "metrics need prometheus-client: pip install 'mailrouter[metrics]'"
            ) from exc
        outbox = Queue(self.settings.path(self.settings.outbox))
        metrics = Metrics(self.sessions, self.router.undeliverable, outbox)
        metrics.start(self.settings.metrics_host, port)
        self.metrics = metrics
        self.handler.observers.append(metrics.observe)
        return metrics

    @property
    def port(self) -> int:
        """The bound TCP port (useful with port 0)."""
        assert self._port is not None, "the server is not started"
        return self._port

    @property
    def address(self) -> str:
        """Where the server listens, with the real bound port."""
        if self.settings.unix_socket:
            return f"unix:{self.settings.path(self.settings.unix_socket)}"
        return f"{self.settings.host}:{self.port}"

    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let messages being delivered finish (up to ``timeout``), then close."""
        if self._server is None:
            return
        self._server.close()
        self.draining = True
        for session in list(self.sessions):
            session.close_with("421 4.3.2 Service shutting down, try again later")
        timeout = self.settings.drain_timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(self.handler.idle.wait(), timeout)
        except TimeoutError:
            log.warning(
                "%d deliveries still running after %.0fs; closing anyway",
                self.handler.in_flight,
                timeout,
            )
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        await self._server.wait_closed()
        self._server = None
        if self.handler.spool is not None:
            await self.handler.spool.stop(timeout)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)


async def serve(settings: Settings, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Run a server for ``settings`` until SIGTERM or SIGINT; SIGHUP reloads the handlers."""
    from mailrouter.runtime.daemon import drop_privileges

    loop = asyncio.get_running_loop()
    router = build_router(settings)
    server = Server(settings, router)
    stopping = asyncio.Event()
    relay = outgoing.from_settings(settings)
    outgoing.configure(relay)
    views.configure(settings.path(settings.templates))
    retries: asyncio.Task[None] | None = None
    try:
        await server.start()
        drop_privileges(settings)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, _reload, router, settings)
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
        await server.stop()
    finally:
        stopping.set()
        if retries is not None:
            await retries
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        router.close()
        outgoing.configure(None)
    log.info("mailrouter stopped")


def _reload(router: Router, settings: Settings) -> None:
    """SIGHUP: re-import the handler modules and load newly dropped-in ones."""
    try:
        router.reload()
        router.load(handler_modules(settings))
    except MailRouterError as exc:
        log.error("reload failed, keeping the old routes: %s", exc)
        return
    log.info("reloaded handlers: %d routes", len(router.routes()))


def run(settings: Settings, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``settings`` until stopped by a signal: in this process, or in ``workers``."""
    if settings.workers > 1:
        from mailrouter.runtime.workers import run_workers

        run_workers(settings, on_ready)
    else:
        run_in_process(settings, on_ready)


def run_in_process(settings: Settings, on_ready: Callable[[str], None] | None = None) -> None:
    """``serve`` on the configured event loop: uvloop's when it is installed, unless disabled."""
    with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
        runner.run(serve(settings, on_ready=on_ready))


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
