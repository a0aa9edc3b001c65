"""The base of every state store: the StateStorage protocol, the START and ERROR states, and the
parts the built-in stores share (``with`` support, per-(key, sender) thread locks, URL parsing).

A state is a string kept per (state key, sender); ``START`` is the default and is never stored.
Listing the stored states (``ListableStorage.items``) is optional: every built-in store has it, a
custom store may not, and ``listable`` says so clearly.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Protocol, Self, cast
from urllib.parse import SplitResult, urlsplit

from mailrouter.errors import StoreError

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


class ListableStorage(StateStorage, Protocol):
    """A state store that can list what it holds (all built-in stores; optional for custom ones)."""

    def items(self) -> Iterable[tuple[str, str, str]]:
        """Every stored ``(key, sender, state)``, in no particular order."""


def listable(store: StateStorage) -> ListableStorage:
    """``store`` as a ListableStorage; a StoreError says so when it has no ``items()``."""
    if not callable(getattr(store, "items", None)):
        raise StoreError(f"state store {store!r} cannot list its states: it has no items() method")
    return cast(ListableStorage, store)


class _Entry:
    """One keyed lock and how many threads hold or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class KeyedLocks:
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


class Closable(ABC):
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


def split_url(url: str) -> SplitResult:
    """``url`` split into its parts; a StoreError names a malformed one."""
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise StoreError(f"malformed state store URL {url!r}: {exc}") from exc
