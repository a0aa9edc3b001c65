"""A bounce as handlers see it, and how a delivery status notification (RFC 3464) becomes one.

A DSN is a ``multipart/report; report-type=delivery-status`` (RFC 6533's
``global-delivery-status`` for internationalised addresses too): a human-readable part, a
``message/delivery-status`` part of field blocks (one for the message: ``Reporting-MTA``; one
per recipient: ``Final-Recipient``, ``Action``, ``Status``, ``Diagnostic-Code``...), and the
original message or its headers. Only recipients whose ``Action`` is ``failed`` or
``delayed`` make it a bounce: a report of successful delivery is none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import Parser
from typing import Literal

from mailrouter.bounce.status import Kind, Status

REPORT_TYPES = frozenset({"delivery-status", "global-delivery-status"})
_STATUS_PARTS = frozenset({"message/delivery-status", "message/global-delivery-status"})
_ORIGINAL_PARTS = frozenset({"message/rfc822", "message/global"})
_HEADER_PARTS = frozenset({"text/rfc822-headers", "message/global-headers"})
FAILED, DELAYED = "failed", "delayed"
_XTEXT = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")  # RFC 6533's escapes in utf-8 addresses


@dataclass(frozen=True)
class BouncedRecipient:
    """One recipient a bounce reports: ``address`` (as originally addressed, case-folded),
    ``action`` (``failed`` or ``delayed``), the status code, the remote server's diagnostic."""

    address: str
    action: str
    status: Status | None = None
    diagnostic: str | None = None  # the remote reply: "550 5.1.1 <a@b>: User unknown"
    remote_mta: str | None = None
    final_recipient: str | None = None
    original_recipient: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)  # the block, by lower-case name

    @property
    def kind(self) -> Kind:
        """``hard`` or ``soft``: by the status code's class, else by the action."""
        by_status = self.status.kind if self.status is not None else None
        return by_status or ("soft" if self.action == DELAYED else "hard")


@dataclass(frozen=True)
class Bounce:
    """A message telling that mail could not be delivered: to whom, why, what was sent.

    ``detector`` is ``dsn`` for a delivery status notification, ``heuristic`` for another
    format recognised by flufl.bounce (which knows the failed addresses, and the status code
    only when the text gives one). ``original`` is the returned message, or only its headers.
    """

    recipients: tuple[BouncedRecipient, ...]
    detector: Literal["dsn", "heuristic"] = "dsn"
    reporting_mta: str | None = None
    original: Message | None = None
    notification: Message | None = None  # the human-readable part of a DSN
    fields: Mapping[str, str] = field(default_factory=dict)  # a DSN's per-message fields

    @property
    def addresses(self) -> tuple[str, ...]:
        """The bounced addresses, in the report's order."""
        return tuple(recipient.address for recipient in self.recipients)

    @property
    def first(self) -> BouncedRecipient:
        """The recipient the summary properties describe: the first hard one, else the first."""
        return next((r for r in self.recipients if r.kind == "hard"), self.recipients[0])

    @property
    def kind(self) -> Kind:
        """``hard`` when any recipient failed for good, else ``soft``."""
        return self.first.kind

    @property
    def status(self) -> Status | None:
        """The status code of ``first``."""
        return self.first.status

    @property
    def action(self) -> str:
        """The action of ``first``: ``failed`` or ``delayed``."""
        return self.first.action

    @property
    def diagnostic(self) -> str | None:
        """The diagnostic text of ``first``."""
        return self.first.diagnostic

    def is_hard(self) -> bool:
        """A permanent failure: the address does not take mail."""
        return self.kind == "hard"

    def is_soft(self) -> bool:
        """A transient failure: worth trying again later."""
        return self.kind == "soft"


def is_delivery_report(message: Message) -> bool:
    """Whether ``message`` is a delivery status notification (whatever its actions)."""
    report_type = str(message.get_param("report-type", "", header="content-type")).lower()
    return message.get_content_type() == "multipart/report" and report_type in REPORT_TYPES


def from_report(message: Message) -> Bounce | None:
    """The bounce a DSN reports; None when it reports no failed or delayed recipient."""
    parts = [part for part in _payload(message) if isinstance(part, Message)]
    status_part = next((p for p in parts if p.get_content_type() in _STATUS_PARTS), None)
    if status_part is None:
        return None
    blocks = _blocks(status_part)
    if len(blocks) < 2:
        return None
    per_message = blocks[0]
    recipients = tuple(r for block in blocks[1:] if (r := _recipient(block)) is not None)
    if not recipients:
        return None
    notification = parts[0] if parts[0] is not status_part else None
    return Bounce(
        recipients,
        "dsn",
        _typed(per_message.get("reporting-mta")),
        returned_message(parts),
        notification,
        per_message,
    )


def returned_message(parts: list[Message]) -> Message | None:
    """The original message among ``parts`` (``message/rfc822``), or its headers
    (``text/rfc822-headers``) as a message without a body; None if neither is there."""
    for part in parts:
        kind = part.get_content_type()
        if kind not in _ORIGINAL_PARTS | _HEADER_PARTS:
            continue
        inner = _payload(part)
        if inner and isinstance(inner[0], Message):  # parsed already, as message/* parts are
            return inner[0]
        text = _text_of(part)
        return Parser(policy=policy.default).parsestr(text, headersonly=kind in _HEADER_PARTS)
    return None


def _payload(message: Message) -> list[Message | str]:
    """The subparts of a multipart or message/* part; [] for a leaf."""
    payload = message.get_payload() if message.is_multipart() else []
    return list(payload) if isinstance(payload, list) else []


def _blocks(part: Message) -> list[dict[str, str]]:
    """The field blocks of a delivery-status part, each ``{lower-case name: unfolded value}``.

    The email package parses ``message/delivery-status`` into one message per block, but a
    ``message/global-delivery-status`` (UTF-8) into one message: the first block its headers,
    the others its body, which is split here.
    """
    found = [block for block in _payload(part) if isinstance(block, Message)]
    if part.get_content_type() != "message/delivery-status" and len(found) == 1:
        found = [found[0], *_parse_blocks(_text_of(found[0]))]
    elif not found:
        found = _parse_blocks(_text_of(part))
    blocks = []
    for block in found:
        fields: dict[str, str] = {}
        for name, value in block.raw_items():  # raw: 8-bit UTF-8 kept, not replaced
            fields.setdefault(name.lower(), " ".join(_utf8(str(value)).split()))
        if fields:
            blocks.append(fields)
    return blocks


def _parse_blocks(text: str) -> list[Message]:
    """Field blocks separated by empty lines, each parsed as a header section."""
    parser = Parser(policy=policy.default)
    chunks = text.replace("\r\n", "\n").split("\n\n")
    return [parser.parsestr(chunk.strip("\n") + "\n") for chunk in chunks if chunk.strip()]


def _utf8(text: str) -> str:
    """``text`` as parsed from bytes (8-bit bytes as surrogates) with its UTF-8 decoded."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _text_of(part: Message) -> str:
    """The decoded text of a leaf part (as UTF-8, whatever it says)."""
    raw = part.get_payload(decode=True)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""


def _recipient(fields: Mapping[str, str]) -> BouncedRecipient | None:
    """The recipient a per-recipient block reports, if it failed or is delayed."""
    action = fields.get("action", "").split(" ")[0].lower()
    if action.startswith(("fail", "error")):  # "error": OpenSMTPD's, not RFC 3464's
        action = FAILED
    elif action != DELAYED:
        return None  # delivered, relayed, expanded
    final = _address(fields.get("final-recipient"))
    original = _address(fields.get("original-recipient"))
    address = original or final
    if address is None:
        return None
    return BouncedRecipient(
        address,
        action,
        Status.find(fields.get("status")),
        _typed(fields.get("diagnostic-code")),
        _typed(fields.get("remote-mta")),
        final,
        original,
        dict(fields),
    )


def _typed(value: str | None) -> str | None:
    """The value of a typed field (``dns; mx.example.org`` -> ``mx.example.org``)."""
    if not value:
        return None
    kind, semicolon, rest = value.partition(";")
    return (rest if semicolon else kind).strip() or None


def _address(value: str | None) -> str | None:
    """The bare, case-folded address of an address field (``rfc822; <Joe@x.org>``)."""
    bare = _XTEXT.sub(lambda found: chr(int(found[1], 16)), (_typed(value) or "").strip("<> "))
    return bare.casefold() if "@" in bare else None
