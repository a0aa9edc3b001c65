"""Outgoing delivery: hand messages to a smarthost, or straight to each recipient domain's MX.

Handlers write ``from mailrouter.outbound import sender as relay`` and then
``relay.send(response)`` (a plain handler runs in an executor thread) or
``await relay.send_async(response)``: the module-level functions use the ``Sender`` of the
current context, which the server sets for its run with ``using(relay)`` (the tests' ``outbox``
fixture sets an in-memory one). A ``Relay`` makes each attempt with its ``Transport`` (see
``transport.py``); mail that cannot be delivered now waits in the outbox (see ``outbox.py``) and
is retried by ``run_retries``.

The relay's whole surface (the protocol, ``prepare``, ``Relay``, the context) is one concept,
sending a message; at about 400 lines it is not split.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import socket
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import formatdate, getaddresses, make_msgid
from typing import Protocol, TypedDict, TypeVar, Unpack

from mailrouter.config import Settings
from mailrouter.message import MailRequest
from mailrouter.outbound.outbox import Attempt, AttemptStatus, Outbox, RetryPolicy, RetryReport
from mailrouter.outbound.response import MailResponse, ace_address
from mailrouter.outbound.signing import Signer, signer_for
from mailrouter.outbound.transport import (
    ConnectionOptions,
    RelayError,
    ResolveError,
    Transport,
    resolve_mx,
)
from mailrouter.outbound.verp import Verp, envelopes

log = logging.getLogger(__name__)

Sendable = MailResponse | Message | MailRequest
_VERP_CONCURRENCY = 8  # VERP transactions of one message in flight at once

__all__ = [
    "ConnectionOptions",
    "DeliveryError",
    "Relay",
    "RelayError",
    "ResolveError",
    "RetryPolicy",
    "RetryReport",
    "SendOptions",
    "SendResult",
    "Sendable",
    "Sender",
    "current",
    "from_settings",
    "resolve_mx",
    "send",
    "send_async",
    "using",
]


class DeliveryError(RelayError):
    """Raised by ``send(..., check=True)`` when a recipient was refused or not queued."""

    def __init__(self, result: SendResult) -> None:
        self.result = result
        problems = {**result.failed, **result.deferred}
        super().__init__(f"{result.message_id or 'message'} not delivered: {problems}")


@dataclass(frozen=True)
class SendResult:
    """What ``send`` did for each recipient, and where the undelivered part was kept."""

    message_id: str
    sender: str
    delivered: tuple[str, ...] = ()
    deferred: Mapping[str, str] = field(default_factory=dict)
    failed: Mapping[str, str] = field(default_factory=dict)
    outbox_key: str | None = None
    failed_key: str | None = None
    #: with VERP, the result of each recipient's own transaction (the keys above: the first)
    parts: tuple[SendResult, ...] = ()

    @classmethod
    def combined(cls, message_id: str, sender: str, parts: Sequence[SendResult]) -> SendResult:
        """One result for the transactions ``parts`` of one message sent from ``sender``."""
        return cls(
            message_id,
            sender,
            tuple(rcpt for part in parts for rcpt in part.delivered),
            {rcpt: why for part in parts for rcpt, why in part.deferred.items()},
            {rcpt: why for part in parts for rcpt, why in part.failed.items()},
            next((part.outbox_key for part in parts if part.outbox_key), None),
            next((part.failed_key for part in parts if part.failed_key), None),
            tuple(parts),
        )

    @property
    def status(self) -> AttemptStatus:
        """The worst outcome: ``failed`` if any recipient failed, else ``deferred`` if any waits."""
        return "failed" if self.failed else "deferred" if self.deferred else "delivered"

    @property
    def ok(self) -> bool:
        """True when no recipient failed and every deferred one is safely in the outbox."""
        return not self.failed and (not self.deferred or self.outbox_key is not None)


class SendOptions(TypedDict, total=False):
    """The keywords of every ``send``: ``sender`` and ``recipients`` replace the envelope that
    the message implies; ``check`` raises DeliveryError when not every recipient is safe;
    ``verp`` (True, or a ``Verp`` format) sends to each recipient with its own return path."""

    sender: str | None
    recipients: Sequence[str] | None
    check: bool
    verp: Verp | bool


class Sender(Protocol):
    """What handlers send through: a ``Relay``, or the in-memory outbox of the test helpers."""

    def send(self, msg: Sendable, **kw: Unpack[SendOptions]) -> SendResult:
        """Send ``msg`` from synchronous code (a handler in an executor thread)."""
        ...

    async def send_async(self, msg: Sendable, **kw: Unpack[SendOptions]) -> SendResult:
        """Send ``msg`` from a coroutine."""
        ...


class Relay(Sender):
    """Sends mail with a ``Transport`` and keeps what it could not deliver in an ``Outbox``.

    ``options`` say how to connect (default: straight to each recipient domain's MX); ``outbox``
    and ``failed`` are the maildirs for deferred and failed mail (None: not kept); ``retry`` is
    their schedule. A ``signer`` DKIM-signs every message sent; a forwarded ``MailRequest``
    with ``auth`` goes out with its Authentication-Results header, as ``authserv_id``.
    """

    def __init__(
        self,
        options: ConnectionOptions | None = None,
        *,
        outbox: str | os.PathLike[str] | None = None,
        failed: str | os.PathLike[str] | None = None,
        retry: RetryPolicy | None = None,
        signer: Signer | None = None,
        authserv_id: str = "localhost",
    ) -> None:
        self.transport = Transport(ConnectionOptions() if options is None else options)
        self.outbox = Outbox(outbox, failed, retry)
        self.signer = signer
        self.authserv_id = authserv_id
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        options = self.transport.options
        target = f"{options.host}:{options.port}" if options.host else "MX"
        return f"Relay({target})"

    def bind(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Make ``send()`` from other threads run on ``loop`` (default: the running loop)."""
        self._loop = loop or asyncio.get_running_loop()

    def send(self, msg: Sendable, **kw: Unpack[SendOptions]) -> SendResult:
        """``send_async`` for synchronous code: a handler running in an executor thread.

        Runs on the loop the relay is bound to while that loop runs, else on a new loop in this
        thread. Calling it on an event loop's own thread is an error (it would block the loop).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RelayError("Relay.send() would block the event loop: await send_async()")
        work = self.send_async(msg, **kw)
        loop = self._loop
        if loop is not None and loop.is_running():
            return asyncio.run_coroutine_threadsafe(work, loop).result()
        return asyncio.run(work)

    async def send_async(
        self,
        msg: Sendable,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        check: bool = False,
        verp: Verp | bool = False,
    ) -> SendResult:
        """Deliver ``msg`` now; keep what cannot be delivered (outbox or failed maildir).

        ``msg`` is a MailResponse, an ``email`` message or a MailRequest (forwarded as is); the
        envelope comes from it unless ``sender``/``recipients`` are given. With ``verp``, each
        recipient gets a transaction of its own, its address encoded in the return path (see
        ``verp.py``). Remote refusals are reported in the result, not raised, unless ``check``
        is true (DeliveryError).
        """
        envelope = await asyncio.to_thread(self._prepare, msg, sender, recipients)
        sender, rcpts, data, message_id = envelope
        parts = envelopes(sender, rcpts, verp)
        if len(parts) == 1:
            result = await self._hand_over(*parts[0], data, message_id)
        else:
            limit = asyncio.Semaphore(_VERP_CONCURRENCY)

            async def one(return_path: str, rcpt: list[str]) -> SendResult:
                async with limit:
                    return await self._hand_over(return_path, rcpt, data, message_id)

            done = await asyncio.gather(*(one(*part) for part in parts))
            result = SendResult.combined(message_id, sender, done)
        if check and not result.ok:
            raise DeliveryError(result)
        return result

    async def _hand_over(
        self, sender: str, rcpts: list[str], data: bytes, message_id: str
    ) -> SendResult:
        """One transaction of ``send_async``: deliver, keep what was not delivered, log."""
        attempts = await self.deliver(sender, rcpts, data)
        delivered = tuple(r for r, a in attempts.items() if a.status == "delivered")
        for rcpt in delivered:
            log.info("sent %s from %r to %r: %r", message_id, sender, rcpt, attempts[rcpt].reply)
        stored = await self.outbox.store(sender, data, attempts)  # QueueError if it cannot
        result = SendResult(
            message_id,
            sender,
            delivered,
            stored.deferred,
            stored.failed,
            stored.outbox_key,
            stored.failed_key,
        )
        for rcpt, reason in result.deferred.items():
            where = "in outbox" if result.outbox_key else "NOT KEPT (no outbox)"
            log.warning(
                "deferred %s from %r to %r, %s: %r", message_id, sender, rcpt, where, reason
            )
        for rcpt, reason in result.failed.items():
            log.error("failed %s from %r to %r: %r", message_id, sender, rcpt, reason)
        return result

    def _prepare(
        self, msg: Sendable, sender: str | None, recipients: Sequence[str] | None
    ) -> tuple[str, list[str], bytes, str]:
        """``prepare``, then the Authentication-Results of a forwarded message on top, then the
        DKIM signature (in a thread: an RSA signature is milliseconds of CPU)."""
        sender, rcpts, data, message_id = prepare(msg, sender, recipients)
        if isinstance(msg, MailRequest) and msg.auth is not None:
            data = msg.auth.header(self.authserv_id).encode("utf-8") + b"\r\n" + data
        if self.signer is not None:
            try:
                data = self.signer.sign(data)
            except ValueError as exc:
                log.warning("%s goes out unsigned: %s", message_id, exc)
        return sender, rcpts, data, message_id

    async def retry_once(
        self,
        now: float | None = None,
        *,
        ignore_schedule: bool = False,
        keys: Collection[str] | None = None,
    ) -> RetryReport:
        """One pass over the outbox: retry each entry whose next attempt is due at ``now``
        (with ``ignore_schedule``, every entry; with ``keys``, only those: see
        ``Outbox.retry_once``)."""
        return await self.outbox.retry_once(
            self.deliver, now, ignore_schedule=ignore_schedule, keys=keys
        )

    async def run_retries(self, stop: asyncio.Event, interval: float = 60.0) -> None:
        """Retry the outbox until ``stop`` is set: a pass every ``interval`` seconds or sooner
        when an entry falls due. Also binds the relay to this loop for ``send()``."""
        self.bind()
        if self.outbox.queue is not None:
            await asyncio.to_thread(self.outbox.queue.recover)
        while not stop.is_set():
            wait = interval
            try:
                report = await self.retry_once()
            except Exception:
                log.exception("outbox retry pass failed")
            else:
                if report.next_due is not None:
                    wait = min(interval, max(1.0, report.next_due - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def deliver(self, sender: str, recipients: list[str], data: bytes) -> dict[str, Attempt]:
        """One delivery attempt of ``data`` to every recipient; nothing is stored."""
        return await self.transport.deliver(sender, recipients, data)


def prepare(
    msg: Sendable, sender: str | None, recipients: Sequence[str] | None
) -> tuple[str, list[str], bytes, str]:
    """The envelope, wire bytes and Message-ID of ``msg`` (runs in a thread: it may read files)."""
    if isinstance(msg, MailResponse):
        sender = msg.envelope_sender if sender is None else sender
        rcpts = list(msg.recipients if recipients is None else recipients)
        data, message_id = msg.as_bytes(), msg.message_id
    elif isinstance(msg, MailRequest):
        sender = msg.sender if sender is None else sender
        rcpts = list(msg.recipients if recipients is None else recipients)
        data = msg.data
        message_id = BytesHeaderParser(policy=policy.default).parsebytes(data)["Message-ID"] or ""
    else:
        if sender is None:
            heads = msg.get_all("Sender", []) or msg.get_all("From", [])
            found = getaddresses([str(value) for value in heads])
            sender = found[0][1] if found else ""
        if recipients is None:
            fields = [str(v) for name in ("To", "Cc", "Bcc") for v in msg.get_all(name, [])]
            recipients = [address for _, address in getaddresses(fields) if address]
        rcpts = list(recipients)
        if "Bcc" in msg or "Date" not in msg or "Message-ID" not in msg:
            msg = copy.deepcopy(msg)
            del msg["Bcc"]
            if "Date" not in msg:
                msg["Date"] = formatdate(localtime=True)
            if "Message-ID" not in msg:
                msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "localhost")
        utf8 = not all(address.isascii() for address in (sender, *rcpts))
        data = msg.as_bytes(policy=policy.SMTPUTF8 if utf8 else policy.SMTP)
        message_id = str(msg["Message-ID"])
    if not rcpts:
        raise ValueError("no recipients to send to")
    for address in (sender, *rcpts):
        if any(ch in address for ch in "\r\n<>") or address.strip() != address:
            raise ValueError(f"invalid envelope address {address!r}")
    sender = ace_address(sender) if sender else ""
    return sender, [ace_address(rcpt) for rcpt in rcpts], data, " ".join(message_id.split())


_relay: ContextVar[Sender | None] = ContextVar("mailrouter.outbound.sender", default=None)


AnySender = TypeVar("AnySender", bound=Sender)


@contextlib.contextmanager
def using(relay: AnySender) -> Iterator[AnySender]:
    """Make ``relay`` the one the module-level ``send`` functions use in this context (this
    task, or a thread that runs a copy of it) until the ``with`` block ends."""
    token = _relay.set(relay)
    try:
        yield relay
    finally:
        _relay.reset(token)


def current() -> Sender:
    """The relay of this context; RelayError when no ``using`` block has set one."""
    relay = _relay.get()
    if relay is None:
        raise RelayError(
            "no relay configured: send inside `with mailrouter.outbound.sender.using(relay):`"
        )
    return relay


def send(msg: Sendable, **kw: Unpack[SendOptions]) -> SendResult:
    """Send ``msg`` with this context's relay, from synchronous code (see ``Relay.send``)."""
    return current().send(msg, **kw)


async def send_async(msg: Sendable, **kw: Unpack[SendOptions]) -> SendResult:
    """Send ``msg`` with this context's relay (see ``Relay.send_async``)."""
    return await current().send_async(msg, **kw)


def from_settings(settings: Settings) -> Relay:
    """A Relay from the ``relay_*``, ``hostname``, ``outbox``, ``failed`` and ``dkim_*``
    settings (a ConfigError naming the setting when the DKIM key cannot be read)."""
    options = ConnectionOptions(
        settings.relay_host or None,
        settings.relay_port,
        starttls={"auto": None, "require": True, "off": False}[settings.relay_starttls],
        tls=settings.relay_tls,
        username=settings.relay_username or None,
        password=settings.relay_password or None,
        timeout=settings.relay_timeout,
        local_hostname=settings.hostname or None,
    )
    return Relay(
        options,
        outbox=settings.path(settings.outbox),
        failed=settings.path(settings.failed),
        signer=signer_for(settings),
        authserv_id=settings.hostname or socket.getfqdn(),
    )
