"""The aiosmtpd handler: checks each envelope and hands each message to the router or spool."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException

from mailrouter import replies
from mailrouter.config import Settings
from mailrouter.errors import QueueError, QueueFullError
from mailrouter.inbound.journal_calls import JournalCalls
from mailrouter.inbound.ledger import JournalLedger
from mailrouter.inbound.outcome import DeliveryRecord, Observer
from mailrouter.inbound.spool import Spool
from mailrouter.inbound.wire import HookListing
from mailrouter.journal import Journal
from mailrouter.message import MailRequest, header_section, nested_too_deep, normalize_address
from mailrouter.outbound import sender
from mailrouter.outbound.dsn import delivery_report
from mailrouter.replies import Reply
from mailrouter.routing.result import DeliveryResult
from mailrouter.routing.router import Router

log = logging.getLogger(__name__)

_CONTROL = frozenset("\x00\r\n")


def _hops(header: bytes) -> int:
    """How many ``Received:`` headers there are (each MTA on the way adds one)."""
    return sum(1 for line in header.split(b"\n") if line[:9].lower() == b"received:")


class Receiver(HookListing):
    """Records the envelope, refuses what breaks a limit, and delivers each message."""

    def __init__(
        self,
        settings: Settings,
        router: Router,
        spool: Spool | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.spool = spool  # spool mode: where messages go before the router
        self.journal_calls: JournalCalls | None = None  # see ``journal``
        self.hostname = settings.hostname or socket.getfqdn()  # once, not per message
        self.lmtp = settings.protocol == "lmtp"
        self.observers: list[Observer] = []  # told of each message (metrics, delivery log)
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def journal(self) -> Journal | None:
        """What became of each message; which recipients are done (None: the journal is off)."""
        return self.journal_calls.journal if self.journal_calls is not None else None

    @journal.setter
    def journal(self, journal: Journal | None) -> None:
        self.journal_calls = None
        if journal is not None:
            self.journal_calls = JournalCalls(journal, self.router.io_executor)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if _CONTROL.intersection(address):
            return str(replies.BAD_SENDER)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return str(replies.SENDER_OK)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        address = address.strip()
        if _CONTROL.intersection(address) or address in ("", "<>"):
            return str(replies.BAD_RECIPIENT)
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS)
        if self.settings.reject_unroutable and not self.router.match(address):
            return str(replies.no_route(address))
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return str(replies.RECIPIENT_OK)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        started = time.perf_counter()
        # 64 random bits without a system call per message (random reseeds in forked workers)
        message_id = f"{random.getrandbits(64):016x}"
        sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        request = MailRequest(
            session.peer, sender, envelope.rcpt_tos, envelope.original_content or b""
        )
        reply, result = await self._deliver(request, message_id, session.host_name or "", started)
        if self.observers:
            duration = time.perf_counter() - started
            record = DeliveryRecord.of(message_id, request, reply, result, duration)
            for observer in self.observers:
                observer(record)
        return reply

    async def _deliver(
        self, request: MailRequest, message_id: str, helo: str, started: float
    ) -> tuple[str, DeliveryResult | None]:
        """Check the header, then route the message (or spool it) and record what became of
        it in the journal: the reply, and the router's result if it ran."""
        header = header_section(request.data)
        if len(header) > self.settings.max_header_size:
            return self._reply(replies.HEADER_TOO_LARGE.to(request.recipients), message_id), None
        if _hops(header) > self.settings.max_received_headers:
            log.warning("%s: mail loop from %r refused", message_id, request.sender)
            return self._reply(replies.MAIL_LOOP.to(request.recipients), message_id), None
        if nested_too_deep(request.data):
            return self._reply(replies.NESTING_TOO_DEEP.to(request.recipients), message_id), None
        self.in_flight += 1
        self.idle.clear()
        try:
            ledger = None
            if self.journal_calls is not None:
                ledger = await JournalLedger.begin(self.journal_calls, request, helo)
            refusal = await self._authenticate(request, helo, message_id)
            if refusal is not None:
                answers = refusal.to(request.recipients)
                reply = self._reply(answers, message_id)
                if ledger is not None:
                    await ledger.settle(answers, None, reply, time.perf_counter() - started)
                return reply, None
            if self.spool is not None:
                return await self._spool(self.spool, request, ledger, started), None
            answers, result = await self._route(request, message_id, ledger)
            reply = self._reply(answers, message_id)
            note = await self._report(request, answers)
            if ledger is not None:
                duration = time.perf_counter() - started
                await ledger.settle(answers, result, reply, duration, note=note)
            return reply, result
        except Exception:
            log.exception("%s: delivery from %r failed", message_id, request.sender)
            return self._reply(replies.TEMPORARY_FAILURE.to(request.recipients), message_id), None
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()

    async def _authenticate(self, request: MailRequest, helo: str, message_id: str) -> Reply | None:
        """Verify the sender (``message.auth``), after the DATA checks and before any handler;
        with ``auth_policy = "enforce"``, the refusal of a DMARC failure under p=reject."""
        verify = self.router.authenticator  # the settings' verifier (see build_router)
        if verify is None:
            return None
        request.auth = auth = await verify(request, helo)
        dmarc = auth.dmarc
        if self.settings.auth_policy != "enforce" or dmarc.result != "fail":
            return None
        if dmarc.disposition != "reject":
            return None
        log.info(
            "%s: DMARC policy of %r rejects mail from %r", message_id, dmarc.domain, request.sender
        )
        return replies.DMARC_REJECTED

    async def _route(
        self, request: MailRequest, message_id: str, ledger: JournalLedger | None
    ) -> tuple[tuple[Reply, ...], DeliveryResult | None]:
        """Run the router, within the handler timeout: each recipient's reply."""
        try:
            async with asyncio.timeout(self.settings.handler_timeout or None):  # no extra task
                result = await self.router.deliver(request, ledger=ledger)
        except TimeoutError:
            log.error(
                "%s: handlers for %r took over %ss",
                message_id,
                request.recipients,
                self.settings.handler_timeout,
            )
            return replies.HANDLER_TIMEOUT.to(request.recipients), None
        return result.replies, result

    def _reply(self, answers: tuple[Reply, ...], queue_id: str) -> str:
        return replies.data_reply(answers, lmtp=self.lmtp, queue_id=queue_id)

    async def _report(self, request: MailRequest, answers: tuple[Reply, ...]) -> str:
        """Over SMTP, tell the sender of the recipients refused beside delivered ones (the
        reply is 250): a delivery report through the relay. What to note in the journal."""
        refused = () if self.lmtp else replies.partly_refused(answers)
        report = delivery_report(request, refused, reporting_host=self.hostname)
        if report is None:
            return ""
        try:
            await sender.send_async(report, sender="", recipients=[request.sender])
        except Exception as exc:
            log.error("cannot send a delivery report to %r: %s", request.sender, exc)
            return f"no delivery report: {exc}"
        log.info("delivery report to %r for %s", request.sender, [r.recipient for r in refused])
        return f"delivery report sent to {request.sender}"

    async def _spool(
        self, spool: Spool, request: MailRequest, ledger: JournalLedger | None, started: float
    ) -> str:
        """Spool mode: store the message for the spool's workers and accept it."""
        answers = replies.ACCEPTED.to(request.recipients)
        if ledger is not None and all(
            ledger.done(normalize_address(rcpt)) for rcpt in request.recipients
        ):
            answers = replies.ALREADY_DELIVERED.to(request.recipients)
            reply = self._reply(answers, "")
        else:
            try:
                key = await spool.accept(request)
            except QueueFullError:
                return self._reply(replies.INSUFFICIENT_STORAGE.to(request.recipients), "")
            except QueueError as exc:
                log.error("cannot spool a message from %r: %s", request.sender, exc)
                return self._reply(replies.TEMPORARY_FAILURE.to(request.recipients), "")
            reply = self._reply(answers, key)
        if ledger is not None:
            duration = time.perf_counter() - started
            await ledger.settle(answers, None, reply, duration, pending=True)
        return reply

    async def handle_exception(self, error: Exception) -> str:
        """An unexpected error in a session: answer temporarily and keep serving."""
        if isinstance(error, TLSSetupException):  # a client's failed handshake, not our bug
            log.warning("TLS handshake failed: %s", error.__cause__ or error)
            return str(replies.TLS_FAILED)
        log.error("session error: %s: %s", type(error).__name__, error, exc_info=error)
        return str(replies.INTERNAL_ERROR)
