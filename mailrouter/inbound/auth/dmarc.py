"""DMARC (RFC 7489): the From: domain's policy, identifier alignment, and the disposition.

The policy is the ``_dmarc`` TXT record of the From: domain or, failing that, of its
organisational domain (the Public Suffix List's registrable domain, from the list bundled with
``publicsuffixlist``: nothing is fetched). DMARC passes when SPF or a DKIM signature passes for
a domain aligned with the From: domain (relaxed: the same organisational domain; strict: the
same domain). When nothing aligned passes but an aligned check met a DNS error, the result is
``temperror``, which no policy acts on.
"""

from __future__ import annotations

import email.utils
import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from dkim.util import InvalidTagValueList, parse_tag_value
from publicsuffixlist import PublicSuffixList

from mailrouter.inbound.auth.resolver import Answers, Question, Resolver, question
from mailrouter.inbound.auth.results import (
    DKIMResult,
    DMARCResult,
    Policy,
    ResultWord,
    SPFResult,
)

_POLICIES = ("none", "quarantine", "reject")
_WEAKER: dict[Policy, Policy] = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@functools.cache
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the bundled list, parsed once (about 0.1 s)


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """The registrable domain of ``domain`` (``mail.example.co.uk`` -> ``example.co.uk``)."""
    domain = domain.rstrip(".").lower()
    return _suffixes().privatesuffix(domain) or domain


def record_question(domain: str) -> Question:
    """Where the DMARC record of ``domain`` is published."""
    return question(f"_dmarc.{domain}", "TXT")


@functools.lru_cache(maxsize=4096)
def from_domain(from_headers: tuple[str, ...]) -> str | None:
    """The domain of the one From: address, or None when there is not exactly one (kept: a
    sender's From: comes again and again)."""
    if len(from_headers) != 1:
        return None
    addresses = [address for _, address in email.utils.getaddresses(from_headers) if address]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return None
    domain = addresses[0].rpartition("@")[2].strip().rstrip(".").lower()
    return domain or None


@dataclass(frozen=True)
class _Record:
    policy: Policy
    subdomain_policy: Policy
    strict_dkim: bool
    strict_spf: bool
    percent: int


@dataclass(frozen=True)
class Published:
    """What policy discovery found: a record (at the organisational domain when ``inherited``),
    none, or a ``problem``: a DNS failure (``temporary``) or a record that cannot be used."""

    record: _Record | None = None
    inherited: bool = False
    problem: str = ""
    temporary: bool = False


async def find_record(
    resolver: Resolver, domain: str | None, known: Answers | None = None
) -> Published:
    """The DMARC record that applies to mail From: ``domain`` (RFC 7489 6.6.3); ``known``
    answers are not asked again."""
    if domain is None:
        return Published()
    found = await _record(resolver, domain, known or {})
    organization = organizational_domain(domain)
    if found is None and organization != domain:
        return _published(await _record(resolver, organization, known or {}), inherited=True)
    return _published(found, inherited=False)


def _published(found: _Record | ValueError | str | None, *, inherited: bool) -> Published:
    if isinstance(found, str):
        return Published(problem=found, temporary=True)
    if isinstance(found, ValueError):
        return Published(problem=str(found))
    return Published(found, inherited)


def evaluate(
    domain: str | None, published: Published, spf: SPFResult, dkim: Sequence[DKIMResult]
) -> DMARCResult:
    """DMARC for mail From: ``domain`` under ``published``, given the SPF and DKIM results."""
    if domain is None:
        return DMARCResult("permerror", "not exactly one From: address")
    if published.problem:
        word: ResultWord = "temperror" if published.temporary else "permerror"
        return DMARCResult(word, published.problem, domain)
    found = published.record
    if found is None:
        return DMARCResult("none", "no DMARC record", domain)
    policy = found.subdomain_policy if published.inherited else found.policy
    organization = organizational_domain(domain)

    def aligned(other: str, strict: bool) -> bool:
        other = other.rstrip(".").lower()
        return other == domain if strict else organizational_domain(other) == organization

    checks = [(spf.result, aligned(spf.domain, found.strict_spf))]
    checks += [(d.result, aligned(d.domain, found.strict_dkim)) for d in dkim]
    if any(result == "pass" and ok for result, ok in checks):
        how = "SPF" if checks[0] == ("pass", True) else "DKIM"
        return DMARCResult("pass", f"{how} aligned", domain, policy, "none")
    if any(result == "temperror" and ok for result, ok in checks):
        return DMARCResult("temperror", "an aligned check met a DNS error", domain, policy)
    disposition = policy
    if found.percent < 100 and random.randrange(100) >= found.percent:
        disposition = _WEAKER[policy]  # RFC 7489 6.6.4: outside the sample, one step weaker
    return DMARCResult("fail", "no aligned SPF or DKIM pass", domain, policy, disposition)


async def _record(
    resolver: Resolver, domain: str, known: Answers
) -> _Record | ValueError | str | None:
    """The DMARC record of ``domain``: None without one, a str for a DNS failure, a
    ValueError for a record that cannot be used."""
    answer = known.get(record_question(domain)) or await resolver.query(f"_dmarc.{domain}", "TXT")
    if answer.failure:
        return answer.failure
    records = [text for text in answer.texts() if text.startswith(b"v=DMARC1")]
    if len(records) != 1:
        return None  # none, or several: no policy (RFC 7489 6.6.3)
    return _parsed(records[0])


@functools.lru_cache(maxsize=4096)
def _parsed(record: bytes) -> _Record | ValueError:
    """A DMARC record's tags (parsed once per record text: a domain's mail repeats it)."""
    try:
        tags = {k.lower(): v.strip().lower() for k, v in parse_tag_value(record).items()}
    except InvalidTagValueList as exc:
        return ValueError(f"bad DMARC record: {exc}")
    policy = tags.get(b"p", b"").decode("ascii", "replace")
    if policy not in _POLICIES:
        return ValueError(f"bad DMARC policy p={policy!r}")
    subdomain = tags.get(b"sp", policy.encode()).decode("ascii", "replace")
    try:
        percent = min(100, max(0, int(tags.get(b"pct", b"100"))))
    except ValueError:
        percent = 100
    return _Record(
        cast(Policy, policy),
        cast(Policy, subdomain if subdomain in _POLICIES else policy),
        tags.get(b"adkim") == b"s",
        tags.get(b"aspf") == b"s",
        percent,
    )
