"""The asynchronous DNS resolver of sender authentication: bounded, cached, never blocking.

dnspython's asyncio resolver asks the configured nameservers (``dns_nameservers``, default the
system's) within ``dns_timeout`` seconds per question, sent again each quarter of it. Answers
are kept for their TTL, and so is the absence of a name or of a record, for the SOA's negative
TTL (RFC 2308; 30 s without one); a question that timed out or that no nameserver could answer
is answered as failed for ``FAILURE_TTL`` seconds (RFC 2308 7: at most five minutes), so that
while DNS is down each name costs ``dns_timeout`` once, not once per message. Concurrent
questions for the same name share one lookup. The cache is a dict read before anything else:
a warm question costs a dict lookup.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.resolver

from mailrouter.config import nameserver_address

FAILURE_TTL = 30.0  # seconds a failed question is answered as failed without asking again
# seconds a name's absence is kept when no SOA says how long: RFC 2308 5 advises resolvers that
# forward not to keep it (they could loop); a stub cannot loop, and without it every message
# from an unknown domain would ask again
NEGATIVE_TTL = 30.0
CACHE_SIZE = 50_000  # questions whose answers are kept
RETRIES = 4  # tries of a question within its timeout (each nameserver in turn)


@dataclass(frozen=True)
class Answer:
    """The records found for a question, or why none could be had: ``failure`` is empty when
    DNS answered (no records: the name or the record type does not exist)."""

    records: tuple[dns.rdata.Rdata, ...] = ()
    failure: str = ""

    def texts(self) -> list[bytes]:
        """The TXT records, each one's strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
        return [b"".join(getattr(record, "strings", ())) for record in self.records]


Question = tuple[str, str]  # (name, record type)
Answers = dict[Question, Answer]


def question(name: str, rdtype: str) -> Question:
    """The cache's key for a question: the name in lower case, without the final dot."""
    return name.rstrip(".").lower(), rdtype


class Resolver:
    """Answers DNS questions for the verifiers, asynchronously and with a shared cache."""

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 2.0) -> None:
        """``nameservers`` as ``host`` or ``host:port`` (``[v6]:port``); empty: the system's."""
        resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*nameserver_address(text)) for text in nameservers
            ]
        # a question may take ``timeout`` in all; each try a quarter of it, so that one lost
        # packet costs a retransmission, not the whole timeout
        resolver.lifetime, resolver.timeout = timeout, timeout / RETRIES
        self._resolver = resolver
        self._cache: dict[Question, tuple[float, Answer]] = {}  # -> (expires, answer)
        self._pending: dict[Question, asyncio.Future[Answer]] = {}

    async def answers(self, questions: list[Question]) -> Answers:
        """The answers to ``questions``: from the cache, the others asked concurrently."""
        found: Answers = {}
        missing = []
        for key in dict.fromkeys(questions):
            cached = self.cached(key)
            if cached is None:
                missing.append(key)
            else:
                found[key] = cached
        if missing:
            asked = await asyncio.gather(*(self.query(*key) for key in missing))
            found.update(zip(missing, asked, strict=True))
        return found

    async def query(self, name: str, rdtype: str) -> Answer:
        """The ``rdtype`` records of ``name`` (CNAMEs followed)."""
        key = question(name, rdtype)
        cached = self.cached(key)
        if cached is not None:
            return cached
        lookup = self._pending.get(key)
        if lookup is None:  # one lookup per question, whoever asks, untouched by their timeouts
            lookup = self._pending[key] = asyncio.ensure_future(self._ask(key))
            lookup.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(lookup)

    def cached(self, key: Question) -> Answer | None:
        """The answer to ``key`` while it is kept, else None; asks nothing."""
        cached = self._cache.get(key)
        if cached is None:
            return None
        if cached[0] > time.monotonic():
            return cached[1]
        del self._cache[key]
        return None

    async def _ask(self, key: Question) -> Answer:
        """Ask the nameservers, and keep the answer as long as it may be kept."""
        try:
            qname = dns.name.from_text(key[0])
            found = await self._resolver.resolve(
                qname, key[1], search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN as exc:
            return self._keep(key, Answer(), _negative_ttl(exc.response(qname)))  # type: ignore[no-untyped-call]
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong):
            return Answer()  # no such name can exist
        except dns.exception.DNSException as exc:
            return self._keep(key, Answer(failure=_describe(exc)), FAILURE_TTL)
        if found.rrset is None and not any(
            rrset.rdtype == dns.rdatatype.SOA for rrset in found.response.authority
        ):
            return self._keep(key, Answer(), NEGATIVE_TTL)  # no such record, and no SOA
        return self._keep(key, Answer(tuple(found.rrset or ())), found.expiration - time.time())

    def _keep(self, key: Question, answer: Answer, ttl: float) -> Answer:
        if ttl > 0:
            if len(self._cache) >= CACHE_SIZE:
                self._evict()
            self._cache[key] = (time.monotonic() + ttl, answer)
        return answer

    def _evict(self) -> None:
        """Drop what expired; if that is not enough, the older half (insertion order)."""
        now = time.monotonic()
        kept = {k: v for k, v in self._cache.items() if v[0] > now}
        if len(kept) >= CACHE_SIZE:
            kept = dict(list(kept.items())[CACHE_SIZE // 2 :])
        self._cache = kept


def _negative_ttl(response: dns.message.Message | None) -> float:
    """How long a name's absence may be cached: the SOA's TTL, at most its minimum field
    (``NEGATIVE_TTL`` without an SOA)."""
    for rrset in response.authority if response is not None else ():
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, getattr(rrset[0], "minimum", 0)))
    return NEGATIVE_TTL


def _describe(exc: dns.exception.DNSException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "DNS timeout"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no nameserver answered"
    return f"DNS error: {type(exc).__name__}"
