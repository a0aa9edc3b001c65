"""A bytes-to-bytes mapping in one SQLite file, crash-safe, for ``shelve`` to sit on.

The table is Python 3.13's ``dbm.sqlite3`` layout, so files are interchangeable; unlike that
module, one connection serves every thread (guarded by a lock), as executor threads need.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mailrouter.errors import StoreError


class SqliteMapping(MutableMapping[bytes, bytes]):
    """A bytes->bytes mapping in one SQLite file; every write is committed before it returns."""

    def __init__(self, path: Path, *, readonly: bool) -> None:
        self._path = path
        self._guard = threading.Lock()
        if readonly:
            target, uri = f"file:{quote(str(path.absolute()))}?mode=ro", True
        else:
            target, uri = str(path), False
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                target, uri=uri, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state store {path}: {exc}") from exc
        try:
            if readonly:
                # Also proves the file is a database, and yields an empty mapping without a table.
                row = self._conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'Dict'"
                ).fetchone()
                self._empty = row[0] == 0
            else:
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS Dict"
                    " (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)"
                )
                self._empty = False
        except sqlite3.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot open state store {path}: {exc}") from exc

    def _run(self, sql: str, params: tuple[bytes, ...] = ()) -> sqlite3.Cursor:
        """Run one statement (its own transaction); the caller holds ``_guard``."""
        if self._conn is None:
            raise StoreError(f"state store {self._path} is closed")
        try:
            return self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self._path}: {exc}") from exc

    def _rows(self, sql: str, params: tuple[bytes, ...] = ()) -> list[Any]:
        with self._guard:
            return [] if self._empty else self._run(sql, params).fetchall()

    def __getitem__(self, key: bytes) -> bytes:
        rows = self._rows("SELECT value FROM Dict WHERE key = CAST(? AS BLOB)", (key,))
        if not rows:
            raise KeyError(key)
        return bytes(rows[0][0])

    def __setitem__(self, key: bytes, value: bytes) -> None:
        with self._guard:
            self._run(
                "REPLACE INTO Dict (key, value) VALUES (CAST(? AS BLOB), CAST(? AS BLOB))",
                (key, value),
            )

    def __delitem__(self, key: bytes) -> None:
        with self._guard:
            if self._run("DELETE FROM Dict WHERE key = CAST(? AS BLOB)", (key,)).rowcount == 0:
                raise KeyError(key)

    def __iter__(self) -> Iterator[bytes]:
        return iter([bytes(row[0]) for row in self._rows("SELECT key FROM Dict")])

    def __len__(self) -> int:
        rows = self._rows("SELECT count(*) FROM Dict")
        return int(rows[0][0]) if rows else 0

    def clear(self) -> None:
        with self._guard:
            self._run("DELETE FROM Dict")

    def close(self) -> None:
        with self._guard:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
