"""Per-sender FSM state: the StateStorage protocol, its built-in stores, and ``open_store(url)``.

A state is a string kept per (state key, sender); ``START`` is the default and is never stored.
``ShelveStorage`` is the embedded, persistent default: a ``shelve.Shelf`` over a small SQLite
mapping (the same schema as Python 3.13's ``dbm.sqlite3``, so files are interchangeable). We do
not use ``dbm.sqlite3`` itself: it binds its connection to the opening thread, while handlers run
in executor threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shelve
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import SplitResult, urlsplit

from mailrouter.errors import StoreError
from mailrouter.sqlitemap import SqliteMapping

log = logging.getLogger(__name__)

START = "START"
ERROR = "ERROR"


class StateStorage(Protocol):
    """Where the router keeps each sender's state, per state key."""

    def get(self, key: str, sender: str) -> str:
        """The state of ``sender`` under ``key``, or ``START`` when none is stored."""

    def set(self, key: str, sender: str, state: str) -> None:
        """Store ``state``; setting ``START`` removes the entry."""

    def clear(self) -> None:
        """Remove every state."""

    def lock(self, key: str, sender: str) -> AbstractContextManager[None]:
        """Serialise one sender's transitions under one key (non-reentrant, any-thread release)."""

    def close(self) -> None:
        """Release the store's resources; idempotent."""


class _Entry:
    """One keyed lock and how many threads hold or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class _KeyedLocks:
    """One ``threading.Lock`` per (key, sender), dropped once nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}

    @contextmanager
    def hold(self, key: str, sender: str) -> Iterator[None]:
        """Hold the lock of (key, sender); a generator may be resumed, so exited, in any thread."""
        ident = (key, sender)
        with self._guard:
            entry = self._entries.get(ident) or self._entries.setdefault(ident, _Entry())
            entry.users += 1
        try:
            entry.lock.acquire()
            try:
                yield
            finally:
                entry.lock.release()
        finally:
            with self._guard:
                entry.users -= 1
                if not entry.users:
                    del self._entries[ident]


class _Closable(ABC):
    """``with store:`` support for the built-in stores."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's resources."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MemoryStorage(_Closable):
    """States in a dict: for tests and single-process servers that may forget on restart."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._states: dict[tuple[str, str], str] = {}
        self._locks = _KeyedLocks()

    def get(self, key: str, sender: str) -> str:
        """The state of ``sender`` under ``key``, or ``START``."""
        with self._guard:
            return self._states.get((key, sender), START)

    def set(self, key: str, sender: str, state: str) -> None:
        """Store ``state``; ``START`` removes the entry."""
        with self._guard:
            if state == START:
                self._states.pop((key, sender), None)
            else:
                self._states[(key, sender)] = state

    def clear(self) -> None:
        """Remove every state."""
        with self._guard:
            self._states.clear()

    def lock(self, key: str, sender: str) -> AbstractContextManager[None]:
        """Hold the transition lock of (key, sender)."""
        return self._locks.hold(key, sender)

    def close(self) -> None:
        """Nothing to release; present for the protocol."""


class ShelveStorage(_Closable):
    """The embedded persistent store: one SQLite-backed shelf, open for the store's lifetime.

    A writable store holds an exclusive ``flock`` on ``<path>.lock`` so that a second server
    cannot share the file; ``readonly=True`` takes no lock and refuses writes.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._locks = _KeyedLocks()
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

    def _shelf_key(self, key: str, sender: str) -> str:
        if self._closed:
            raise StoreError(f"state store {self.path} is closed")
        return json.dumps([key, sender])  # ASCII-only, so any str (even lone surrogates) encodes

    def _writable(self) -> None:
        if self.readonly:
            raise StoreError(f"state store {self.path} is open read-only")

    def get(self, key: str, sender: str) -> str:
        """The state of ``sender`` under ``key``, or ``START``."""
        try:
            state = self._shelf[self._shelf_key(key, sender)]
        except KeyError:
            return START
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

    def clear(self) -> None:
        """Remove every state."""
        self._writable()
        self._shelf_key("", "")  # raises when closed
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


StoreFactory = Callable[[str, bool], StateStorage]


def _open_memory(url: str, readonly: bool) -> StateStorage:
    return MemoryStorage()


def _open_shelve(url: str, readonly: bool) -> StateStorage:
    parts = _split(url)
    if parts.query or parts.fragment:
        raise StoreError(f"state store URL {url!r}: shelve:// takes no query or fragment")
    path = parts.netloc + parts.path
    if not path or path.endswith("/"):
        raise StoreError(f"state store URL {url!r} names no file, e.g. shelve:///var/lib/state.db")
    return ShelveStorage(path, readonly=readonly)


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise StoreError(f"malformed state store URL {url!r}: {exc}") from exc


def _open_sqlite(url: str, readonly: bool) -> StateStorage:
    from mailrouter.stores.sqlite import SqliteStorage

    return SqliteStorage.from_url(url, readonly=readonly)


def _open_redis(url: str, readonly: bool) -> StateStorage:
    try:
        from mailrouter.stores.redis import RedisStorage
    except ModuleNotFoundError as exc:
        raise _missing_extra(url, exc, "redis", {"redis"}) from exc
    return RedisStorage.from_url(url, readonly=readonly)


def _open_postgres(url: str, readonly: bool) -> StateStorage:
    try:
        from mailrouter.stores.postgres import PostgresStorage
    except ModuleNotFoundError as exc:
        raise _missing_extra(url, exc, "postgres", {"psycopg", "psycopg_pool"}) from exc
    return PostgresStorage.from_url(url, readonly=readonly)


def _missing_extra(
    url: str, exc: ModuleNotFoundError, extra: str, packages: set[str]
) -> BaseException:
    if (exc.name or "").partition(".")[0] not in packages:
        return exc
    scheme = _split(url).scheme
    return StoreError(
        f"{scheme}:// state stores need the {exc.name!r} package: pip install 'mailrouter[{extra}]'"
    )


_FACTORIES: dict[str, StoreFactory] = {
    "memory": _open_memory,
    "shelve": _open_shelve,
    "sqlite": _open_sqlite,
    "redis": _open_redis,
    "rediss": _open_redis,
    "postgresql": _open_postgres,
    "postgres": _open_postgres,
}


def open_store(url: str, *, readonly: bool = False) -> StateStorage:
    """Open the state store named by ``url``.

    ``memory://``; ``shelve:///abs/path`` or ``shelve://relative/path`` (relative to the current
    directory); the shared stores ``sqlite:///abs/path``, ``redis://host:port/db`` and
    ``postgresql://user@host/db`` (see ``mailrouter.stores``); or a custom store's import string,
    ``package.module:StoreClass``.
    """
    if "://" not in url and url.partition(":")[2]:
        from mailrouter.stores.custom import open_custom

        return open_custom(url, readonly=readonly)
    factory = _FACTORIES.get(_split(url).scheme)
    if factory is None:
        known = ", ".join(f"{scheme}://" for scheme in sorted(_FACTORIES))
        raise StoreError(
            f"unknown state store URL {url!r}; known schemes: {known},"
            " or an import string like 'package.module:StoreClass'"
        )
    return factory(url, readonly)
