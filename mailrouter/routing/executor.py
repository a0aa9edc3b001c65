"""How blocking work (disk, state stores, plain handlers) is called from async code.

``run_blocking`` sends it to an executor, in a copy of the caller's context, so the
ContextVars the server sets (the relay, the template folder) reach it too. The thread hands the
result straight to the loop (one ``call_soon_threadsafe``), with none of the future chaining of
``loop.run_in_executor``: a call costs the loop a future and a queue put. Code written once
against ``Blocking`` can also run whole in an executor thread: given ``run_here``, it never
suspends, and ``run_to_end`` drives it there without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
#: How a call ended: the function that sets it on the future, and its result or exception
Outcome = tuple[Callable[[Any, "asyncio.Future[Any]"], None], Any]


class BlockingCall(Generic[T]):
    """A call to make in a thread, whose result (or exception) is set on ``future``, on its loop.

    A call whose future is cancelled before it starts does not run; once started, it runs to
    the end and its result is dropped."""

    __slots__ = ("call", "future", "loop")

    def __init__(self, func: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[T] = self.loop.create_future()
        self.call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)

    def run(self) -> None:
        """Make the call, here (a thread), and hand its outcome to the loop."""
        self.hand_over(self.make())

    def make(self) -> Outcome | None:
        """Make the call, here: its outcome, or None if it was cancelled before it started."""
        if self.future.cancelled():  # a racy read, at worst a call whose result is dropped
            return None
        try:
            return _resolve, self.call()
        except BaseException as exc:  # the awaiting task's to handle, like any other result
            return _reject, exc

    def hand_over(self, outcome: Outcome | None) -> None:
        """Set the outcome on the future, on the loop."""
        if outcome is not None:
            settle, value = outcome
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                self.loop.call_soon_threadsafe(settle, value, self.future)

    def fail(self, error: BaseException) -> None:
        """End the call with ``error`` without running it (on the loop)."""
        _reject(error, self.future)


def _resolve(result: Any, future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(result)


def _reject(error: BaseException, future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(error)


def start_blocking(
    executor: Executor | None, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> asyncio.Future[T]:
    """Start ``func(*args, **kwargs)`` in ``executor`` (None: the loop's default), in a copy of
    the current contextvars context, as ``asyncio.to_thread`` does; the future of its result.
    Cancelling the future before the call starts keeps it from running."""
    call = BlockingCall(func, args, kwargs)
    submit(executor, call.run)
    return call.future


def submit(executor: Executor | None, work: Callable[[], object]) -> None:
    """Run ``work`` in ``executor`` (None: the running loop's default executor)."""
    if executor is None:
        asyncio.get_running_loop().run_in_executor(None, work)
    else:
        executor.submit(work)


async def run_blocking(
    executor: Executor | None, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> T:
    """``start_blocking`` and wait for the result."""
    return await start_blocking(executor, func, *args, **kwargs)


class Blocking(Protocol):
    """A way to make a blocking call from a coroutine: ``await blocking(func, *args)``."""

    def __call__(
        self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Awaitable[T]: ...


async def run_here(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """The ``Blocking`` that makes the call here and now, for code already off the loop."""
    return func(*args, **kwargs)


def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (it awaits only ``run_here``) to its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError(f"{coro!r} suspended, but there is no event loop to resume it")
