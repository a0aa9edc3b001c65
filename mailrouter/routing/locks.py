"""The locks that keep one sender's transitions from interleaving.

Within a process, tasks for the same (state key, sender) queue on an asyncio lock, so at most
one of them at a time reaches the executor and the store's own lock; a handler thread that
outlives its task (timed out) keeps the asyncio lock until it returns. The store's lock then
only ever waits for other processes (shared stores), and threads are never parked on a lock
whose holder needs a thread to release it, or is a hung handler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Hashable
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from typing import Any


class KeyedAsyncLocks:
    """One asyncio lock per key, created on demand and dropped when nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[Callable[[asyncio.Future[Any]], None]]:
        """Hold the lock for ``key``.

        The block may pass the function it is given a future (a call running in a thread that
        holds the key's store lock): if the block ends first (its task timed out), the key stays
        locked until that future is done, so the key's next tasks wait here, on the loop, and
        not each in a thread of its own.
        """
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        kept: list[asyncio.Future[Any]] = []
        try:
            await lock.acquire()
        except BaseException:
            self._leave(key)
            raise
        try:
            yield kept.append
        finally:
            if kept and not kept[-1].done():
                kept[-1].add_done_callback(lambda _: self._release(key))
            else:
                self._release(key)

    def _release(self, key: Hashable) -> None:
        self._locks[key][0].release()
        self._leave(key)

    def _leave(self, key: Hashable) -> None:
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
