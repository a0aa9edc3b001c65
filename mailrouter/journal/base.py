"""The journal over any SQL database: what each call reads and writes (``journal.schema``
holds the tables and the statements).

A backend only supplies a ``Database`` (``journal.backend``): a connection to run work in one
transaction on, its placeholder and column types (a ``Dialect``), its errors as
``JournalError``.

Per message, the common path is one read and one write: ``begin`` is one SELECT (the entry
joined with its done and pending recipients), outside any transaction; ``finish`` is one
transaction of two statements (an upsert of the entry, one ``executemany`` upserting the
recipients' rows), as is a reception's first ``record``. After that first write, a ``record``
is the recipient's row alone, and a ``finish`` an UPDATE of the reply and the outcomes' rows.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from mailrouter.errors import MailRouterError
from mailrouter.journal import schema
from mailrouter.journal.backend import (
    DEFAULT_TABLE,
    NAME,
    Cursor,
    Database,
    JournalError,
    Work,
    quoted,
)
from mailrouter.journal.records import (
    FINISH,
    MESSAGE_STATUSES,
    RECORD,
    Arrival,
    Attempt,
    Entry,
    MessageStatus,
    Outcome,
    RecipientRecord,
    Write,
)
from mailrouter.journal.schema import ENTRY, RECIPIENT, Schema
from mailrouter.message import normalize_address
from mailrouter.state.shared import to_text

T = TypeVar("T")

PURGE_BATCH = 500  # entries deleted per transaction, so a purge never holds writers up long
_CHUNK = 500  # ids per "IN (...)" list
_HEX = re.compile(r"[0-9a-f]{1,64}")


class AmbiguousIdError(MailRouterError, LookupError):
    """An id prefix given to ``Journal.get`` matches more than one entry."""


class Journal:
    """Entries of received messages and the per-recipient done marks; thread-safe, synchronous.

    Tables are created on first use. Every call is one short transaction on the database (or
    one statement, for ``begin``), so several processes (and, with PostgreSQL, hosts) share one
    journal.
    """

    def __init__(self, db: Database, table: str = DEFAULT_TABLE) -> None:
        if not NAME.fullmatch(table):
            raise JournalError(f"journal {db.shown}: {table!r} is not a plain [schema.]table name")
        self.table = table
        self._db = db
        self._ready = False
        self._guard = threading.Lock()
        self._schema = Schema(table, db.dialect, purge_batch=PURGE_BATCH)
        self._sql, self._j, self._r = self._schema.sql, self._schema.j, self._schema.r

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
        self._prepare(what)
        return self._db.run(what, work, write=write, atomic=atomic)

    def _prepare(self, what: str) -> None:
        """Create the tables before the first call."""
        if not self._ready:
            with self._guard:
                if not self._ready:
                    self._create(what)
                    self._ready = True

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
                cur.execute(self._schema.q(lock), (self.table,))
            for statement in self._schema.ddl:
                cur.execute(statement, ())

        if not self._db.run(what, present, write=False, atomic=False):
            self._db.run(what, create, write=True, atomic=True)

    def begin(self, arrival: Arrival) -> Attempt:
        """This reception's number and the recipients already done: one read, nothing written.

        The number is the attempts recorded so far + 1: two receptions of one message at the
        same moment may both get it (and both find the recipients not done yet).
        """
        ident = arrival.delivery_id

        def begin(cur: Cursor) -> list[Any]:
            cur.execute(self._sql["begin"], (ident,))
            return cur.fetchall()

        rows = self._run("look up a reception", begin, write=False, atomic=False)
        if not rows:  # never written: nothing can be done yet
            return Attempt(ident, 1)
        found = {
            normalize_address(record.recipient): record
            for record in map(schema.recipient_record, (r[1:] for r in rows if r[1] is not None))
        }
        done = {key: record for key, record in found.items() if record.done}
        pending = {key: record for key, record in found.items() if not record.done}
        return Attempt(ident, int(rows[0][0]) + 1, done, pending)

    def record(
        self,
        arrival: Arrival,
        number: int,
        recipient: str,
        outcome: Outcome,
        at: float | None = None,
        *,
        first: bool = True,
    ) -> None:
        """Store ``recipient``'s outcome in reception ``number`` of ``arrival``: one small
        durable write. It replaces an earlier outcome, though never a done one by one not done.

        ``first``: the reception's first write, which creates or updates the entry and names
        every recipient of ``arrival``; a later one (``first=False``) is the recipient's row
        alone, one statement.
        """
        self._write(Write(RECORD, arrival, number, [(recipient, outcome)], at=at, first=first))

    def finish(
        self,
        arrival: Arrival,
        number: int,
        outcomes: Sequence[tuple[str, Outcome]],
        reply: str,
        duration: float,
        at: float | None = None,
        *,
        first: bool = True,
    ) -> None:
        """Store the reply reception ``number`` got and how long it took (seconds), with these
        outcomes: one durable write, which names every recipient of ``arrival`` in RCPT order
        and creates the entry if it is the first. ``reply=""``: only the outcomes (a message
        routed from the spool: its reply was stored at reception).

        ``first=False``: the reception wrote its entry already (a ``record``), so the reply is
        set by an UPDATE (unless a newer reception's) and only the outcomes' rows are written.
        """
        self._write(Write(FINISH, arrival, number, outcomes, reply, duration, at, first))

    def write_all(self, writes: Sequence[Write]) -> list[JournalError | None]:
        """Make several ``record`` and ``finish`` writes in one transaction where the database
        can (SQLite): each one's error, or None. A failing write fails alone."""
        if not writes:
            return []
        works = [self._work(write) for write in writes]
        self._prepare(writes[0].what)
        done = self._db.run_all([work for work in works if work is not None])
        found = iter(done)
        return [None if work is None else next(found) for work in works]

    def _write(self, write: Write) -> None:
        work = self._work(write)
        if work is not None:
            self._run(work.what, work.run, write=True, atomic=work.atomic)

    def _work(self, write: Write) -> Work | None:
        """The statements of ``write``: the entry's upsert and one ``executemany`` of recipients'
        rows (``first``: a row for each recipient of the arrival, in RCPT order, then those
        given that it does not name); else the reply's UPDATE, if any, and the given outcomes'
        rows. None if there is nothing to write."""
        arrival, number, reply = write.arrival, write.number, write.reply
        at = time.time() if write.at is None else write.at
        given = {normalize_address(rcpt): (rcpt, outcome) for rcpt, outcome in write.outcomes}
        entry: tuple[Any, ...] = ()
        marks: list[tuple[Any, ...]] = []
        if write.first:
            duration = write.duration if reply else None
            entry = schema.entry_row(arrival, number, reply, duration, at)
            for key, (_, rcpt) in arrival.named.items():
                outcome = given.pop(key, (rcpt, None))[1]
                marks.append(schema.mark_row(arrival, number, rcpt, outcome, at))
        elif reply:
            entry = (to_text(reply), write.duration, at, arrival.delivery_id, number)
        marks += [schema.mark_row(arrival, number, r, outcome, at) for r, outcome in given.values()]
        if not entry and not marks:
            return None
        statement = self._sql["arrive" if write.first else "reply"]

        def run(cur: Cursor) -> None:
            if entry:
                cur.execute(statement, entry)
            if len(marks) == 1:
                cur.execute(self._sql["mark"], marks[0])
            elif marks:
                cur.executemany(self._sql["mark"], marks)

        return Work(write.what, run, atomic=bool(entry) and bool(marks))

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
            where.append(f"{self._schema.mask()} IN ({', '.join(map(str, schema.masks(status)))})")
        text = f"SELECT {ENTRY} FROM {self._j} j"
        text += f" WHERE {' AND '.join(where)}" if where else ""
        text += " ORDER BY j.received_at DESC, j.id"
        if limit is not None:
            text += f" LIMIT {max(int(limit), 0)}"

        def entries(cur: Cursor) -> list[Entry]:
            cur.execute(self._schema.q(text), params)
            return self._entries(cur, cur.fetchall())

        return self._run("list entries", entries, write=False)

    def _entries(self, cur: Cursor, rows: list[Any]) -> list[Entry]:
        """Entries of these journal rows, with their recipients read on ``cur``."""
        recipients: dict[str, list[RecipientRecord]] = {row[0]: [] for row in rows}
        ids = list(recipients)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            cur.execute(
                self._schema.q(
                    f"SELECT journal_id, {RECIPIENT} FROM {self._r} WHERE journal_id IN"
                    f" ({', '.join('?' * len(chunk))}) ORDER BY journal_id, attempt, position"
                ),
                chunk,
            )
            for row in cur.fetchall():
                recipients[row[0]].append(schema.recipient_record(row[1:]))
        return [schema.entry_record(row, tuple(recipients[row[0]])) for row in rows]

    def counts(self) -> dict[MessageStatus, int]:
        """How many entries have each message status (every status named, zero included)."""
        text = f"SELECT {self._schema.mask()} AS mask, count(*) FROM {self._j} j GROUP BY mask"

        def counts(cur: Cursor) -> list[Any]:
            cur.execute(self._schema.q(text), ())
            return cur.fetchall()

        found = dict.fromkeys(MESSAGE_STATUSES, 0)
        for mask, count in self._run("count entries", counts, write=False):
            found[schema.status_of_mask(int(mask))] += int(count)
        return found

    def statuses(self, since: float, until: float) -> list[tuple[float, MessageStatus]]:
        """Each entry first received in ``[since, until)``: when, and its status (two columns a
        row, no recipients read: what a per-minute chart needs)."""
        text = (
            f"SELECT j.received_at, {self._schema.mask()} FROM {self._j} j"
            " WHERE j.received_at >= ? AND j.received_at < ?"
        )

        def statuses(cur: Cursor) -> list[Any]:
            cur.execute(self._schema.q(text), (since, until))
            return cur.fetchall()

        rows = self._run("read the statuses", statuses, write=False)
        return [(float(when), schema.status_of_mask(int(mask))) for when, mask in rows]

    def purge(self, before: float) -> int:
        """Delete the entries whose last activity is older than ``before``; how many."""

        def purge(cur: Cursor) -> int:
            cur.execute(self._sql["idle"], (before, before, before))
            ids = [row[0] for row in cur.fetchall()]
            if ids:
                marks, q, r, j = ", ".join("?" * len(ids)), self._schema.q, self._r, self._j
                cur.execute(q(f"DELETE FROM {r} WHERE journal_id IN ({marks})"), ids)
                cur.execute(q(f"DELETE FROM {j} WHERE id IN ({marks})"), ids)
            return len(ids)

        total = 0
        while (count := self._run("purge entries", purge, write=True)) == PURGE_BATCH:
            total += count
        return total + count

    def close(self) -> None:
        """Close the database connections; idempotent."""
        self._db.close()
