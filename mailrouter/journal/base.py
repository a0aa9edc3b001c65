"""The journal over any SQL database: its tables and its statements.

Both backends speak the same SQL (upserts with ``ON CONFLICT``, ``RETURNING``); a backend only
supplies a ``Database`` (``journal.backend``): a connection to run work in one transaction on,
its placeholder and column types (a ``Dialect``), its errors as ``JournalError``. Tables,
``<table>`` defaulting to ``mailrouter_journal``::

    <table>            (id PRIMARY KEY, message_id, sender, sender_key, sha256, size, peer, helo,
                        headers JSON, received_at, last_attempt_at, attempts, reply, duration,
                        finished_at)                         -- times in epoch seconds
    <table>_recipients (journal_id, rcpt (normalised), address (as first given), attempt,
                        position, status ('' until an outcome), handlers JSON, queue_key, reason,
                        reply, at, PRIMARY KEY (journal_id, rcpt))

A message's status is derived from its recipients' statuses, in SQL too, as the set of those
present (a bit mask: ``entries(status=)`` asks for the masks ``message_status`` maps to it).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from mailrouter.errors import MailRouterError
from mailrouter.journal.backend import DEFAULT_TABLE, NAME, Cursor, Database, JournalError, quoted
from mailrouter.journal.records import (
    DONE,
    MESSAGE_STATUSES,
    RECIPIENT_STATUSES,
    Arrival,
    Attempt,
    Entry,
    MessageStatus,
    Outcome,
    RecipientRecord,
    RecipientStatus,
    main_headers,
    message_status,
)
from mailrouter.message import normalize_address
from mailrouter.state.shared import from_text, to_text

T = TypeVar("T")

PURGE_BATCH = 500  # entries deleted per transaction, so a purge never holds writers up long
_CHUNK = 500  # ids per "IN (...)" list
_UNSEEN = 1 << 30  # attempt and position of a recipient recorded without begin() naming it
_HEX = re.compile(r"[0-9a-f]{1,64}")
# The bit of each recipient status (None: no outcome yet) in a message's status mask.
_BITS: dict[RecipientStatus | None, int] = {
    None: 1,
    **{status: 2 << i for i, status in enumerate(RECIPIENT_STATUSES)},
}
_ENTRY = (
    "id, message_id, sender, sha256, size, peer, helo, headers, received_at, last_attempt_at,"
    " attempts, reply, duration, finished_at"
)
_RECIPIENT = "rcpt, address, status, handlers, queue_key, reason, reply, at"


class AmbiguousIdError(MailRouterError, LookupError):
    """An id prefix given to ``Journal.get`` matches more than one entry."""


class Journal:
    """Entries of received messages and the per-recipient done marks; thread-safe, synchronous.

    Tables are created on first use. Every call is one short transaction on the database, so
    several processes (and, with PostgreSQL, hosts) share one journal.
    """

    def __init__(self, db: Database, table: str = DEFAULT_TABLE) -> None:
        if not NAME.fullmatch(table):
            raise JournalError(f"journal {db.shown}: {table!r} is not a plain [schema.]table name")
        self.table = table
        self._db = db
        self._ready = False
        self._guard = threading.Lock()
        d = db.dialect
        j, r, base = quoted(table), quoted(f"{table}_recipients"), table.rpartition(".")[2]
        self._j, self._r, self._param = j, r, d.placeholder
        self._ddl = [
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
        self._sql = {
            name: self._q(text)
            for name, text in {
                "arrive": f"INSERT INTO {j} AS j (id, message_id, sender, sender_key, sha256, size,"
                " peer, helo, headers, received_at, last_attempt_at, attempts, reply)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, '') ON CONFLICT (id) DO UPDATE SET"
                " attempts = j.attempts + 1, last_attempt_at = excluded.last_attempt_at,"
                " peer = excluded.peer, helo = excluded.helo, reply = '', duration = NULL,"
                " finished_at = NULL RETURNING attempts",
                "name": f"INSERT INTO {r} (journal_id, rcpt, address, attempt, position)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (journal_id, rcpt) DO NOTHING",
                "done": f"SELECT {_RECIPIENT} FROM {r} WHERE journal_id = ?"
                f" AND status IN ({', '.join(repr(s) for s in sorted(DONE | {'pending'}))})",
                "record": f"INSERT INTO {r} (journal_id, rcpt, address, attempt, position, status,"
                " handlers, queue_key, reason, reply, at) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
                f" WHERE EXISTS (SELECT 1 FROM {j} WHERE id = ?)"
                " ON CONFLICT (journal_id, rcpt) DO UPDATE SET status = excluded.status,"
                " handlers = excluded.handlers, queue_key = excluded.queue_key,"
                " reason = excluded.reason, reply = excluded.reply, at = excluded.at",
                "finish": f"UPDATE {j} SET reply = ?, duration = ?, finished_at = ? WHERE id = ?",
                "get": f"SELECT {_ENTRY} FROM {j} WHERE id >= ? AND id < ? ORDER BY id LIMIT 2",
                "idle": f"SELECT id FROM {j} j WHERE last_attempt_at < ?"
                " AND COALESCE(finished_at, 0) < ? AND NOT EXISTS (SELECT 1 FROM"
                f" {r} r WHERE r.journal_id = j.id AND r.at >= ?) LIMIT {PURGE_BATCH}",
            }.items()
        }

    def _q(self, text: str) -> str:
        return text.replace("?", self._param)

    def __repr__(self) -> str:
        return f"<Journal {self._db.shown}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(
        self, what: str, work: Callable[[Cursor], T], *, write: bool, atomic: bool = True
    ) -> T:
        if not self._ready:
            with self._guard:
                if not self._ready:
                    self._create(what)
                    self._ready = True
        return self._db.run(what, work, write=write, atomic=atomic)

    def _create(self, what: str) -> None:
        """Create the tables unless they exist: looked up first, as creating takes locks."""
        name = f"{self.table}_recipients"
        exists = self._db.dialect.exists.format(name=name.rpartition(".")[2], quoted=quoted(name))

        def present(cur: Cursor) -> bool:
            cur.execute(exists, ())
            return bool(cur.fetchall())

        def create(cur: Cursor) -> None:
            lock = self._db.dialect.ddl_lock
            if lock:
                cur.execute(self._q(lock), (self.table,))
            for statement in self._ddl:
                cur.execute(statement, ())

        if not self._db.run(what, present, write=False, atomic=False):
            self._db.run(what, create, write=True, atomic=True)

    def begin(self, arrival: Arrival) -> Attempt:
        """Record a reception (attempts += 1); its number and the recipients already done."""
        ident = arrival.delivery_id
        message_id, headers = main_headers(arrival.data)
        sender = to_text(arrival.sender)
        entry = (
            ident, to_text(message_id), sender, to_text(normalize_address(arrival.sender)),
            arrival.sha256, len(arrival.data), to_text(arrival.peer), to_text(arrival.helo),
            json.dumps(headers, ensure_ascii=False), arrival.received_at, arrival.received_at,
        )  # fmt: skip
        named: dict[str, str] = {}  # normalised -> as first given, in RCPT order
        for rcpt in arrival.recipients:
            named.setdefault(normalize_address(rcpt), rcpt)

        def begin(cur: Cursor) -> Attempt:
            cur.execute(self._sql["arrive"], entry)
            number = int(cur.fetchall()[0][0])
            rows = [
                (ident, to_text(key), to_text(address), number, position)
                for position, (key, address) in enumerate(named.items())
            ]
            if rows:
                cur.executemany(self._sql["name"], rows)
            if number == 1:  # never seen before: nothing can be done yet
                return Attempt(ident, number)
            cur.execute(self._sql["done"], (ident,))
            found = {normalize_address(r.recipient): r for r in map(_recipient, cur.fetchall())}
            done = {key: record for key, record in found.items() if record.done}
            pending = {key: record for key, record in found.items() if not record.done}
            return Attempt(ident, number, done, pending)

        return self._run("record a reception", begin, write=True)

    def record(
        self, delivery_id: str, recipient: str, outcome: Outcome, at: float | None = None
    ) -> None:
        """Store ``recipient``'s outcome: one small durable write (it replaces an earlier one)."""
        at = time.time() if at is None else at
        row = (
            delivery_id, to_text(normalize_address(recipient)), to_text(recipient), _UNSEEN,
            _UNSEEN, outcome.status, json.dumps(list(outcome.handlers), ensure_ascii=False),
            to_text(outcome.queue_key), to_text(outcome.reason), to_text(outcome.reply), at,
            delivery_id,
        )  # fmt: skip

        def record(cur: Cursor) -> int:
            cur.execute(self._sql["record"], row)
            return cur.rowcount

        if not self._run("record an outcome", record, write=True, atomic=False):
            raise JournalError(f"journal {self._db.shown}: no entry {delivery_id!r} to record in")

    def finish(self, delivery_id: str, reply: str, duration: float) -> None:
        """Store the reply the last reception got and how long it took (seconds)."""
        row = (to_text(reply), duration, time.time(), delivery_id)

        def finish(cur: Cursor) -> int:
            cur.execute(self._sql["finish"], row)
            return cur.rowcount

        if not self._run("record a reply", finish, write=True, atomic=False):
            raise JournalError(f"journal {self._db.shown}: no entry {delivery_id!r} to finish")

    def get(self, id_or_prefix: str) -> Entry | None:
        """The entry with this id or unique id prefix; None if none (AmbiguousIdError: several)."""
        prefix = id_or_prefix.strip().lower()
        if not _HEX.fullmatch(prefix):
            return None

        def get(cur: Cursor) -> list[Entry]:
            cur.execute(self._sql["get"], (prefix, prefix + "g"))  # "g" sorts after hex digits
            return self._entries(cur, cur.fetchall())

        found = self._run("read an entry", get, write=False)
        if len(found) > 1:
            raise AmbiguousIdError(f"{id_or_prefix!r} is the start of several journal ids")
        return found[0] if found else None

    def entries(
        self,
        status: MessageStatus | None = None,
        sender: str | None = None,
        recipient: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = 50,
    ) -> list[Entry]:
        """Entries newest first (by first reception); filters combine, addresses normalised.

        ``since`` and ``until`` bound the first reception's time; ``limit=None``: all.
        """
        where: list[str] = []
        params: list[str | float] = []
        if sender is not None:
            where.append("j.sender_key = ?")
            params.append(to_text(normalize_address(sender)))
        if recipient is not None:
            where.append(
                f"EXISTS (SELECT 1 FROM {self._r} r WHERE r.journal_id = j.id AND r.rcpt = ?)"
            )
            params.append(to_text(normalize_address(recipient)))
        if since is not None:
            where.append("j.received_at >= ?")
            params.append(since)
        if until is not None:
            where.append("j.received_at < ?")
            params.append(until)
        if status is not None:
            where.append(f"{self._mask()} IN ({', '.join(map(str, _masks(status)))})")
        text = f"SELECT {_ENTRY} FROM {self._j} j"
        text += f" WHERE {' AND '.join(where)}" if where else ""
        text += " ORDER BY j.received_at DESC, j.id"
        if limit is not None:
            text += f" LIMIT {max(int(limit), 0)}"

        def entries(cur: Cursor) -> list[Entry]:
            cur.execute(self._q(text), params)
            return self._entries(cur, cur.fetchall())

        return self._run("list entries", entries, write=False)

    def _mask(self) -> str:
        """SQL for the set of an entry's recipient statuses, as a bit mask."""
        cases = " ".join(f"WHEN '{status or ''}' THEN {bit}" for status, bit in _BITS.items())
        return (
            f"(SELECT COALESCE(SUM(DISTINCT CASE r.status {cases} END), 0)"
            f" FROM {self._r} r WHERE r.journal_id = j.id)"
        )

    def _entries(self, cur: Cursor, rows: list[Any]) -> list[Entry]:
        """Entries of these journal rows, with their recipients read on ``cur``."""
        recipients: dict[str, list[RecipientRecord]] = {row[0]: [] for row in rows}
        ids = list(recipients)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            cur.execute(
                self._q(
                    f"SELECT journal_id, {_RECIPIENT} FROM {self._r} WHERE journal_id IN"
                    f" ({', '.join('?' * len(chunk))}) ORDER BY journal_id, attempt, position"
                ),
                chunk,
            )
            for row in cur.fetchall():
                recipients[row[0]].append(_recipient(row[1:]))
        return [_entry(row, tuple(recipients[row[0]])) for row in rows]

    def purge(self, before: float) -> int:
        """Delete the entries whose last activity is older than ``before``; how many."""

        def purge(cur: Cursor) -> int:
            cur.execute(self._sql["idle"], (before, before, before))
            ids = [row[0] for row in cur.fetchall()]
            if ids:
                marks = ", ".join("?" * len(ids))
                cur.execute(self._q(f"DELETE FROM {self._r} WHERE journal_id IN ({marks})"), ids)
                cur.execute(self._q(f"DELETE FROM {self._j} WHERE id IN ({marks})"), ids)
            return len(ids)

        total = 0
        while (count := self._run("purge entries", purge, write=True)) == PURGE_BATCH:
            total += count
        return total + count

    def close(self) -> None:
        """Close the database connections; idempotent."""
        self._db.close()


def _masks(status: MessageStatus) -> list[int]:
    """Every status mask that ``message_status`` maps to ``status``."""
    if status not in MESSAGE_STATUSES:
        raise ValueError(
            f"unknown message status {status!r} (known: {', '.join(MESSAGE_STATUSES)})"
        )
    return [
        mask
        for mask in range(1 << len(_BITS))
        if message_status(name for name, bit in _BITS.items() if mask & bit) == status
    ]


def _recipient(row: Sequence[Any]) -> RecipientRecord:
    _, address, status, handlers, queue_key, reason, reply, at = row
    outcome = None
    if status:
        outcome = Outcome(
            status, from_text(reply), tuple(json.loads(handlers)), from_text(queue_key),
            from_text(reason),
        )  # fmt: skip
    return RecipientRecord(from_text(address), outcome, at)


def _entry(row: Sequence[Any], outcomes: tuple[RecipientRecord, ...]) -> Entry:
    ident, message_id, sender, sha256, size, peer, helo, headers, *times = row
    received_at, last_attempt_at, attempts, reply, duration, finished_at = times
    return Entry(
        ident, from_text(message_id), from_text(sender), sha256, int(size), from_text(peer),
        from_text(helo), json.loads(headers), received_at, last_attempt_at, int(attempts),
        from_text(reply), duration, finished_at, outcomes,
    )  # fmt: skip
