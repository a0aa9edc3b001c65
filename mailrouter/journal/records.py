"""The journal's value objects, its statuses, and what it derives from a message's bytes.

Everything here is SQL-free: the backends store and return these values, ``base.Journal`` maps
rows to them. Texts read from the client are made printable where they are only shown (headers,
peer, HELO, replies); the envelope addresses are kept exactly, for they are compared.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import decode_header, make_header
from functools import cached_property
from typing import Any, Literal, get_args

from mailrouter.message import delivery_id_of_digest, header_section, normalize_address

RecipientStatus = Literal["delivered", "queued", "refused", "deferred", "pending"]
MessageStatus = Literal[
    "received", "pending", "deferred", "delivered", "queued", "refused", "partial"
]
RECIPIENT_STATUSES: tuple[RecipientStatus, ...] = get_args(RecipientStatus)
MESSAGE_STATUSES: tuple[MessageStatus, ...] = get_args(MessageStatus)
DONE: frozenset[RecipientStatus] = frozenset({"delivered", "queued"})
NO_OUTCOME: Literal["received"] = (
    "received"  # the status shown for a recipient nothing was recorded for yet
)

MAIN_HEADERS = ("Subject", "From", "To", "Date")
_HEADER_SCAN = 64 * 1024  # the headers are looked for in this much of the message
_VALUE_LIMIT = 998


def message_status(statuses: Iterable[RecipientStatus | None]) -> MessageStatus:
    """A message's status from its recipients' (None: no outcome yet); see the package doc."""
    present = set(statuses)
    if "deferred" in present:
        return "deferred"
    if "pending" in present:
        return "pending"
    if not present or None in present:
        return "received"
    if present == {"delivered"}:
        return "delivered"
    if present == {"refused"}:
        return "refused"
    return "partial" if "refused" in present else "queued"


def printable(text: str) -> str:
    """``text`` fit to show: raw UTF-8 decoded, other bytes as U+FFFD, controls as spaces."""
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # lone surrogates that surrogateescape did not make
        text = text.encode("utf-8", "replace").decode("utf-8")
    return "".join(char if char.isprintable() else " " for char in text)


def _header_value(raw: str) -> str:
    """A header's raw value (raw UTF-8 bytes, RFC 2047 words) decoded, unfolded, bounded."""
    text = raw if raw.isprintable() else printable(raw)
    if "=?" in text:
        with contextlib.suppress(Exception):  # a malformed encoded word: show it as it came
            text = printable(str(make_header(decode_header(text))))
    return " ".join(text.split())[:_VALUE_LIMIT]


_FIELD = re.compile(
    rb"^(subject|from|to|date|message-id)[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.I | re.M
)
_NAMES = {name.lower().encode(): name for name in (*MAIN_HEADERS, "Message-ID")}


def main_headers(data: bytes) -> tuple[str, dict[str, str]]:
    """The Message-ID and the main headers (Subject, From, To, Date) present in ``data``: the
    first of each in the header section (a scan, not a parse: this runs for every message)."""
    head = header_section(data[:_HEADER_SCAN])
    found: dict[str, str] = {}
    for match in _FIELD.finditer(head):
        name = _NAMES[match.group(1).lower()]
        if name not in found:
            found[name] = _header_value(match.group(2).decode("utf-8", "surrogateescape"))
    message_id = found.pop("Message-ID", "")
    return message_id, {name: found[name] for name in MAIN_HEADERS if name in found}


def iso(when: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (``...Z``), for JSON."""
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass(frozen=True)
class Arrival:
    """One reception of a message at DATA: what ``Journal.begin`` looks up, and what the
    first of ``Journal.record`` or ``Journal.finish`` writes the entry from.

    ``data`` is the message as the client sent it (before any header this server adds), so
    that a retry hashes the same; ``peer`` is the client's address as text.
    """

    sender: str
    recipients: Sequence[str]
    data: bytes
    peer: str = ""
    helo: str = ""
    received_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipients", tuple(self.recipients))

    @cached_property
    def sha256(self) -> str:
        """The SHA-256 of the bytes, in hex."""
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def delivery_id(self) -> str:
        """``delivery_id(sender, data)``, from the digest above: the bytes are hashed once."""
        return delivery_id_of_digest(self.sender, bytes.fromhex(self.sha256))

    @cached_property
    def header_summary(self) -> tuple[str, dict[str, str]]:
        """``main_headers(data)``, computed once: the Message-ID and the main headers."""
        return main_headers(self.data)

    @cached_property
    def named(self) -> dict[str, tuple[int, str]]:
        """Each recipient, normalised, to its position and its spelling as first given, in RCPT
        order (repeats dropped)."""
        named: dict[str, tuple[int, str]] = {}
        for rcpt in self.recipients:
            named.setdefault(normalize_address(rcpt), (len(named), rcpt))
        return named


@dataclass(frozen=True)
class Outcome:
    """What became of one recipient: ``Journal.record`` stores it.

    ``handlers`` ("module.function") for ``delivered``; ``queue_key`` and ``reason`` for
    ``queued``; ``reply`` the SMTP reply given for this recipient.
    """

    status: RecipientStatus
    reply: str = ""
    handlers: tuple[str, ...] = ()
    queue_key: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in RECIPIENT_STATUSES:
            known = ", ".join(RECIPIENT_STATUSES)
            raise ValueError(f"unknown recipient status {self.status!r} (known: {known})")
        object.__setattr__(self, "handlers", tuple(self.handlers))

    @property
    def done(self) -> bool:
        """Delivered or queued: a retry must not run this recipient's handlers again."""
        return self.status in DONE


RECORD = "record an outcome"  # a Write's ``what``: one recipient's outcome (``Journal.record``)
FINISH = "record a reply"  # the reply, with the outcomes not recorded yet (``Journal.finish``)


@dataclass(frozen=True)
class Write:
    """A ``Journal.record`` or ``Journal.finish`` to make (``Journal.write_all`` makes several
    together): outcomes of reception ``number`` of ``arrival``, with the reply if any."""

    what: str  # for error messages
    arrival: Arrival
    number: int
    outcomes: Sequence[tuple[str, Outcome]]
    reply: str = ""
    duration: float = 0.0
    at: float | None = None  # when (None: now)
    first: bool = True  # the reception's first write: it creates or updates the entry


@dataclass(frozen=True)
class RecipientRecord:
    """One recipient of an entry, as first given, with its last outcome and when it was recorded."""

    recipient: str
    outcome: Outcome | None = None
    at: float | None = None

    @property
    def status(self) -> RecipientStatus | Literal["received"]:
        """The outcome's status, or ``received`` while none is recorded."""
        return NO_OUTCOME if self.outcome is None else self.outcome.status

    @property
    def done(self) -> bool:
        """Whether its handlers must not run again (delivered or queued)."""
        return self.outcome is not None and self.outcome.done

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready fields."""
        outcome = self.outcome
        return {
            "recipient": self.recipient,
            "status": self.status,
            "handlers": list(outcome.handlers) if outcome else [],
            "queue_key": outcome.queue_key if outcome else "",
            "reason": outcome.reason if outcome else "",
            "reply": outcome.reply if outcome else "",
            "at": iso(self.at),
        }


@dataclass(frozen=True)
class Attempt:
    """What ``Journal.begin`` returns: the id, this reception's number (the attempts recorded
    so far + 1), and the done recipients.

    ``done`` maps each normalised address whose handlers finished (delivered or queued) to its
    record: those must not be run again. ``pending`` maps those already spooled (spool mode) and
    not routed yet: the spool will route them, so a retry must not spool them again.
    """

    delivery_id: str
    number: int
    done: Mapping[str, RecipientRecord] = field(default_factory=dict)
    pending: Mapping[str, RecipientRecord] = field(default_factory=dict)

    @property
    def retry(self) -> bool:
        """Whether an earlier reception of this message was recorded."""
        return self.number > 1

    def is_done(self, recipient: str) -> bool:
        """Whether ``recipient`` (any spelling) was already delivered or queued."""
        return normalize_address(recipient) in self.done


@dataclass(frozen=True)
class Entry:
    """The journal's record of one message (one delivery id) over all its receptions."""

    id: str
    message_id: str
    sender: str
    sha256: str
    size: int
    peer: str
    helo: str
    headers: Mapping[str, str]
    received_at: float
    last_attempt_at: float
    attempts: int
    reply: str
    duration: float | None
    finished_at: float | None
    outcomes: tuple[RecipientRecord, ...]

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every recipient over all attempts, in RCPT order."""
        return tuple(record.recipient for record in self.outcomes)

    @property
    def status(self) -> MessageStatus:
        """The message's status, derived from its recipients' (see the package doc)."""
        return message_status(r.outcome.status if r.outcome else None for r in self.outcomes)

    @property
    def subject(self) -> str:
        """The Subject header, or ""."""
        return self.headers.get("Subject", "")

    def to_json(self) -> dict[str, Any]:
        """The entry as one JSON-ready object; times in ISO 8601 UTC."""
        return {
            "id": self.id,
            "message_id": self.message_id,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "received_at": iso(self.received_at),
            "last_attempt_at": iso(self.last_attempt_at),
            "finished_at": iso(self.finished_at),
            "attempts": self.attempts,
            "status": self.status,
            "size": self.size,
            "sha256": self.sha256,
            "peer": self.peer,
            "helo": self.helo,
            "reply": self.reply,
            "duration": self.duration,
            "headers": dict(self.headers),
            "outcomes": [record.to_json() for record in self.outcomes],
        }
