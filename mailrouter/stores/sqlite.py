"""``sqlite:///abs/path/state.db``: states in one SQLite file that processes on one host share.

Standard library only. The file is in WAL mode with ``synchronous=FULL`` (a state survives a
power cut once ``set`` returns) and a busy timeout, so writers of several processes queue instead
of failing. Each store keeps one connection, used by one thread at a time. Schema::

    mailrouter_state (key TEXT, sender TEXT, state TEXT NOT NULL, PRIMARY KEY (key, sender))
    mailrouter_lock  (key TEXT, sender TEXT, owner TEXT NOT NULL, expires REAL NOT NULL,
                      PRIMARY KEY (key, sender))

Text that SQLite cannot hold as it is (lone surrogates) is escaped (``_common.to_text``).

``lock(key, sender)`` is a row of ``mailrouter_lock``: taken by one atomic INSERT that may take
over a row whose ``expires`` (Unix time) has passed, polled with a short backoff, deleted by its
``owner`` token on release. A lease lasts ``lock_timeout`` seconds and is renewed while held, so
only a crashed (or stalled) holder's lock expires: a ``kill -9`` frees it after ``lock_timeout``.

URL options: ``lock_timeout`` (30 s), ``lock_wait`` (60 s: waiting longer raises ``StoreError``),
``busy_timeout`` (5 s). ``sqlite://relative/path`` is relative to the current directory.
``readonly=True`` creates nothing (a missing file reads as empty) and refuses writes and locks.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from mailrouter.errors import StoreError
from mailrouter.state import START
from mailrouter.stores._common import Leases, SharedStore, StoreURL, from_text, new_token, to_text

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS mailrouter_state (key TEXT NOT NULL, sender TEXT NOT NULL,"
    " state TEXT NOT NULL, PRIMARY KEY (key, sender)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS mailrouter_lock (key TEXT NOT NULL, sender TEXT NOT NULL,"
    " owner TEXT NOT NULL, expires REAL NOT NULL, PRIMARY KEY (key, sender)) WITHOUT ROWID",
)
_TAKE = (
    "INSERT INTO mailrouter_lock (key, sender, owner, expires) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (key, sender) DO UPDATE SET owner = excluded.owner, expires = excluded.expires"
    " WHERE mailrouter_lock.expires < ?"
)


class SqliteStorage(SharedStore[str]):
    """States and cross-process locks in one SQLite file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        lock_timeout: float = 30.0,
        lock_wait: float = 60.0,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = Path(path)
        super().__init__(f"sqlite://{self.path}", readonly=readonly, lock_wait=lock_wait)
        self.lock_timeout = lock_timeout
        self._guard = threading.Lock()
        self._leases = Leases(lock_timeout, self._renew, f"mailrouter-sqlite-leases {self.path}")
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None if readonly else self._open()

    def _open(self) -> sqlite3.Connection | None:
        """Connect (read-only: once the file exists; creates nothing) and set a writer up."""
        if self.readonly and not self.path.exists():
            return None
        conn: sqlite3.Connection | None = None
        try:
            if not self.readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            if not self.readonly:
                self._set_up(conn)
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            raise StoreError(f"cannot open state store {self._shown}: {exc}") from exc
        return conn

    def _set_up(self, conn: sqlite3.Connection) -> None:
        """WAL mode, full sync and the tables; retried while other processes do the same.

        Switching a new file to WAL fails at once with "database is locked" (no busy handler)
        while another connection holds it, as when several workers start together.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            else:
                if mode == "wal":
                    break
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError(f"cannot switch from {mode} to WAL mode")
            time.sleep(0.01)
        conn.execute("PRAGMA synchronous = FULL")
        for statement in _SCHEMA:
            conn.execute(statement)

    @classmethod
    def from_url(cls, url: str, *, readonly: bool = False) -> SqliteStorage:
        """Open ``sqlite:///abs/path`` or ``sqlite://relative/path`` with its options."""
        parsed = StoreURL(url, ("lock_timeout", "lock_wait", "busy_timeout"))
        parsed.refuse_rest()
        path = parsed.parts.netloc + parsed.parts.path
        if not path or path.endswith("/"):
            raise StoreError(f"state store URL {url!r} names no file, e.g. sqlite:///var/state.db")
        return cls(
            path,
            readonly=readonly,
            lock_timeout=parsed.seconds("lock_timeout", 30.0),
            lock_wait=parsed.seconds("lock_wait", 60.0),
            busy_timeout=parsed.seconds("busy_timeout", 5.0),
        )

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[Any], int]:
        """Run one statement (its own transaction): its rows and how many rows it changed.

        The rows are all fetched at once, so no statement stays open: an open one would keep a
        read transaction that makes this connection's next write fail at once with "database is
        locked" when another process wrote meanwhile. A read-only store without file: no rows.
        """
        with self._guard:
            self._check_open()
            if self._conn is None:  # a read-only store whose file did not exist yet
                self._conn = self._open()
                if self._conn is None:
                    return [], 0
            try:
                cursor = self._conn.execute(sql, params)
                return cursor.fetchall(), cursor.rowcount
            except sqlite3.OperationalError as exc:
                if self.readonly and "no such table" in str(exc):
                    return [], 0
                raise StoreError(f"state store {self._shown}: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"state store {self._shown}: {exc}") from exc

    def get(self, key: str, sender: str) -> str:
        """The state of ``sender`` under ``key``, or ``START``."""
        rows, _ = self._execute(
            "SELECT state FROM mailrouter_state WHERE key = ? AND sender = ?",
            (to_text(key), to_text(sender)),
        )
        return from_text(rows[0][0]) if rows else START

    def set(self, key: str, sender: str, state: str) -> None:
        """Store ``state`` durably; ``START`` removes the entry."""
        self._writable()
        if state == START:
            self._execute(
                "DELETE FROM mailrouter_state WHERE key = ? AND sender = ?",
                (to_text(key), to_text(sender)),
            )
        else:
            self._execute(
                "INSERT INTO mailrouter_state (key, sender, state) VALUES (?, ?, ?)"
                " ON CONFLICT (key, sender) DO UPDATE SET state = excluded.state",
                (to_text(key), to_text(sender), to_text(state)),
            )

    def clear(self) -> None:
        """Remove every state (locks held meanwhile stay held)."""
        self._writable()
        self._execute("DELETE FROM mailrouter_state")

    def _acquire(self, key: str, sender: str) -> str:
        token = new_token()
        row = (to_text(key), to_text(sender), token)

        def take() -> bool:
            now = time.time()
            return self._execute(_TAKE, (*row, now + self.lock_timeout, now))[1] == 1

        self._poll(take, key, sender)
        self._leases.add(token, key, sender)
        return token

    def _release(self, key: str, sender: str, handle: str) -> None:
        self._leases.remove(handle)
        try:
            self._execute(
                "DELETE FROM mailrouter_lock WHERE key = ? AND sender = ? AND owner = ?",
                (to_text(key), to_text(sender), handle),
            )
        except StoreError as exc:  # the lease runs out by itself
            log.warning("cannot release the lock of %r under %r: %s", sender, key, exc)

    def _renew(self, held: list[tuple[str, str, str]]) -> None:
        expires = time.time() + self.lock_timeout
        for token, key, sender in held:
            _, changed = self._execute(
                "UPDATE mailrouter_lock SET expires = ? WHERE key = ? AND sender = ? AND owner = ?",
                (expires, to_text(key), to_text(sender), token),
            )
            if not changed and token in self._leases:
                log.warning("the lock of %r under %r expired while held", sender, key)

    def close(self) -> None:
        """Stop renewing leases and close the connection; idempotent."""
        self._leases.stop()
        self._closing.set()
        with self._guard:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
