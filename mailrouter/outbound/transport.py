"""SMTP delivery mechanics: one attempt to hand a message to a smarthost or to each domain's MX.

``ConnectionOptions`` says how to connect; ``Transport.deliver`` opens the aiosmtplib sessions and
reports an ``Attempt`` per recipient; it stores nothing. Keeping mail for later and retrying it is
the relay's and the outbox's job.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver

from mailrouter.errors import MailRouterError
from mailrouter.outbound.outbox import Attempt, AttemptStatus, clean_reply

HostList = Sequence[tuple[str, int]]
Resolver = Callable[[str], Awaitable[HostList] | HostList]


class RelayError(MailRouterError):
    """Outgoing mail could not be sent: no relay configured, or (on request) not delivered."""


class ResolveError(RelayError):
    """No mail host could be found for a domain; ``temporary`` when worth trying later."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


@dataclass(frozen=True)
class ConnectionOptions:
    """How outgoing SMTP sessions are made: through a smarthost (``host``) or, when there is
    none, to the recipients' MX.

    ``starttls``: None upgrades when the server offers it, True requires it, False never does;
    ``tls`` is implicit TLS (port 465). Credentials imply required STARTTLS unless ``tls`` or
    ``starttls=False`` is given. Certificates are verified against ``tls_context`` (default: the
    system's CAs), except for opportunistic STARTTLS to MX hosts, as MTAs do. ``resolver`` maps a
    domain to its ``(host, port)`` list (sync or async); the default asks DNS (``resolve_mx``).
    """

    host: str | None = None
    port: int = 25
    _: KW_ONLY
    starttls: bool | None = None
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30
    tls_context: ssl.SSLContext | None = None
    local_hostname: str | None = None
    resolver: Resolver | None = None

    def __post_init__(self) -> None:
        if self.tls and self.starttls:
            raise ValueError("tls (implicit TLS) and starttls exclude each other")
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        if not self.host:
            object.__setattr__(self, "host", None)
        if self.username is not None and not self.tls and self.starttls is None:
            object.__setattr__(self, "starttls", True)  # never send a password in the clear


class Transport:
    """Delivers with the ``options`` it was made with (see ``ConnectionOptions``)."""

    def __init__(self, options: ConnectionOptions) -> None:
        self.options = options

    async def deliver(self, sender: str, recipients: list[str], data: bytes) -> dict[str, Attempt]:
        """One delivery attempt of ``data`` to every recipient; nothing is stored."""
        if not recipients:
            return {}
        host, port = self.options.host, self.options.port
        if host is not None:
            attempts, _ = await self._transaction(host, port, sender, recipients, data)
            return attempts
        domains: dict[str, list[str]] = {}
        for rcpt in recipients:
            domains.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)
        parts = await asyncio.gather(
            *(
                self._deliver_domain(domain, rcpts, sender, data)
                for domain, rcpts in domains.items()
            )
        )
        return {rcpt: attempt for part in parts for rcpt, attempt in part.items()}

    async def _deliver_domain(
        self, domain: str, recipients: list[str], sender: str, data: bytes
    ) -> dict[str, Attempt]:
        """Deliver to one domain's mail hosts, in order, until one takes the transaction."""
        try:
            hosts = await self._resolve(domain)
        except ResolveError as exc:
            status: AttemptStatus = "deferred" if exc.temporary else "failed"
            return dict.fromkeys(recipients, Attempt(status, str(exc)))
        if not hosts:
            return dict.fromkeys(recipients, Attempt("failed", f"no mail host for {domain}"))
        attempts: dict[str, Attempt] = {}
        for host, port in hosts:
            attempts, next_host = await self._transaction(host, port, sender, recipients, data)
            if not next_host:
                break
        return attempts

    async def _resolve(self, domain: str) -> list[tuple[str, int]]:
        """The mail hosts of ``domain``: an address literal, the resolver's answer, or DNS."""
        port, resolver = self.options.port, self.options.resolver
        if domain.startswith("[") and domain.endswith("]"):
            return [(domain[1:-1].removeprefix("IPv6:"), port)]
        if resolver is None:
            return await resolve_mx(domain, port, self.options.timeout)
        try:
            found = resolver(domain)
            hosts = await found if inspect.isawaitable(found) else found
        except ResolveError:
            raise
        except Exception as exc:
            raise ResolveError(f"cannot resolve {domain}: {exc}", temporary=True) from exc
        return list(hosts)

    def _client(self, host: str, port: int) -> aiosmtplib.SMTP:
        """An unconnected session; credentials and implicit TLS are for the smarthost only."""
        options = self.options
        smarthost = options.host is not None
        implicit = options.tls and smarthost
        return aiosmtplib.SMTP(
            hostname=host,
            port=port,
            username=options.username if smarthost else None,
            password=options.password if smarthost else None,
            local_hostname=options.local_hostname,
            timeout=options.timeout,
            use_tls=implicit,
            start_tls=False if implicit else options.starttls,
            validate_certs=smarthost,
            tls_context=options.tls_context,
        )

    async def _transaction(
        self, host: str, port: int, sender: str, recipients: list[str], data: bytes
    ) -> tuple[dict[str, Attempt], bool]:
        """One SMTP session; the attempts, and whether another host may do better (the
        failure came before any recipient was answered and was not permanent)."""
        where = f"{host}:{port}"
        attempts: dict[str, Attempt] = {}
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
                mail_options = options_for(sender, recipients, data, client.supports_extension)
                if mail_options is None:
                    failed = Attempt("failed", f"{where}: {NO_SMTPUTF8}")
                    return dict.fromkeys(recipients, failed), False
                encoding = "utf-8" if "SMTPUTF8" in mail_options else "ascii"
                stage = "MAIL"
                await client.mail(sender, options=mail_options, encoding=encoding)
                stage = "RCPT"
                accepted = []
                for rcpt in recipients:
                    try:
                        await client.rcpt(rcpt, encoding=encoding)
                    except aiosmtplib.SMTPRecipientRefused as exc:
                        attempts[rcpt] = refusal(where, exc.code, exc.message)
                    else:
                        accepted.append(rcpt)
                if accepted:
                    stage = "DATA"
                    done = await client.data(data)
                    reply = f"{where}: {done.code} {clean_reply(done.message)}"
                    attempts.update(dict.fromkeys(accepted, Attempt("delivered", reply)))
            finally:
                await _close(client)
        except aiosmtplib.SMTPResponseException as exc:
            attempt = refusal(where, exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:  # OSError covers ssl and timeouts
            attempt = Attempt("deferred", f"{where}: {stage}: {clean_reply(str(exc)) or exc!r}")
        else:
            return attempts, False
        next_host = (
            attempt.status == "deferred" and not attempts and stage in ("connect", "EHLO", "MAIL")
        )
        for rcpt in recipients:
            attempts.setdefault(rcpt, attempt)
        return attempts, next_host


NO_SMTPUTF8 = "555 5.6.7 SMTPUTF8 needed but not offered"


def options_for(
    sender: str, recipients: list[str], data: bytes, offers: Callable[[str], bool]
) -> list[str] | None:
    """The MAIL options for ``data`` from ``sender`` to ``recipients``, given the extensions
    the server ``offers`` (by lower-case name); None when it needs SMTPUTF8, not offered."""
    options = ["BODY=8BITMIME"] if not data.isascii() and offers("8bitmime") else []
    if not all(address.isascii() for address in (sender, *recipients)):
        if not offers("smtputf8"):
            return None
        options.append("SMTPUTF8")
    return options


def refusal(where: str, code: int, message: str) -> Attempt:
    """A 4xx reply defers, anything else fails."""
    status: AttemptStatus = "deferred" if 400 <= code < 500 else "failed"
    return Attempt(status, f"{where}: {code} {clean_reply(message)}")


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
