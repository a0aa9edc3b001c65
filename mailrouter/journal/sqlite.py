"""``sqlite:///abs/path/journal.db`` or ``sqlite://relative/path``: the journal in one SQLite file.

Standard library only. The file is in WAL mode, so readers (``mailrouter messages``) never hold
the server up, with a busy timeout, so the writers of several processes take turns instead of
failing. ``synchronous=NORMAL``: a committed transaction, a done mark included, survives a crash
or ``kill -9`` of the process (it is in the WAL file), but a power cut or an OS crash may lose the
last few marks, whose recipients a retry then runs again. Each journal keeps one connection,
used by one thread at a time: a write takes tens of microseconds, so threads hardly wait.

URL options: ``busy_timeout`` (5 s: how long a write waits for another process's), ``table``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing, suppress
from pathlib import Path
from typing import Any, TypeVar, cast

from mailrouter.journal.backend import Cursor, Dialect, JournalError, JournalURL
from mailrouter.journal.base import Journal

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
        self._guard = threading.Lock()  # the connection: one transaction at a time
        self._queued = threading.Lock()  # the writes waiting for the next commit
        self._queue: list[_Write] = []
        self._conn: sqlite3.Connection | None = self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._switch_to_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            raise JournalError(f"cannot open journal {self.shown}: {exc}") from exc
        return conn

    def _switch_to_wal(self, conn: sqlite3.Connection) -> None:
        """WAL mode; retried, as switching fails at once while another process does it too."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            else:
                if mode == "wal":
                    return
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError(f"cannot switch from {mode} to WAL mode")
            time.sleep(0.01)

    def run(self, what: str, work: Callable[[Cursor], T], *, write: bool, atomic: bool) -> T:
        """``work`` in a transaction. Writes are group-committed: the thread that takes the
        connection runs every write queued by then, each in its own savepoint, and commits them
        together; each caller returns once the commit holding its write is done."""
        if not write:
            with self._guard:
                return cast(T, self._transaction(what, [_Write(what, work)], begin="BEGIN")[0])
        mine = _Write(what, work)
        with self._queued:
            self._queue.append(mine)
        with self._guard:
            if not mine.finished:
                with self._queued:
                    batch, self._queue = self._queue, []
                try:
                    results = self._transaction(what, batch, begin="BEGIN IMMEDIATE")
                except JournalError as exc:
                    for write_ in batch:
                        write_.error = exc
                else:
                    for write_, result in zip(batch, results, strict=True):
                        write_.result = result
                for write_ in batch:
                    write_.finished = True
        if mine.error is not None:
            raise mine.error
        return cast(T, mine.result)

    def _transaction(self, what: str, batch: list[_Write], *, begin: str) -> list[Any]:
        """Run ``batch`` in one transaction, each in a savepoint: what each returned, or the
        JournalError it raised (set on it); a failed commit raises."""
        conn = self._conn
        if conn is None:
            raise JournalError(f"journal {self.shown} is closed")
        results: list[Any] = []
        try:
            with closing(conn.cursor()) as cur:
                cur.execute(begin)
                if len(batch) == 1:  # alone: its error is the transaction's
                    results.append(batch[0].work(cur))
                for write_ in batch if len(batch) > 1 else ():
                    cur.execute("SAVEPOINT one")
                    try:
                        results.append(write_.work(cur))
                    except (sqlite3.Error, JournalError) as exc:
                        cur.execute("ROLLBACK TO one")
                        write_.error = _journal_error(self.shown, write_.what, exc)
                        results.append(None)
                    cur.execute("RELEASE one")
                cur.execute("COMMIT")
        except (sqlite3.Error, JournalError) as exc:
            raise _journal_error(self.shown, what, exc) from exc
        finally:
            if conn.in_transaction:  # the work or the commit failed: undo the batch
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        return results

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._guard:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


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
