"""What sender authentication found: one value per method, and the Authentication-Results
header (RFC 8601) that says it.

Each result has a standard result word (``pass``, ``fail``, ``softfail``, ``neutral``,
``none``, ``temperror``, ``permerror``) and a reason in words. ``AuthResults`` gathers them
for one message; ``aligned_domain`` is the From: domain when DMARC passes: the one identity of a
sender that mailrouter vouches for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ResultWord = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
Policy = Literal["none", "quarantine", "reject"]
RESULT_WORDS: tuple[ResultWord, ...] = (
    "pass",
    "fail",
    "softfail",
    "neutral",
    "none",
    "temperror",
    "permerror",
)

_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~@]+")  # RFC 2045 token, and "@" (RFC 8601)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class SPFResult:
    """SPF (RFC 7208) of the MAIL FROM domain, or of the HELO name for the null sender."""

    result: ResultWord
    reason: str = ""
    domain: str = ""  # the domain checked
    identity: str = ""  # what was checked: the MAIL FROM address, or the HELO name
    scope: Literal["mailfrom", "helo"] = "mailfrom"


@dataclass(frozen=True)
class DKIMResult:
    """One DKIM-Signature (RFC 6376): its signing domain and selector, and whether it verified."""

    result: ResultWord
    reason: str = ""
    domain: str = ""  # d=
    selector: str = ""  # s=


@dataclass(frozen=True)
class DMARCResult:
    """DMARC (RFC 7489) for the From: domain: its published ``policy`` (None when it has no
    record) and the ``disposition`` that follows for this message."""

    result: ResultWord
    reason: str = ""
    domain: str = ""  # the From: domain
    policy: Policy | None = None
    disposition: Policy = "none"


@dataclass(frozen=True)
class ARCResult:
    """The ARC chain (RFC 8617): ``pass`` when every set in it verifies, ``none`` without one."""

    result: ResultWord
    reason: str = ""
    instances: int = 0  # how many ARC sets the chain has


@dataclass(frozen=True)
class AuthResults:
    """Every authentication result of one message (``message.auth``).

    ``authserv_id`` is empty when mailrouter verified the message itself, else the trusted
    MTA whose Authentication-Results header it took them from.
    """

    spf: SPFResult
    dkim: tuple[DKIMResult, ...]
    dmarc: DMARCResult
    arc: ARCResult
    authserv_id: str = ""

    @property
    def aligned_domain(self) -> str | None:
        """The From: domain when DMARC passes (SPF or DKIM aligned with it), else None."""
        passed = self.dmarc.result == "pass" and self.dmarc.domain
        return self.dmarc.domain if passed else None

    @property
    def quarantined(self) -> bool:
        """Whether the From: domain's DMARC policy asks for this message to be quarantined."""
        return self.dmarc.disposition == "quarantine"

    def header(self, authserv_id: str) -> str:
        """The ``Authentication-Results:`` header field saying these results, each method on a
        folded line of its own (CRLF, tab; no final line end)."""
        spf = self.spf
        parts = [
            _resinfo("spf", spf.result, spf.reason, (f"smtp.{spf.scope}", spf.identity)),
            *(
                _resinfo(
                    "dkim", d.result, d.reason, ("header.d", d.domain), ("header.s", d.selector)
                )
                for d in self.dkim
            ),
            _resinfo(
                "dmarc",
                self.dmarc.result,
                self.dmarc.reason,
                ("header.from", self.dmarc.domain),
                comment=f"p={self.dmarc.policy or 'none'} dis={self.dmarc.disposition}",
            ),
            _resinfo("arc", self.arc.result, self.arc.reason),
        ]
        if not self.dkim:
            parts.insert(1, _resinfo("dkim", "none", "no signature"))
        return f"Authentication-Results: {_value(authserv_id)};\r\n\t" + ";\r\n\t".join(parts)


def _resinfo(
    method: str, result: str, reason: str, *properties: tuple[str, str], comment: str = ""
) -> str:
    """One method's ``method=result (comment) reason="..." ptype.name=value ...``."""
    words = [f"{method}={result}"]
    if comment:
        words.append(f"({comment})")
    if reason:
        words.append(f"reason={_quoted(reason)}")
    words.extend(f"{name}={_value(value)}" for name, value in properties if value)
    return " ".join(words)


def _value(text: str) -> str:
    """``text`` as an RFC 8601 value: a token as it is, anything else as a quoted string."""
    return text if _TOKEN.fullmatch(text) else _quoted(text)


def _quoted(text: str) -> str:
    """A quoted string of ``text`` (one line, control characters dropped, \\ and " escaped)."""
    clean = " ".join(_UNSAFE.sub(" ", text).split())
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'
