"""``sqlite:///abs/path/state.db``: states in one SQLite file that processes on one host share.

Standard library only. The file is in WAL mode with ``synchronous=FULL`` (a state survives a
power cut once ``set`` returns) and a busy timeout, so writers of several processes queue instead
of failing. Each store keeps one writing connection, used by one thread at a time, and reads on
connections of their own, so that a read never waits for this process's fsync'd write (in WAL
mode readers and the writer do not block each other). Schema::

    mailrouter_state (key TEXT, sender TEXT, state TEXT NOT NULL, PRIMARY KEY (key, sender))

Text that SQLite cannot hold as it is (lone surrogates) is escaped (``_common.to_text``).

``lock(key, sender)`` is a POSIX record lock (``fcntl.lockf``) on one byte of the sidecar file
``<db>.lock``, at an offset hashed from the pair (62 bits of BLAKE2b): no write, no fsync. It is
tried without blocking and polled with a short backoff. The kernel frees it when its holder's
process exits, even by ``kill -9``, so there is no lease to renew or expire. Record locks belong
to a process, not to a thread or a descriptor, and closing any descriptor of the file drops them
all: so the stores of one process on one file share one descriptor, and a table of the bytes
they hold, so that two threads never hold one byte (two pairs whose hashes collide just take
turns). Do not delete ``<db>.lock`` while servers use the store. (Versions before took locks
as rows of a ``mailrouter_lock`` table, now unused: upgrade every process at once.)

URL options: ``lock_wait`` (60 s: waiting longer raises ``StoreError``), ``busy_timeout`` (5 s).
``sqlite://relative/path`` is relative to the current directory.
``readonly=True`` creates nothing (a missing file reads as empty) and refuses writes and locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from mailrouter.errors import StoreError
from mailrouter.state.base import START
from mailrouter.state.shared import SharedStore, StoreURL, from_text, to_text, url_options

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS mailrouter_state (key TEXT NOT NULL, sender TEXT NOT NULL,"
    " state TEXT NOT NULL, PRIMARY KEY (key, sender)) WITHOUT ROWID"
)


def _slot(key: str, sender: str) -> int:
    """The byte of the lock file that stands for (key, sender)."""
    digest = hashlib.blake2b(json.dumps([key, sender]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


class _LockFile:
    """This process's one descriptor of a lock file, shared by its stores, and the bytes held."""

    _open: ClassVar[dict[tuple[int, int], _LockFile]] = {}
    _registry: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, fd: int, ident: tuple[int, int]) -> None:
        self._fd: int | None = fd
        self._ident = ident
        self._users = 1
        self._guard = threading.Lock()
        self._held: set[int] = set()

    @classmethod
    def attach(cls, path: Path) -> _LockFile:
        """The lock file at ``path``, created if missing; opened once per process."""
        with cls._registry:
            try:
                info = os.stat(path)
            except FileNotFoundError:
                pass
            else:
                found = cls._open.get((info.st_dev, info.st_ino))
                if found is not None:
                    found._users += 1
                    return found
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            info = os.fstat(fd)
            lock_file = cls._open[info.st_dev, info.st_ino] = cls(fd, (info.st_dev, info.st_ino))
            return lock_file

    def detach(self) -> None:
        """One store fewer; the last closes the descriptor, which drops this process's locks."""
        with self._registry:
            self._users -= 1
            if self._users:
                return
            del self._open[self._ident]
            with self._guard:  # under the registry: a new descriptor must not open before
                fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)

    def try_lock(self, slot: int) -> bool:
        """Take byte ``slot`` unless a thread of this process or another process holds it."""
        with self._guard:
            if self._fd is None or slot in self._held:
                return False
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
            except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: another process
                return False
            self._held.add(slot)
            return True

    def unlock(self, slot: int) -> None:
        """Give byte ``slot`` back (if the descriptor is closed, the kernel already has)."""
        with self._guard:
            try:
                if self._fd is not None:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, slot)
            finally:
                self._held.discard(slot)


def switch_to_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the database in WAL mode, retried for up to ``timeout`` seconds: switching a new file
    fails at once with "database is locked" (no busy handler) while another connection holds
    it, as when several processes open it together."""
    deadline = time.monotonic() + timeout
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


class SqliteStorage(SharedStore[tuple[_LockFile, int]]):
    """States in one SQLite file; cross-process locks on bytes of ``<db>.lock``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        lock_wait: float = 60.0,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = Path(path)
        super().__init__(f"sqlite://{self.path}", readonly=readonly, lock_wait=lock_wait)
        self.lock_path = self.path.with_name(f"{self.path.name}.lock")
        self._guard = threading.Lock()
        self._busy_timeout = busy_timeout
        self._conn = None if readonly else self._open()
        self._readers: list[sqlite3.Connection] = []  # idle reading connections
        self._lock_file: _LockFile | None = None
        if not readonly:
            try:
                self._lock_file = _LockFile.attach(self.lock_path)
            except OSError as exc:
                self.close()
                raise StoreError(f"cannot open state store {self._shown}: {exc}") from exc

    def _open(self, *, reader: bool = False) -> sqlite3.Connection | None:
        """Connect (a read-only store or a reader: once the file exists; creates nothing) and
        set the writer up."""
        if (self.readonly or reader) and not self.path.exists():
            return None
        conn: sqlite3.Connection | None = None
        try:
            if not self.readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            if not (self.readonly or reader):
                self._set_up(conn)
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            raise StoreError(f"cannot open state store {self._shown}: {exc}") from exc
        return conn

    def _set_up(self, conn: sqlite3.Connection) -> None:
        """WAL mode, full sync and the table; retried while other processes do the same.

        Switching a new file to WAL fails at once with "database is locked" (no busy handler)
        while another connection holds it, as when several workers start together.
        """
        switch_to_wal(conn, self._busy_timeout)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(_SCHEMA)

    @classmethod
    def from_url(cls, url: str, *, readonly: bool = False) -> SqliteStorage:
        """Open ``sqlite:///abs/path`` or ``sqlite://relative/path`` with its options."""
        options = url_options(cls)
        parsed = StoreURL(url, options)
        parsed.refuse_rest()
        path = parsed.parts.netloc + parsed.parts.path
        if not path or path.endswith("/"):
            raise StoreError(f"state store URL {url!r} names no file, e.g. sqlite:///var/state.db")
        return cls(path, readonly=readonly, **parsed.keywords(options))

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """Run one writing statement (its own transaction) on the writing connection."""
        with self._guard:
            self._check_open()
            assert self._conn is not None  # a writable store is connected until closed
            try:
                self._conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise StoreError(f"state store {self._shown}: {exc}") from exc

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of one query, on an idle reading connection (a new one if none is idle).

        The rows are all fetched at once, so no statement stays open, nor its read
        transaction. A read-only store without file, or without table yet: no rows.
        """
        self._check_open()
        try:
            conn: sqlite3.Connection | None = self._readers.pop()
        except IndexError:
            conn = self._open(reader=True)
        if conn is None:
            return []
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if self.readonly and "no such table" in str(exc):
                return []
            raise StoreError(f"state store {self._shown}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self._shown}: {exc}") from exc
        finally:
            self._readers.append(conn)
            if self._closing.is_set():  # closed meanwhile
                self._close_readers()

    def _close_readers(self) -> None:
        while self._readers:
            with contextlib.suppress(IndexError):
                self._readers.pop().close()

    def get(self, key: str, sender: str) -> str:
        """The state of ``sender`` under ``key``, or ``START``."""
        rows = self._read(
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

    def items(self) -> list[tuple[str, str, str]]:
        """Every stored ``(key, sender, state)``, read in one statement."""
        rows = self._read("SELECT key, sender, state FROM mailrouter_state")
        return [
            (from_text(key), from_text(sender), from_text(state)) for key, sender, state in rows
        ]

    def clear(self) -> None:
        """Remove every state (locks held meanwhile stay held)."""
        self._writable()
        self._execute("DELETE FROM mailrouter_state")

    def _acquire(self, key: str, sender: str) -> tuple[_LockFile, int]:
        lock_file, slot = self._lock_file, _slot(key, sender)
        if lock_file is None:  # closed meanwhile (a read-only store never gets here)
            raise StoreError(f"state store {self._shown} is closed")

        def take() -> bool:
            try:
                return lock_file.try_lock(slot)
            except OSError as exc:
                raise StoreError(f"state store {self._shown}: cannot lock: {exc}") from exc

        self._poll(take, key, sender)
        return lock_file, slot

    def _release(self, key: str, sender: str, handle: tuple[_LockFile, int]) -> None:
        lock_file, slot = handle
        try:
            lock_file.unlock(slot)
        except OSError as exc:  # the kernel still frees it when this process exits
            log.warning("cannot release the lock of %r under %r: %s", sender, key, exc)

    def close(self) -> None:
        """Close the connection and let go of the lock file; idempotent.

        Locks this store holds are still released as usual, unless it was the last store of this
        process on the file: closing the file's descriptor releases them at once.
        """
        self._closing.set()
        with self._guard:
            conn, self._conn = self._conn, None
            lock_file, self._lock_file = self._lock_file, None
        if conn is not None:
            conn.close()
        self._close_readers()
        if lock_file is not None:
            lock_file.detach()
