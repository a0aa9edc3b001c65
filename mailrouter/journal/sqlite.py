"""``sqlite:///abs/path/journal.db`` or ``sqlite://relative/path``: the journal in one SQLite file.

Standard library only. The file is in WAL mode, so readers (``mailrouter messages``) never hold
the server up, with a busy timeout, so the writers of several processes take turns instead of
failing. ``synchronous=NORMAL``: a committed transaction, a done mark included, survives a crash
or ``kill -9`` of the process (it is in the WAL file), but a power cut or an OS crash may lose the
last few marks, whose recipients a retry then runs again. Each journal keeps one connection for
writes, used by one thread at a time (a write takes tens of microseconds, and the writes queued
meanwhile are committed together). Reads run on reading connections, one per thread at a time:
in WAL mode a read is never held up by a write, so ``Journal.begin`` (a plain SELECT, no
transaction) waits for none; such a one-statement read runs on the writing connection instead
when that is free, as its page cache is current (another connection rereads the pages after
every commit).

URL options: ``busy_timeout`` (5 s: how long a write waits for another process's), ``table``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import closing, suppress
from pathlib import Path
from typing import Any, TypeVar, cast

from mailrouter.journal.backend import Cursor, Dialect, JournalError, JournalURL, Work
from mailrouter.journal.base import Journal
from mailrouter.state.sqlite import switch_to_wal

T = TypeVar("T")


class _Write:
    """A write waiting to be committed, and how it went."""

    __slots__ = ("error", "finished", "result", "what", "work")

    def __init__(self, what: str, work: Callable[[Cursor], Any]) -> None:
        self.what, self.work = what, work
        self.finished = False
        self.result: Any = None
        self.error: JournalError | None = None


def _journal_error(shown: str, what: str, exc: Exception) -> JournalError:
    if isinstance(exc, JournalError):
        return exc
    return JournalError(f"journal {shown}: cannot {what}: {exc}")


class SqliteDatabase:
    """One SQLite file, through one connection guarded by a lock."""

    dialect = Dialect(
        "?",
        "REAL",
        "INTEGER",
        exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{name}'",
        keyed_table=" WITHOUT ROWID",
    )

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.shown = f"sqlite://{self.path}"
        self._busy_timeout = busy_timeout
        self._guard = threading.Lock()  # the writing connection: one transaction at a time
        self._queued = threading.Lock()  # the writes waiting for the next commit
        self._queue: list[_Write] = []
        self._readers: list[sqlite3.Connection] = []  # idle reading connections
        self._closed = False
        self._conn: sqlite3.Connection | None = self._connect(writer=True)

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            if writer:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            if writer:  # the file's mode, kept by the file: readers find it set
                switch_to_wal(conn, self._busy_timeout)
                conn.execute("PRAGMA synchronous = NORMAL")
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            raise JournalError(f"cannot open journal {self.shown}: {exc}") from exc
        return conn

    def run(self, what: str, work: Callable[[Cursor], T], *, write: bool, atomic: bool) -> T:
        """``work`` in a transaction (a read with ``atomic=False``: its one statement alone).

        Writes are group-committed: the thread that takes the writing connection runs every
        write queued by then and commits them together; each caller returns once the commit
        holding its write is done."""
        if not write:
            return self._read(what, work, atomic=atomic)
        mine = _Write(what, work)
        self._write([mine])
        if mine.error is not None:
            raise mine.error
        return cast(T, mine.result)

    def run_all(self, works: Sequence[Work]) -> list[JournalError | None]:
        """Several writes, committed together (with any queued meanwhile): each one's error."""
        writes = [_Write(work.what, work.run) for work in works]
        self._write(writes)
        return [write_.error for write_ in writes]

    def _write(self, mine: list[_Write]) -> None:
        """Queue ``mine`` and return once a commit holding them is done (or failed: their
        ``error`` set)."""
        if not mine:
            return
        with self._queued:
            self._queue.extend(mine)
        with self._guard:
            if not mine[-1].finished:
                with self._queued:
                    batch, self._queue = self._queue, []
                try:
                    for write_, result in zip(
                        batch, self._commit(batch[0].what, batch), strict=True
                    ):
                        write_.result = result
                except Exception as exc:  # JournalError, or a bug in a write: raised to all
                    for write_ in batch:
                        write_.error = error = _journal_error(self.shown, write_.what, exc)
                        if error is not exc:
                            error.__cause__ = exc
                finally:
                    for write_ in batch:
                        write_.finished = True

    def _read(self, what: str, work: Callable[[Cursor], T], *, atomic: bool) -> T:
        """``work`` on an idle reading connection (a new one if none is idle); a one-statement
        read on the writing connection if it is free (its cache holds the pages it wrote)."""
        if not atomic and self._guard.acquire(blocking=False):
            try:
                if self._conn is not None:
                    return self._read_on(self._conn, what, work, atomic=atomic)
            finally:
                self._guard.release()
        if self._closed:
            raise JournalError(f"journal {self.shown} is closed")
        try:
            conn = self._readers.pop()
        except IndexError:
            conn = self._connect(writer=False)
        try:
            return self._read_on(conn, what, work, atomic=atomic)
        finally:
            self._readers.append(conn)
            if self._closed:  # closed meanwhile
                self._close_readers()

    def _read_on(
        self, conn: sqlite3.Connection, what: str, work: Callable[[Cursor], T], *, atomic: bool
    ) -> T:
        try:
            with closing(conn.cursor()) as cur:
                if not atomic:
                    return work(cur)
                cur.execute("BEGIN")
                result = work(cur)
                cur.execute("COMMIT")
                return result
        except (sqlite3.Error, JournalError) as exc:
            raise _journal_error(self.shown, what, exc) from exc
        finally:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")

    def _commit(self, what: str, batch: list[_Write]) -> list[Any]:
        """Run ``batch`` in one transaction: what each write returned, or None for one that
        failed (its error set on it). A failed write undoes the batch, which is then run
        again with each write in a savepoint; a failed commit raises."""
        try:
            return self._transaction(what, batch, savepoints=False)
        except JournalError:
            if len(batch) == 1 or all(write_.error is None for write_ in batch):
                raise  # the transaction's own error (BEGIN, COMMIT): every write's
        for write_ in batch:
            write_.error = None
        return self._transaction(what, batch, savepoints=True)

    def _transaction(self, what: str, batch: list[_Write], *, savepoints: bool) -> list[Any]:
        """Run ``batch`` in one write transaction; with ``savepoints``, each write in its own,
        so that one that fails (its JournalError set on it) leaves the others."""
        conn = self._conn
        if conn is None:
            raise JournalError(f"journal {self.shown} is closed")
        results: list[Any] = []
        try:
            with closing(conn.cursor()) as cur:
                cur.execute("BEGIN IMMEDIATE")
                for write_ in batch:
                    if savepoints:
                        cur.execute("SAVEPOINT one")
                    try:
                        results.append(write_.work(cur))
                    except (sqlite3.Error, JournalError) as exc:
                        write_.error = _journal_error(self.shown, write_.what, exc)
                        if not savepoints:
                            raise
                        cur.execute("ROLLBACK TO one")
                        results.append(None)
                    if savepoints:
                        cur.execute("RELEASE one")
                cur.execute("COMMIT")
        except (sqlite3.Error, JournalError) as exc:
            raise _journal_error(self.shown, what, exc) from exc
        finally:
            if conn.in_transaction:  # the work or the commit failed: undo the batch
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        return results

    def _close_readers(self) -> None:
        while self._readers:
            with suppress(IndexError):
                self._readers.pop().close()

    def close(self) -> None:
        """Close the connections; idempotent (a reading one in use closes when it is done)."""
        self._closed = True
        with self._guard:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._close_readers()


def open_url(url: str) -> Journal:
    """The journal of ``sqlite:///abs/path`` or ``sqlite://relative/path``, with its options."""
    parsed = JournalURL(url, ("busy_timeout", "table"))
    parsed.refuse_rest()
    path = parsed.parts.netloc + parsed.parts.path
    if not path or path.endswith("/"):
        raise JournalError(
            f"journal URL {parsed.shown!r} names no file, e.g. sqlite:///var/mailrouter/journal.db"
        )
    table = parsed.table()
    return Journal(SqliteDatabase(path, busy_timeout=parsed.number("busy_timeout", 5.0)), table)
