"""``memory://``: states in a dict, for tests and servers that may forget them on restart."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager

from mailrouter.state.base import START, Closable, KeyedLocks


class MemoryStorage(Closable):
    """States in a dict: for tests and single-process servers that may forget on restart."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._states: dict[tuple[str, str], str] = {}
        self._locks = KeyedLocks()

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

    def items(self) -> list[tuple[str, str, str]]:
        """Every stored ``(key, sender, state)``."""
        with self._guard:
            return [(key, sender, state) for (key, sender), state in self._states.items()]

    def clear(self) -> None:
        """Remove every state."""
        with self._guard:
            self._states.clear()

    def lock(self, key: str, sender: str) -> AbstractContextManager[None]:
        """Hold the transition lock of (key, sender)."""
        return self._locks.hold(key, sender)

    def close(self) -> None:
        """Nothing to release; present for the protocol."""

    @classmethod
    def from_url(cls, url: str, *, readonly: bool = False) -> MemoryStorage:
        """A new, empty store (``memory://`` takes no options)."""
        return cls()
