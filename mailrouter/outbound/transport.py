"""SMTP delivery mechanics: one attempt to hand a message to a smarthost or to each domain's MX.

``Transport.deliver`` opens the aiosmtplib sessions and reports an ``Outcome`` per recipient; it
stores nothing. Keeping mail for later and retrying it is the relay's and the outbox's job.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver

from mailrouter.errors import MailRouterError
from mailrouter.outbound.outbox import Outcome, Status, clean_reply

HostList = Sequence[tuple[str, int]]
Resolver = Callable[[str], Awaitable[HostList] | HostList]


class RelayError(MailRouterError):
    """Outgoing mail could not be sent: no relay configured, or (on request) not delivered."""


class ResolveError(RelayError):
    """No mail host could be found for a domain; ``temporary`` when worth trying later."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


class Transport:
    """Delivers through a smarthost (``host``) or, when there is none, to the recipients' MX.

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
        resolver: Resolver | None = None,
        local_hostname: str | None = None,
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
