"""Outgoing delivery: hand messages to a smarthost, or straight to each recipient domain's MX.

Handlers write ``from mailrouter import relay`` and then ``relay.send(response)`` (a plain
handler runs in an executor thread) or ``await relay.send_async(response)``: the module-level
functions use the ``Relay`` the server installed with ``configure()``. Mail that cannot be
delivered now waits in the outbox (see ``outbox.py``) and is retried by ``run_retries``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import formatdate, getaddresses, make_msgid
from typing import Any, Literal

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver

from .config import Settings
from .errors import MailRouterError
from .message import MailRequest
from .outbox import Outbox, Outcome, RetryPolicy, RetryReport, Status, clean_reply
from .response import MailResponse, ace_address

log = logging.getLogger(__name__)

HostList = Sequence[tuple[str, int]]
Resolver = Callable[[str], Awaitable[HostList] | HostList]
Sendable = MailResponse | Message | MailRequest

__all__ = [
    "DeliveryError",
    "Relay",
    "RelayError",
    "ResolveError",
    "RetryPolicy",
    "RetryReport",
    "SendResult",
    "configure",
    "current",
    "from_settings",
    "resolve_mx",
    "send",
    "send_async",
]


class RelayError(MailRouterError):
    """Outgoing mail could not be sent: no relay configured, or (on request) not delivered."""


class DeliveryError(RelayError):
    """Raised by ``send(..., check=True)`` when a recipient was refused or not queued."""

    def __init__(self, result: SendResult) -> None:
        self.result = result
        problems = {**result.failed, **result.deferred}
        super().__init__(f"{result.message_id or 'message'} not delivered: {problems}")


class ResolveError(RelayError):
    """No mail host could be found for a domain; ``temporary`` when worth trying later."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


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

    @property
    def status(self) -> Literal["delivered", "deferred", "failed"]:
        """The worst outcome: ``failed`` if any recipient failed, else ``deferred`` if any waits."""
        return "failed" if self.failed else "deferred" if self.deferred else "delivered"

    @property
    def ok(self) -> bool:
        """True when no recipient failed and every deferred one is safely in the outbox."""
        return not self.failed and (not self.deferred or self.outbox_key is not None)


class Relay:
    """Sends mail through a smarthost (``host``) or, when there is none, to the recipients' MX.

    ``starttls``: None upgrades when the server offers it, True requires it, False never does;
    ``tls`` is implicit TLS (port 465). Credentials imply required STARTTLS unless ``tls`` or
    ``starttls=False`` is given. Certificates are verified against ``tls_context`` (default: the
    system's CAs), except for opportunistic STARTTLS to MX hosts, as MTAs do. ``resolver`` maps a
    domain to its ``(host, port)`` list (sync or async); the default asks DNS (``resolve_mx``).
    """

    def __init__(
        self,
        host: str | None = None,
        port: int = 25,
        *,
        starttls: bool | None = None,
        tls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30,
        tls_context: ssl.SSLContext | None = None,
        outbox: str | os.PathLike[str] | None = None,
        failed: str | os.PathLike[str] | None = None,
        resolver: Resolver | None = None,
        local_hostname: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if tls and starttls:
            raise ValueError("tls (implicit TLS) and starttls exclude each other")
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if username is not None and not tls and starttls is None:
            starttls = True  # never send a password in the clear unless told to
        self.host = host or None
        self.port = port
        self.starttls = starttls
        self.tls = tls
        self.username = username
        self.password = password
        self.timeout = timeout
        self.tls_context = tls_context
        self.resolver = resolver
        self.local_hostname = local_hostname
        self.outbox = Outbox(outbox, failed, retry)
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        target = f"{self.host}:{self.port}" if self.host else "MX"
        return f"Relay({target})"

    def bind(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Make ``send()`` from other threads run on ``loop`` (default: the running loop)."""
        self._loop = loop or asyncio.get_running_loop()

    def send(
        self,
        msg: Sendable,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        check: bool = False,
    ) -> SendResult:
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
        work = self.send_async(msg, sender=sender, recipients=recipients, check=check)
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
    ) -> SendResult:
        """Deliver ``msg`` now; keep what cannot be delivered (outbox or failed maildir).

        ``msg`` is a MailResponse, an ``email`` message or a MailRequest (forwarded as is); the
        envelope comes from it unless ``sender``/``recipients`` are given. Remote refusals are
        reported in the result, not raised, unless ``check`` is true (DeliveryError).
        """
        envelope = await asyncio.to_thread(_prepare, msg, sender, recipients)
        sender, rcpts, data, message_id = envelope
        outcomes = await self.deliver(sender, rcpts, data)
        delivered = tuple(r for r, o in outcomes.items() if o.status == "delivered")
        for rcpt in delivered:
            log.info("sent %s from %r to %r: %r", message_id, sender, rcpt, outcomes[rcpt].reply)
        stored = await self.outbox.store(sender, data, outcomes)  # QueueError if it cannot
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
        if check and not result.ok:
            raise DeliveryError(result)
        return result

    async def retry_once(self, now: float | None = None) -> RetryReport:
        """One pass over the outbox: retry each entry whose next attempt is due at ``now``."""
        return await self.outbox.retry_once(self.deliver, now)

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

    async def deliver(self, sender: str, recipients: list[str], data: bytes) -> dict[str, Outcome]:
        """One delivery attempt of ``data`` to every recipient; nothing is stored."""
        if not recipients:
            return {}
        if self.host is not None:
            outcomes, _ = await self._transaction(self.host, self.port, sender, recipients, data)
            return outcomes
        domains: dict[str, list[str]] = {}
        for rcpt in recipients:
            domains.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)
        parts = await asyncio.gather(
            *(
                self._deliver_domain(domain, rcpts, sender, data)
                for domain, rcpts in domains.items()
            )
        )
        return {rcpt: outcome for part in parts for rcpt, outcome in part.items()}

    async def _deliver_domain(
        self, domain: str, recipients: list[str], sender: str, data: bytes
    ) -> dict[str, Outcome]:
        """Deliver to one domain's mail hosts, in order, until one takes the transaction."""
        try:
            hosts = await self._resolve(domain)
        except ResolveError as exc:
            status: Status = "deferred" if exc.temporary else "failed"
            return dict.fromkeys(recipients, Outcome(status, str(exc)))
        if not hosts:
            return dict.fromkeys(recipients, Outcome("failed", f"no mail host for {domain}"))
        outcomes: dict[str, Outcome] = {}
        for host, port in hosts:
            outcomes, next_host = await self._transaction(host, port, sender, recipients, data)
            if not next_host:
                break
        return outcomes

    async def _resolve(self, domain: str) -> list[tuple[str, int]]:
        """The mail hosts of ``domain``: an address literal, the resolver's answer, or DNS."""
        if domain.startswith("[") and domain.endswith("]"):
            return [(domain[1:-1].removeprefix("IPv6:"), self.port)]
        if self.resolver is None:
            return await resolve_mx(domain, self.port, self.timeout)
        try:
            found = self.resolver(domain)
            hosts = await found if inspect.isawaitable(found) else found
        except ResolveError:
            raise
        except Exception as exc:
            raise ResolveError(f"cannot resolve {domain}: {exc}", temporary=True) from exc
        return list(hosts)

    def _client(self, host: str, port: int) -> aiosmtplib.SMTP:
        """An unconnected session; credentials and implicit TLS are for the smarthost only."""
        smarthost = self.host is not None
        implicit = self.tls and smarthost
        return aiosmtplib.SMTP(
            hostname=host,
            port=port,
            username=self.username if smarthost else None,
            password=self.password if smarthost else None,
            local_hostname=self.local_hostname,
            timeout=self.timeout,
            use_tls=implicit,
            start_tls=False if implicit else self.starttls,
            validate_certs=smarthost,
            tls_context=self.tls_context,
        )

    async def _transaction(
        self, host: str, port: int, sender: str, recipients: list[str], data: bytes
    ) -> tuple[dict[str, Outcome], bool]:
        """One SMTP session; the outcomes, and whether another host may do better (the
        failure came before any recipient was answered and was not permanent)."""
        where = f"{host}:{port}"
        utf8 = not all(address.isascii() for address in (sender, *recipients))
        encoding = "utf-8" if utf8 else "ascii"
        outcomes: dict[str, Outcome] = {}
        client = self._client(host, port)
        stage = "connect"
        try:
            await client.connect()
            try:
                stage = "EHLO"
                if client.is_ehlo_or_helo_needed:
                    try:
                        await client.ehlo()
                    except aiosmtplib.SMTPHeloError:
                        await client.helo()
                options = []
                if not data.isascii() and client.supports_extension("8bitmime"):
                    options.append("BODY=8BITMIME")
                if utf8:
                    if not client.supports_extension("smtputf8"):
                        reply = f"{where}: 555 5.6.7 SMTPUTF8 needed but not offered"
                        return dict.fromkeys(recipients, Outcome("failed", reply)), False
                    options.append("SMTPUTF8")
                stage = "MAIL"
                await client.mail(sender, options=options, encoding=encoding)
                stage = "RCPT"
                accepted = []
                for rcpt in recipients:
                    try:
                        await client.rcpt(rcpt, encoding=encoding)
                    except aiosmtplib.SMTPRecipientRefused as exc:
                        outcomes[rcpt] = _refusal(where, exc.code, exc.message)
                    else:
                        accepted.append(rcpt)
                if accepted:
                    stage = "DATA"
                    done = await client.data(data)
                    reply = f"{where}: {done.code} {clean_reply(done.message)}"
                    outcomes.update(dict.fromkeys(accepted, Outcome("delivered", reply)))
            finally:
                await _close(client)
        except aiosmtplib.SMTPResponseException as exc:
            outcome = _refusal(where, exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:  # OSError covers ssl and timeouts
            outcome = Outcome("deferred", f"{where}: {stage}: {clean_reply(str(exc)) or exc!r}")
        else:
            return outcomes, False
        next_host = (
            outcome.status == "deferred" and not outcomes and stage in ("connect", "EHLO", "MAIL")
        )
        for rcpt in recipients:
            outcomes.setdefault(rcpt, outcome)
        return outcomes, next_host


def _refusal(where: str, code: int, message: str) -> Outcome:
    """A 4xx reply defers, anything else fails."""
    status: Status = "deferred" if 400 <= code < 500 else "failed"
    return Outcome(status, f"{where}: {code} {clean_reply(message)}")


async def _close(client: aiosmtplib.SMTP) -> None:
    """QUIT politely; drop the connection if that fails."""
    if client.is_connected:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()


async def resolve_mx(domain: str, port: int = 25, timeout: float = 30) -> list[tuple[str, int]]:
    """The mail hosts of ``domain`` by MX preference (ties shuffled, RFC 5321 section 5.1),
    or the domain itself when it has no MX but has an address. A null MX (RFC 7505), a missing
    domain and a domain without any address are permanent ResolveErrors."""

    async def query(rdtype: str) -> list[Any]:
        try:
            answer = await dns.asyncresolver.resolve(domain, rdtype, lifetime=timeout)
        except dns.resolver.NXDOMAIN as exc:
            raise ResolveError(f"{domain}: no such domain", temporary=False) from exc
        except dns.resolver.NoAnswer:
            return []
        except dns.exception.DNSException as exc:
            raise ResolveError(f"{domain}: DNS lookup failed: {exc}", temporary=True) from exc
        return list(answer)

    records = await query("MX")
    if records:
        random.shuffle(records)
        records.sort(key=lambda record: record.preference)
        hosts = [str(record.exchange).rstrip(".") for record in records]
        if hosts == [""]:
            raise ResolveError(f"{domain} accepts no mail (null MX)", temporary=False)
        return [(host, port) for host in hosts if host]
    if await query("A") or await query("AAAA"):
        return [(domain, port)]
    raise ResolveError(f"{domain}: no MX and no address", temporary=False)


def _prepare(
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


_current: Relay | None = None


def configure(relay: Relay | None) -> Relay | None:
    """Install ``relay`` as the one the module-level ``send`` functions use; returns the old."""
    global _current
    previous, _current = _current, relay
    return previous


def current() -> Relay:
    """The configured relay; RelayError when the server has not configured one."""
    if _current is None:
        raise RelayError("no relay configured: call mailrouter.relay.configure(Relay(...))")
    return _current


def send(
    msg: Sendable,
    *,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
    check: bool = False,
) -> SendResult:
    """Send ``msg`` with the configured relay, from synchronous code (see ``Relay.send``)."""
    return current().send(msg, sender=sender, recipients=recipients, check=check)


async def send_async(
    msg: Sendable,
    *,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
    check: bool = False,
) -> SendResult:
    """Send ``msg`` with the configured relay (see ``Relay.send_async``)."""
    return await current().send_async(msg, sender=sender, recipients=recipients, check=check)


def from_settings(settings: Settings, **overrides: Any) -> Relay:
    """A Relay from the ``relay_*``, ``outbox`` and ``failed`` settings."""
    options: dict[str, Any] = {
        "host": settings.relay_host or None,
        "port": settings.relay_port,
        "starttls": {"auto": None, "require": True, "off": False}[settings.relay_starttls],
        "tls": settings.relay_tls,
        "username": settings.relay_username or None,
        "password": settings.relay_password or None,
        "timeout": settings.relay_timeout,
        "outbox": settings.path(settings.outbox),
        "failed": settings.path(settings.failed),
        "local_hostname": settings.hostname or None,
    }
    options.update(overrides)
    return Relay(**options)
