"""``shelve://``: the embedded persistent default, a ``shelve.Shelf`` over a SQLite mapping.

The mapping has the same schema as Python 3.13's ``dbm.sqlite3``, so files are interchangeable.
We do not use ``dbm.sqlite3`` itself: it binds its connection to the opening thread, while
handlers run in executor threads.

A state is the shelf's value under the key ``json.dumps([key, sender])`` (``_shelf_key``);
``items()`` reads the whole mapping in one statement and decodes those keys back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pickle
import shelve
import sqlite3
import threading
from collections.abc import ItemsView, Iterator, MutableMapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mailrouter.errors import StoreError
from mailrouter.state.base import START, Closable, KeyedLocks, split_url

log = logging.getLogger(__name__)


class ShelveStorage(Closable):
    """The embedded persistent store: one SQLite-backed shelf, open for the store's lifetime.

    A writable store holds an exclusive ``flock`` on ``<path>.lock`` so that a second server
    cannot share the file; ``readonly=True`` takes no lock and refuses writes.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._locks = KeyedLocks()
        self._close_guard = threading.Lock()
        self._lock_fd: int | None = None
        self._closed = False
        if readonly and not self.path.exists():
            self._map: MutableMapping[bytes, bytes] = {}
            self._shelf: shelve.Shelf[str] = shelve.Shelf(self._map)
            return
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the directory of state store {path}: {exc}"
                ) from exc
            self._lock_fd = self._take_lock()
        try:
            self._map = SqliteMapping(self.path, readonly=readonly)
        except BaseException:
            self._drop_lock()
            raise
        self._shelf = shelve.Shelf(self._map)
        log.debug("opened state store %s%s", self.path, " (read-only)" if readonly else "")

    def _take_lock(self) -> int:
        """Lock ``<path>.lock`` for this store's lifetime and write our pid into it."""
        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open lock file {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            mine = " (this process)" if holder == str(os.getpid()) else ""
            raise StoreError(
                f"state store {self.path} is in use by process {holder}{mine}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _drop_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the flock

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"state store {self.path} is closed")

    def _shelf_key(self, key: str, sender: str) -> str:
        self._check_open()
        return json.dumps([key, sender])  # ASCII-only, so any str (even lone surrogates) encodes

    def _writable(self) -> None:
        if self.readonly:
            raise StoreError(f"state store {self.path} is open read-only")

    def get(self, key: str, sender: str) -> str:
        """The state of ``sender`` under ``key``, or ``START``."""
        try:
            return self._checked(self._shelf[self._shelf_key(key, sender)], sender)
        except KeyError:
            return START

    def _checked(self, state: object, sender: str) -> str:
        if not isinstance(state, str):
            raise StoreError(f"state store {self.path} holds a non-string state for {sender!r}")
        return state

    def set(self, key: str, sender: str, state: str) -> None:
        """Store ``state`` durably; ``START`` removes the entry."""
        self._writable()
        shelf_key = self._shelf_key(key, sender)
        if state == START:
            with contextlib.suppress(KeyError):
                del self._shelf[shelf_key]
        else:
            self._shelf[shelf_key] = state

    def items(self) -> list[tuple[str, str, str]]:
        """Every stored ``(key, sender, state)``."""
        self._check_open()
        listed = []
        for shelf_key, value in self._map.items():  # the Shelf's UTF-8 keys, pickled values
            key, sender = json.loads(shelf_key.decode())
            listed.append((key, sender, self._checked(pickle.loads(value), sender)))
        return listed

    def clear(self) -> None:
        """Remove every state."""
        self._writable()
        self._check_open()
        self._map.clear()  # one DELETE, not the Shelf's popitem loop

    def lock(self, key: str, sender: str) -> AbstractContextManager[None]:
        """Hold the transition lock of (key, sender) in this process."""
        return self._locks.hold(key, sender)

    def close(self) -> None:
        """Close the shelf and its connection and release the file lock; idempotent."""
        with self._close_guard:
            if self._closed:
                return
            self._closed = True
            try:
                self._shelf.close()
            finally:
                self._drop_lock()

    @classmethod
    def from_url(cls, url: str, *, readonly: bool = False) -> ShelveStorage:
        """``shelve:///abs/path`` or ``shelve://relative/path`` (to the current directory)."""
        parts = split_url(url)
        if parts.query or parts.fragment:
            raise StoreError(f"state store URL {url!r}: shelve:// takes no query or fragment")
        path = parts.netloc + parts.path
        if not path or path.endswith("/"):
            raise StoreError(
                f"state store URL {url!r} names no file, e.g. shelve:///var/lib/state.db"
            )
        return cls(path, readonly=readonly)


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

    def items(self) -> ItemsView[bytes, bytes]:
        """Every pair, read in one statement (not one query per key)."""
        return {
            bytes(key): bytes(value) for key, value in self._rows("SELECT key, value FROM Dict")
        }.items()

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
