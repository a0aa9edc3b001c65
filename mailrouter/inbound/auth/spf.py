"""SPF (RFC 7208) with pyspf's record grammar, macros and limits, over the asynchronous resolver.

pyspf looks names up with blocking calls as it evaluates a record. Here its ``query.dns`` reads
from the answers gathered so far and, for a question not asked yet, stops the evaluation; the
question is then asked asynchronously and the evaluation run again from the start. Evaluating
is microseconds of work and a record needs at most a few dozen questions (RFC 7208 4.6.4), so
the event loop never waits on DNS and pyspf stays unchanged. A result is kept, and given again
for the same client, MAIL FROM and HELO, while every answer it was made from is still the
resolver's: what pyspf would find again, without evaluating again.
"""

from __future__ import annotations

import ipaddress
from typing import Any, cast

import spf as pyspf

from mailrouter.inbound.auth.resolver import Answer, Answers, Question, Resolver
from mailrouter.inbound.auth.results import RESULT_WORDS, ResultWord, SPFResult

MAX_QUESTIONS = 120  # 10 lookups, each MX with 10 names, and the void and PTR lookups
KEPT_RESULTS = 10_000  # (client, MAIL FROM, HELO) whose results are kept


class _Unasked(Exception):
    """The evaluation needs the answer to a question not asked yet."""

    def __init__(self, question: Question) -> None:
        super().__init__(question)
        self.question = question


class _Query(pyspf.query):  # type: ignore[misc]  # pyspf has no type hints
    """pyspf's query, its DNS lookups read from ``answers``."""

    def __init__(self, answers: dict[Question, Answer], **kwargs: Any) -> None:
        self.answers = answers
        self.used: dict[Question, Answer] = {}  # what the evaluation read
        super().__init__(**kwargs)

    def dns(
        self, name: str, qtype: str, cnames: object = None, ignore_void: bool = False
    ) -> list[Any]:
        name = str(name).rstrip(".").lower()
        if not name or not all(0 < len(label) < 64 for label in name.split(".")):
            return []  # an invalid name: no records (as pyspf's own lookup does)
        answer = self.answers.get((name, qtype))
        if answer is None:
            raise _Unasked((name, qtype))
        self.used[name, qtype] = answer
        if answer.failure:
            raise pyspf.TempError(f"{answer.failure} for {name} {qtype}")
        records = [_record(qtype, record) for record in answer.records]
        if not records and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > pyspf.MAX_VOID_LOOKUPS:
                raise pyspf.PermError(f"void lookup limit of {pyspf.MAX_VOID_LOOKUPS} exceeded")
        return records


def _record(qtype: str, record: Any) -> Any:
    """A dnspython record in the shape pyspf's lookups return."""
    if qtype in ("A", "AAAA"):
        return record.address
    if qtype == "MX":
        return (record.preference, record.exchange.to_text(True))
    if qtype == "PTR":
        return record.target.to_text(True)
    return list(record.strings)  # TXT: the strings, joined by pyspf


def checked_domain(mail_from: str, helo: str) -> str:
    """The domain SPF checks: MAIL FROM's, or the HELO name for the null sender."""
    return (mail_from.rpartition("@")[2] if mail_from else helo).rstrip(".").lower()


class SPFChecker:
    """SPF checks with ``resolver``'s answers, each result kept while they are."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self._kept: dict[tuple[str, str, str], tuple[SPFResult, dict[Question, Answer]]] = {}

    async def check(
        self, ip: str | None, mail_from: str, helo: str, known: Answers | None = None
    ) -> SPFResult:
        """SPF for the MAIL FROM domain from client address ``ip``, or for ``helo`` when MAIL
        FROM is the null sender; ``known`` answers (the domain's TXT records, say) are not asked
        again."""
        scope: Any = "mailfrom" if mail_from else "helo"
        identity = mail_from or helo
        domain = checked_domain(mail_from, helo)
        if ip is None:
            return SPFResult("none", "no client IP address", domain, identity, scope)
        if not domain:
            return SPFResult("none", "no domain to check", domain, identity, scope)
        key = (ip, mail_from, helo)
        kept = self._kept.get(key)
        if kept is not None and all(
            self.resolver.cached(question) is answer for question, answer in kept[1].items()
        ):
            return kept[0]
        answers: dict[Question, Answer] = dict(known or {})
        for _ in range(MAX_QUESTIONS):
            query = _Query(answers, i=ip, s=mail_from, h=helo, querytime=0)
            try:
                word, _code, explanation = query.check()
            except _Unasked as unasked:
                answers[unasked.question] = await self.resolver.query(*unasked.question)
                continue
            except (ValueError, UnicodeError) as exc:  # an address or name pyspf cannot take
                return SPFResult("permerror", str(exc), domain, identity, scope)
            word = cast(ResultWord, word if word in RESULT_WORDS else "permerror")
            result = SPFResult(word, str(explanation), domain, identity, scope)
            return self._keep(key, result, query.used)
        return SPFResult("permerror", "too many DNS lookups", domain, identity, scope)

    def _keep(
        self, key: tuple[str, str, str], result: SPFResult, used: dict[Question, Answer]
    ) -> SPFResult:
        if len(self._kept) >= KEPT_RESULTS:
            del self._kept[next(iter(self._kept))]  # the oldest
        self._kept[key] = (result, used)
        return result


def client_ip(peer: object) -> str | None:
    """The client's IP address from a session's peer (an IPv4-mapped IPv6 one as IPv4);
    None for a Unix socket or no peer."""
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        address = ipaddress.ip_address(str(peer[0]).partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
