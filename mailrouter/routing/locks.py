"""The lanes that keep one sender's transitions from interleaving.

Within a process, the work for one (state key, sender) goes down one lane: one turn at a time,
in arrival order, so at most one of them at a time reaches the store's own lock. A turn is
either a call that runs in an executor thread (a plain handler's whole step), or a hold taken
on the loop (the step of an async handler). When a call ends, the thread that ran it takes the
lane's next call itself: one busy sender's messages follow each other in that thread without a
round trip through the loop in between. A call that outlives its task (timed out) keeps the
lane until it returns. The store's lock then only ever waits for other processes (shared
stores), and threads are never parked on a lock whose holder needs a thread to release it, or
is a hung handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, TypeVar

from mailrouter.routing.executor import BlockingCall, submit

P = ParamSpec("P")
T = TypeVar("T")


class _Call:
    """A lane's turn that runs in a thread."""

    __slots__ = ("blocking", "executor")

    def __init__(self, blocking: BlockingCall[Any], executor: Executor | None) -> None:
        self.blocking, self.executor = blocking, executor


class _Hold:
    """A lane's turn held on the loop: ``granted`` is set when it is this turn's."""

    __slots__ = ("granted",)

    def __init__(self) -> None:
        self.granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def grant(self) -> None:
        if not self.granted.done():
            self.granted.set_result(None)


class KeyedLanes:
    """One lane per key, created on demand and dropped when no turn is left in it."""

    def __init__(self) -> None:
        self._lanes: dict[Hashable, deque[_Call | _Hold]] = {}  # each lane's head has the turn
        self._mutex = threading.Lock()  # lanes move on in threads and on the loop

    async def run(
        self,
        key: Hashable,
        executor: Executor | None,
        func: Callable[P, T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``func(*args, **kwargs)`` in ``executor``, on ``key``'s turn; its result.

        Cancelled before its turn, the call does not run; once running, it keeps the lane
        until it returns, whatever became of its task."""
        blocking = BlockingCall(func, args, kwargs)
        call = _Call(blocking, executor)
        if self._join(key, call):
            self._start(key, call)
        return await blocking.future

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        """Hold ``key``'s lane, on the loop, for the block."""
        turn = _Hold()
        if not self._join(key, turn):
            try:
                await turn.granted
            except asyncio.CancelledError:
                with self._mutex:
                    lane = self._lanes[key]
                    holding = lane[0] is turn  # granted meanwhile: then pass it on
                    if not holding:
                        lane.remove(turn)
                if holding:
                    self._pass_on(key)
                raise
        try:
            yield
        finally:
            self._pass_on(key)

    def _join(self, key: Hashable, turn: _Call | _Hold) -> bool:
        """Queue ``turn`` in ``key``'s lane; whether it is its turn already."""
        with self._mutex:
            lane = self._lanes.setdefault(key, deque())
            lane.append(turn)
            return len(lane) == 1

    def _next(self, key: Hashable) -> _Call | _Hold | None:
        """End the head's turn: the turn that comes next, if any (else the lane goes)."""
        with self._mutex:
            lane = self._lanes[key]
            lane.popleft()
            if lane:
                return lane[0]
            del self._lanes[key]
            return None

    def _pass_on(self, key: Hashable) -> None:
        """End the head's turn, on the loop, and give the lane to the next."""
        turn = self._next(key)
        if isinstance(turn, _Hold):
            turn.grant()
        elif turn is not None:
            self._start(key, turn)

    def _start(self, key: Hashable, call: _Call) -> None:
        """Start running ``key``'s calls, from ``call`` (the head), in a thread (on the loop)."""
        try:
            submit(call.executor, lambda: self._drain(key, call))
        except RuntimeError as exc:  # the executor is shut down: the call fails, the lane goes on
            call.blocking.fail(exc)
            self._pass_on(key)

    def _drain(self, key: Hashable, call: _Call) -> None:
        """Run ``call`` and the calls queued behind it, here, until a hold's turn (granted on
        the loop) or the lane's end."""
        turn: _Call | _Hold | None = call
        while isinstance(turn, _Call):
            outcome = turn.blocking.make()
            ended, turn = turn, self._next(key)  # the lane moves on before the task resumes
            ended.blocking.hand_over(outcome)
        if turn is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody holds any more
                turn.granted.get_loop().call_soon_threadsafe(turn.grant)

    def __len__(self) -> int:
        return len(self._lanes)


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
