"""Results an MTA in front already found: its Authentication-Results headers (RFC 8601).

When Postfix's milters (OpenDKIM, OpenDMARC, rspamd) have verified a message, their
``Authentication-Results`` header says so at the top of the header section, above the
``Received:`` header of the hop they verified. Only those are believed: the headers read are the
ones above the first ``Received:`` header, and the first one with an authserv-id that is not
trusted ends them too. Anything further down came from outside, where anyone may have written
a header naming a trusted authserv-id (RFC 8601 5). Parsing is authres's.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Any, cast

import authres

from mailrouter.inbound.auth.results import (
    RESULT_WORDS,
    ARCResult,
    AuthResults,
    DKIMResult,
    DMARCResult,
    Policy,
    ResultWord,
    SPFResult,
)

_FOLD = re.compile(r"\r?\n[ \t]")
_DMARC_COMMENT = re.compile(r"\bdmarc\s*=\s*\w+\s*\(([^)]*)\)", re.IGNORECASE)
_POLICY_WORD = re.compile(r"\b(p|policy|dis|disposition)\s*=\s*(none|quarantine|reject)\b", re.I)
_POLICIES = ("none", "quarantine", "reject")


def trusted_results(
    headers: Iterable[tuple[str, str]], trusted: Collection[str]
) -> AuthResults | None:
    """The results the trusted authserv-ids report in ``headers`` (name, value pairs, top
    first), or None when no trusted header is there to believe."""
    found: list[tuple[Any, str]] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "received":
            break
        if lowered != "authentication-results":
            continue
        text = _FOLD.sub(" ", value).strip()
        try:
            header = authres.AuthenticationResultsHeader.parse_value(text)
        except Exception:  # authres's syntax errors: nothing below can be believed either
            break
        if header.authserv_id not in trusted:
            break
        found.append((header, text))
    if not found:
        return None
    return _results(found)


def _results(found: list[tuple[Any, str]]) -> AuthResults:
    """The first report of each method, the topmost header first."""
    first: dict[str, Any] = {}
    dkim: list[DKIMResult] = []
    dmarc_text = ""
    for header, text in found:
        for result in header.results:
            method = str(getattr(result, "method", "")).lower()
            if method == "dkim":
                dkim.append(_dkim(result))
            elif method and method not in first:
                first[method] = result
                if method == "dmarc":
                    dmarc_text = text
    authserv_id = str(found[0][0].authserv_id)
    return AuthResults(
        spf=_spf(first.get("spf"), authserv_id),
        dkim=tuple(dkim),
        dmarc=_dmarc(first.get("dmarc"), dmarc_text, authserv_id),
        arc=ARCResult(*_word(first.get("arc"), authserv_id)),
        authserv_id=authserv_id,
    )


def _word(result: Any, authserv_id: str) -> tuple[ResultWord, str]:
    """The result word and reason of a reported method; ``none`` when it is not reported."""
    if result is None:
        return "none", f"not reported by {authserv_id}"
    word = str(result.result).lower()
    reason = str(result.reason or f"reported by {authserv_id}")
    return (word if word in RESULT_WORDS else "permerror"), reason


def _property(result: Any, ptype: str, name: str) -> str:
    for prop in getattr(result, "properties", ()):
        if str(prop.type).lower() == ptype and str(prop.name).lower() == name:
            return str(prop.value or "")
    return ""


def _spf(result: Any, authserv_id: str) -> SPFResult:
    word, reason = _word(result, authserv_id)
    identity = _property(result, "smtp", "mailfrom")
    scope: Any = "mailfrom"
    if not identity and _property(result, "smtp", "helo"):
        identity, scope = _property(result, "smtp", "helo"), "helo"
    domain = identity.rpartition("@")[2].lower()
    return SPFResult(word, reason, domain, identity, scope)


def _dkim(result: Any) -> DKIMResult:
    word, reason = _word(result, "")
    domain = _property(result, "header", "d") or _property(result, "header", "i").partition("@")[2]
    return DKIMResult(word, reason, domain.lower(), _property(result, "header", "s"))


def _dmarc(result: Any, text: str, authserv_id: str) -> DMARCResult:
    """DMARC as reported, its policy and disposition read from the comment OpenDMARC writes,
    ``(p=reject dis=none)``, or from ``policy.dmarc``."""
    word, reason = _word(result, authserv_id)
    domain = _property(result, "header", "from").lower()
    said: dict[str, str] = {}
    comment = _DMARC_COMMENT.search(text)
    for key, value in _POLICY_WORD.findall(comment.group(1) if comment else ""):
        said.setdefault(key.lower()[:3], value.lower())
    policy = said.get("p") or said.get("pol") or _property(result, "policy", "dmarc").lower()
    published = cast(Policy, policy) if policy in _POLICIES else None
    default = published if word == "fail" and published else "none"
    disposition = cast(Policy, said.get("dis", default))
    return DMARCResult(word, reason, domain, published, disposition)
