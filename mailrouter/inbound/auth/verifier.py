"""The Verifier: SPF, DKIM, ARC and DMARC of one message, concurrently and within a time limit.

The DNS questions known beforehand go out at once (SPF's first record, the signatures' keys,
the DMARC record); SPF's further lookups (include:, a:, mx:) follow one by one, as its record
says. With a warm cache nothing waits: no task is made, no lookup awaited. The signatures of a
message over ``THREAD_SIZE`` are checked in a thread, so that the loop serves other sessions
between dkimpy's steps (each of its passes over the body, a regular expression in C, still
holds the GIL: about a third of the work). A message whose checks together take longer than
``TIME_LIMIT`` timeouts gets ``temperror`` results: mail is never held up long by DNS. With
``trusted_authserv_ids``, a trusted MTA's Authentication-Results header is used instead of
verifying again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Collection
from typing import TypeVar

from mailrouter.config import Settings
from mailrouter.inbound.auth import dmarc
from mailrouter.inbound.auth.resolver import Resolver, question
from mailrouter.inbound.auth.results import (
    ARCResult,
    AuthResults,
    DMARCResult,
    SPFResult,
)
from mailrouter.inbound.auth.signatures import ARCCheck, DKIMCheck
from mailrouter.inbound.auth.spf import SPFChecker, checked_domain, client_ip
from mailrouter.inbound.auth.trusted import trusted_results
from mailrouter.message import MailRequest, header_section

log = logging.getLogger(__name__)

T = TypeVar("T")

_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)
_LINE_END = re.compile(rb"\r?\n")

TIME_LIMIT = 5  # dns_timeouts that all the checks of one message may take together
# bytes over which a message's signatures are parsed and verified in a thread: dkimpy takes
# 4-8 ms per 64 KiB (60-120 for 1 MiB), which would all be the event loop's standstill
THREAD_SIZE = 64 * 1024


class Verifier:
    """Verifies messages with ``resolver``; believes the headers of ``trusted`` authserv-ids."""

    def __init__(
        self, resolver: Resolver, trusted: Collection[str] = (), time_limit: float = 10.0
    ) -> None:
        self.resolver = resolver
        self.spf = SPFChecker(resolver)
        self.trusted = frozenset(name.lower() for name in trusted)
        self.time_limit = time_limit
        dmarc.organizational_domain("example.com")  # load the suffix list now, not on mail

    @classmethod
    def from_settings(cls, settings: Settings) -> Verifier:
        """A Verifier with the ``dns_*`` and ``trusted_authserv_ids`` settings."""
        resolver = Resolver(settings.dns_nameservers, settings.dns_timeout)
        limit = TIME_LIMIT * settings.dns_timeout
        return cls(resolver, settings.trusted_authserv_ids, limit)

    async def verify(self, message: MailRequest, helo: str = "") -> AuthResults:
        """The authentication results of ``message``, received over a session that said
        ``helo``; never raises for what the message or DNS hold."""
        header = header_fields(message.data)
        if self.trusted:
            reported = trusted_results(header, self.trusted)
            if reported is not None:
                return reported
        try:
            async with asyncio.timeout(self.time_limit):
                return await self._verify(message, helo, header)
        except TimeoutError:
            reason = f"checks took over {self.time_limit:g}s"
            log.info("authentication of a message from %r: %s", message.sender, reason)
            domain = dmarc.from_domain(_values(header, "from")) or ""
            return AuthResults(
                SPFResult("temperror", reason),
                (),
                DMARCResult("temperror", reason, domain),
                ARCResult("temperror", reason),
            )

    async def _verify(
        self, message: MailRequest, helo: str, header: list[tuple[str, str]]
    ) -> AuthResults:
        """Every question known beforehand at once (SPF's first record, the signatures' keys,
        the DMARC record), then the checks, which ask what else they need."""
        from_domain = dmarc.from_domain(_values(header, "from"))
        ip, spf_domain = client_ip(message.peer), checked_domain(message.sender, helo)
        names = {name.lower() for name, _ in header}
        data = message.data
        big = len(data) > THREAD_SIZE and bool(names & {"dkim-signature", "arc-seal"})
        signatures, arc = await _run(big, lambda: (DKIMCheck(data, names), ARCCheck(data, names)))
        questions = signatures.questions + arc.questions
        if from_domain is not None:
            questions.append(dmarc.record_question(from_domain))
        if ip is not None and spf_domain:
            questions.append(question(spf_domain, "TXT"))
        known = await self.resolver.answers(questions)
        spf = await self.spf.check(ip, message.sender, helo, known)
        dkim, chain = await _run(big, lambda: (signatures.results(known), arc.result(known)))
        published = await dmarc.find_record(self.resolver, from_domain, known)
        return AuthResults(spf, dkim, dmarc.evaluate(from_domain, published, spf, dkim), chain)


async def _run(in_thread: bool, work: Callable[[], T]) -> T:
    """``work``'s result, made in a thread when ``in_thread`` (dkimpy's work on a big message:
    the loop runs between its steps, as threads share the GIL), else here, where a thread's
    round trip would cost more than the work."""
    return await asyncio.to_thread(work) if in_thread else work()


def header_fields(data: bytes) -> list[tuple[str, str]]:
    """The header fields of ``data``, top first, as (name, unfolded value); lines that are no
    field are left out. A scan, not a parse: the checks need a few fields of every message."""
    return [
        (name.decode("ascii"), _LINE_END.sub(b"", value).strip().decode("utf-8", "replace"))
        for name, value in _FIELD.findall(header_section(data))
    ]


def _values(fields: list[tuple[str, str]], name: str) -> tuple[str, ...]:
    return tuple(value for field, value in fields if field.lower() == name)
