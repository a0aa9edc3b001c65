"""The server: a router, the sockets it listens on, and their start and graceful stop.

``build_router`` makes the router of the settings; ``Server`` starts the journal, the spool and
the listening socket (TCP or Unix, with the metrics endpoint), and stops in reverse, letting
deliveries finish within ``drain_timeout``; it holds the console's copies of messages too
(``runtime.copies``), closed last. What runs it until a signal is ``serve.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiosmtpd.smtp import SMTP

from mailrouter import replies
from mailrouter.config import Settings, handler_modules
from mailrouter.errors import MailRouterError
from mailrouter.inbound.auth import verifier_for
from mailrouter.inbound.handler import Receiver
from mailrouter.inbound.outcome import delivery_log
from mailrouter.inbound.smtp import LMTPSession, ServerState, SMTPSession
from mailrouter.inbound.spool import Spool
from mailrouter.journal import Journal, open_journal
from mailrouter.queue import Queue
from mailrouter.routing.executor import run_blocking
from mailrouter.routing.router import Router
from mailrouter.runtime.copies import MessageCopies
from mailrouter.state import open_store

if TYPE_CHECKING:
    from mailrouter.runtime.metrics import Metrics

log = logging.getLogger(__name__)

_PURGE_INTERVAL = 3600.0  # seconds between journal retention passes
HANDLER_THREADS = "mailrouter-handler"  # the name prefix of the handler executor's threads
IO_THREADS = "mailrouter-io"  # and of the I/O executor's (journal, queues, spool, state)


def build_router(settings: Settings, *, readonly: bool = False) -> Router:
    """A Router for ``settings``: its state store, undeliverable queue, handler modules and
    sender rules, with the sender verifier of ``auth_policy`` unless it only looks."""
    verifier = None if readonly else verifier_for(settings)
    store = open_store(settings.state_store_url(), readonly=readonly)
    try:
        router = Router(
            authenticator=None if verifier is None else verifier.verify,
            state_sender=settings.state_sender,
            reject_unauthenticated=settings.reject_unauthenticated,
            store=store,
            undeliverable=Queue(settings.path(settings.undeliverable)),
            defaults=settings.defaults,
            lock_scope=settings.lock_scope,
            executor=ThreadPoolExecutor(settings.executor_threads, HANDLER_THREADS),
            io_executor=ThreadPoolExecutor(settings.io_threads, IO_THREADS),
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


class Server:
    """A listening mailrouter: binds, accepts SMTP or LMTP sessions, and stops gracefully."""

    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router
        spool = None
        if settings.mode == "spool":
            spool = Spool(
                Queue(settings.path(settings.spool)),
                router,
                concurrency=settings.spool_concurrency,
                handler_timeout=settings.handler_timeout,
                max_attempts=settings.spool_max_attempts,
            )
        self.handler = Receiver(settings, router, spool)
        self.state = ServerState(
            settings.max_connections, settings.session_timeout, settings.max_errors
        )
        self.hostname = self.handler.hostname
        self.tls_context = _tls_context(settings)
        self.metrics: Metrics | None = None
        self.copies = MessageCopies.of_settings(settings)  # read by the control socket's commands
        log_line = delivery_log(settings.log_format)
        if log_line is not None:
            self.handler.observers.append(log_line)
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._purging: asyncio.Task[None] | None = None

    @property
    def sessions(self) -> set[SMTPSession]:
        """The sessions open now."""
        return self.state.sessions

    @property
    def delivering(self) -> int:
        """How many messages are being delivered now."""
        return self.handler.in_flight

    @property
    def journal(self) -> Journal | None:
        """The journal, once the server has started (None if it is off)."""
        return self.handler.journal

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
        session.server_state = self.state
        return session

    async def start(self) -> None:
        """Bind the listening socket (TCP, or a Unix socket when ``unix_socket`` is set, with
        ``unix_socket_mode`` and ``unix_socket_group``).

        The journal opens first; in spool mode, the spool's workers start next, with what an
        earlier run left.
        """
        loop = asyncio.get_running_loop()
        journal = await run_blocking(
            self.router.io_executor, open_journal, self.settings.journal_store_url()
        )
        self.handler.journal = journal
        if journal is not None:
            self._purging = asyncio.create_task(self._purge(journal))
        if self.handler.spool is not None:
            self.handler.spool.journal_calls = self.handler.journal_calls
            await self.handler.spool.start()
        try:
            if self.settings.unix_socket:
                path = self.settings.path(self.settings.unix_socket)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                listener = socket.socket(socket.AF_UNIX)
                try:  # mode and group before it listens: no client ever sees it otherwise
                    listener.bind(str(path))
                    os.chmod(path, int(self.settings.unix_socket_mode, 8))
                    os.chown(path, -1, self.settings.unix_socket_gid)
                except OSError:
                    listener.close()
                    raise
                self._server = await loop.create_unix_server(self._session, sock=listener)
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
            await self._close_journal()
            raise MailRouterError(
                f"cannot listen on {self.settings.address}: {exc.strerror}"
            ) from exc
        if self.settings.metrics_port:
            try:
                self.serve_metrics(self.settings.metrics_port)
            except MailRouterError:
                await self.stop(timeout=0)
                raise

    def keep_copies(self) -> None:
        """Keep each message's bytes from now on, for the console (``runtime.copies``; not
        without a journal, whose entries the copies belong to). Once, after ``start``."""
        if self.copies is not None and self.journal is not None:
            self.copies.start()
            self.handler.observers.append(self.copies.observe)

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
        self.state.draining = True
        for session in list(self.sessions):
            session.close_with(str(replies.SHUTTING_DOWN))
        timeout = self.settings.drain_timeout if timeout is None else timeout
        spool = self.handler.spool
        # the spool stops taking entries now and drains beside the sessions, in one deadline;
        # what sessions still spool meanwhile waits on disk for the next start
        spooling = asyncio.create_task(spool.stop(timeout)) if spool is not None else None
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
        if spooling is not None:
            await spooling
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        if self.copies is not None:
            await asyncio.to_thread(self.copies.stop)
        await self._close_journal()

    async def _purge(self, journal: Journal) -> None:
        """Retention: purge journal entries older than ``journal_retention_days``, hourly."""
        keep = self.settings.journal_retention_days * 86400
        while True:
            try:
                purged = await run_blocking(
                    self.router.io_executor, journal.purge, time.time() - keep
                )
            except MailRouterError as exc:
                log.warning("cannot purge the journal: %s", exc)
            else:
                if purged:
                    log.info("purged %d journal entries older than %g days", purged, keep / 86400)
            await asyncio.sleep(_PURGE_INTERVAL)

    async def _close_journal(self) -> None:
        journal, self.handler.journal = self.handler.journal, None
        if self._purging is not None:
            self._purging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purging
            self._purging = None
        if journal is not None:
            await run_blocking(self.router.io_executor, journal.close)
