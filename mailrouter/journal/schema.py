"""The journal's tables and statements in any SQL database, and its rows: values to rows, back.

Both backends speak the same SQL (upserts with ``ON CONFLICT``); a ``Dialect`` gives only the
placeholder, column types and DDL details. Tables, ``<table>`` defaulting to
``mailrouter_journal``::

    <table>            (id PRIMARY KEY, message_id, sender, sender_key, sha256, size, peer, helo,
                        headers JSON, received_at, last_attempt_at, attempts, reply, duration,
                        finished_at)                         -- times in epoch seconds
    <table>_recipients (journal_id, rcpt (normalised), address (as first given), attempt,
                        position, status ('' until an outcome), handlers JSON, queue_key, reason,
                        reply, at, PRIMARY KEY (journal_id, rcpt))

The entry's upsert takes a reception's fields only from a newer reception (``attempts`` is the
highest number written), and its reply from the ``finish`` of that reception. A message's
status is derived from its recipients' statuses, in SQL too, as the set of those present (a bit
mask: ``entries(status=)`` asks for the masks ``message_status`` maps to it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mailrouter.journal.backend import Dialect, quoted
from mailrouter.journal.records import (
    DONE,
    MESSAGE_STATUSES,
    RECIPIENT_STATUSES,
    Arrival,
    Entry,
    MessageStatus,
    Outcome,
    RecipientRecord,
    RecipientStatus,
    message_status,
)
from mailrouter.message import normalize_address
from mailrouter.state.shared import from_text, to_text

UNSEEN = 1 << 30  # attempt and position of a recipient recorded that its arrival did not name
ENTRY = (
    "id, message_id, sender, sha256, size, peer, helo, headers, received_at, last_attempt_at,"
    " attempts, reply, duration, finished_at"
)
RECIPIENT = "rcpt, address, status, handlers, queue_key, reason, reply, at"
_json = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps(..., ensure_ascii=False), once
_DONE = ", ".join(repr(status) for status in sorted(DONE))
_SEEN = ", ".join(repr(status) for status in sorted(DONE | {"pending"}))  # what begin() reads
# The bit of each recipient status (None: no outcome yet) in a message's status mask.
_BITS: dict[RecipientStatus | None, int] = {
    None: 1,
    **{status: 2 << i for i, status in enumerate(RECIPIENT_STATUSES)},
}


def _newer(column: str) -> str:
    """SQL setting an entry's ``column`` from the upsert's row if that is a newer reception."""
    newer = "excluded.attempts > j.attempts"
    return f"{column} = CASE WHEN {newer} THEN excluded.{column} ELSE j.{column} END"


class Schema:
    """The DDL and the statements for the tables named after ``table``, in ``dialect``."""

    def __init__(self, table: str, dialect: Dialect, *, purge_batch: int) -> None:
        d = dialect
        j, r, base = quoted(table), quoted(f"{table}_recipients"), table.rpartition(".")[2]
        self.j, self.r, self._param = j, r, d.placeholder
        self.ddl = [
            f"CREATE TABLE IF NOT EXISTS {j} (id TEXT PRIMARY KEY, message_id TEXT NOT NULL,"
            " sender TEXT NOT NULL, sender_key TEXT NOT NULL, sha256 TEXT NOT NULL,"
            f" size {d.bigint} NOT NULL, peer TEXT NOT NULL, helo TEXT NOT NULL,"
            f" headers TEXT NOT NULL, received_at {d.real} NOT NULL,"
            f" last_attempt_at {d.real} NOT NULL, attempts INTEGER NOT NULL,"
            f" reply TEXT NOT NULL, duration {d.real}, finished_at {d.real})",
            f'CREATE INDEX IF NOT EXISTS "{base}_received" ON {j} (received_at)',
            f'CREATE INDEX IF NOT EXISTS "{base}_last_attempt" ON {j} (last_attempt_at)',
            f"CREATE TABLE IF NOT EXISTS {r} (journal_id TEXT NOT NULL, rcpt TEXT NOT NULL,"
            " address TEXT NOT NULL, attempt INTEGER NOT NULL, position INTEGER NOT NULL,"
            " status TEXT NOT NULL DEFAULT '', handlers TEXT NOT NULL DEFAULT '[]',"
            " queue_key TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',"
            f" reply TEXT NOT NULL DEFAULT '', at {d.real},"
            f" PRIMARY KEY (journal_id, rcpt)){d.keyed_table}",
        ]
        recipient = ", ".join(f"r.{column}" for column in RECIPIENT.split(", "))
        self.sql = {
            name: self.q(text)
            for name, text in {
                # A newer reception (a higher number) replaces the entry's reception fields and
                # reply; the finish of the newest sets the reply; any other write leaves it be.
                "arrive": f"INSERT INTO {j} AS j (id, message_id, sender, sender_key, sha256, size,"
                " peer, helo, headers, received_at, last_attempt_at, attempts, reply, duration,"
                " finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET attempts = excluded.attempts,"
                f" {_newer('last_attempt_at')}, {_newer('peer')}, {_newer('helo')},"
                " reply = excluded.reply, duration = excluded.duration,"
                " finished_at = excluded.finished_at WHERE excluded.attempts > j.attempts"
                " OR (excluded.attempts = j.attempts AND excluded.finished_at IS NOT NULL)",
                # A row without a status only names its recipient; a done mark is only ever
                # replaced by another (a late "pending" must not undo a delivery).
                "mark": f"INSERT INTO {r} AS r (journal_id, rcpt, address, attempt, position,"
                " status, handlers, queue_key, reason, reply, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (journal_id, rcpt)"
                " DO UPDATE SET status = excluded.status, handlers = excluded.handlers,"
                " queue_key = excluded.queue_key, reason = excluded.reason,"
                " reply = excluded.reply, at = excluded.at WHERE excluded.status <> ''"
                f" AND (excluded.status IN ({_DONE}) OR r.status NOT IN ({_DONE}))",
                "reply": f"UPDATE {j} SET reply = ?, duration = ?, finished_at = ?"
                " WHERE id = ? AND attempts = ?",
                "begin": f"SELECT j.attempts, {recipient} FROM {j} j LEFT JOIN {r} r"
                f" ON r.journal_id = j.id AND r.status IN ({_SEEN}) WHERE j.id = ?",
                "get": f"SELECT {ENTRY} FROM {j} WHERE id >= ? AND id < ? ORDER BY id LIMIT 2",
                "idle": f"SELECT id FROM {j} j WHERE last_attempt_at < ?"
                " AND COALESCE(finished_at, 0) < ? AND NOT EXISTS (SELECT 1 FROM"
                f" {r} r WHERE r.journal_id = j.id AND r.at >= ?) LIMIT {purge_batch}",
            }.items()
        }

    def q(self, text: str) -> str:
        """``text`` with the dialect's placeholder for each ``?``."""
        return text.replace("?", self._param)

    def mask(self) -> str:
        """SQL for the set of an entry's (``j``) recipient statuses, as a bit mask."""
        cases = " ".join(f"WHEN '{status or ''}' THEN {bit}" for status, bit in _BITS.items())
        return (
            f"(SELECT COALESCE(SUM(DISTINCT CASE r.status {cases} END), 0)"
            f" FROM {self.r} r WHERE r.journal_id = j.id)"
        )


def status_of_mask(mask: int) -> MessageStatus:
    """The message status of a set of recipient statuses given as ``Schema.mask`` computes it."""
    return message_status(name for name, bit in _BITS.items() if mask & bit)


def masks(status: MessageStatus) -> list[int]:
    """Every status mask that ``message_status`` maps to ``status``."""
    if status not in MESSAGE_STATUSES:
        raise ValueError(
            f"unknown message status {status!r} (known: {', '.join(MESSAGE_STATUSES)})"
        )
    return [mask for mask in range(1 << len(_BITS)) if status_of_mask(mask) == status]


def entry_row(
    arrival: Arrival, number: int, reply: str, duration: float | None, at: float | None
) -> tuple[Any, ...]:
    """The entry's row for reception ``number`` (``at``: when it finished, None if not yet)."""
    message_id, headers = arrival.header_summary
    return (
        arrival.delivery_id, to_text(message_id), to_text(arrival.sender),
        to_text(normalize_address(arrival.sender)), arrival.sha256, len(arrival.data),
        to_text(arrival.peer), to_text(arrival.helo), _json(headers),
        arrival.received_at, arrival.received_at, number, to_text(reply), duration,
        None if not reply else at,
    )  # fmt: skip


def mark_row(
    arrival: Arrival, number: int, recipient: str, outcome: Outcome | None, at: float
) -> tuple[Any, ...]:
    """A recipient's row: its outcome, or only its name (status "") if None."""
    key = normalize_address(recipient)
    position, address = arrival.named.get(key, (UNSEEN, recipient))
    attempt = number if position != UNSEEN else UNSEEN
    if outcome is None:
        return (arrival.delivery_id, to_text(key), to_text(address), attempt, position,
                "", "[]", "", "", "", None)  # fmt: skip
    return (
        arrival.delivery_id, to_text(key), to_text(address), attempt, position,
        outcome.status, _json(list(outcome.handlers)),
        to_text(outcome.queue_key), to_text(outcome.reason), to_text(outcome.reply), at,
    )  # fmt: skip


def recipient_record(row: Sequence[Any]) -> RecipientRecord:
    """The record of a recipient's row (``RECIPIENT``'s columns)."""
    _, address, status, handlers, queue_key, reason, reply, at = row
    outcome = None
    if status:
        outcome = Outcome(
            status, from_text(reply), tuple(json.loads(handlers)), from_text(queue_key),
            from_text(reason),
        )  # fmt: skip
    return RecipientRecord(from_text(address), outcome, at)


def entry_record(row: Sequence[Any], outcomes: tuple[RecipientRecord, ...]) -> Entry:
    """The entry of a journal row (``ENTRY``'s columns) with its recipients' records."""
    ident, message_id, sender, sha256, size, peer, helo, headers, *times = row
    received_at, last_attempt_at, attempts, reply, duration, finished_at = times
    return Entry(
        ident, from_text(message_id), from_text(sender), sha256, int(size), from_text(peer),
        from_text(helo), json.loads(headers), received_at, last_attempt_at, int(attempts),
        from_text(reply), duration, finished_at, outcomes,
    )  # fmt: skip
