"""The locks that keep one sender's transitions from interleaving.

Within a process, tasks for the same (state key, sender) queue on an asyncio lock, so at most
one of them at a time reaches the executor and the store's own lock. The store's lock then only
ever waits for other processes (shared stores), and executor threads are never all parked on a
lock whose holder needs a thread to release it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from typing import Any


class KeyedAsyncLocks:
    """One asyncio lock per key, created on demand and dropped when nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        """Hold the lock for ``key``."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


@contextlib.asynccontextmanager
async def held_in_executor(
    lock: AbstractContextManager[Any], executor: Executor | None
) -> AsyncIterator[None]:
    """Hold a blocking (possibly cross-process) lock from async code.

    It is taken in the executor, so the loop never waits on it, and released on the loop: a
    release never blocks, and must not need a free executor thread.
    """
    loop = asyncio.get_running_loop()
    acquiring = loop.run_in_executor(executor, lock.__enter__)

    def release_if_taken(done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is None:
            lock.__exit__(None, None, None)

    try:
        await asyncio.shield(acquiring)
    except asyncio.CancelledError:
        acquiring.add_done_callback(release_if_taken)
        raise
    try:
        yield
    finally:
        lock.__exit__(None, None, None)
