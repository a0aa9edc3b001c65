"""How blocking work (disk, state stores, plain handlers) is called from async code.

``run_blocking`` sends it to an executor, in a copy of the caller's context, so the
ContextVars the server sets (the relay, the template folder) reach it too. Code written once
against ``Blocking`` can also run whole in an executor thread: given ``run_here``, it never
suspends, and ``run_to_end`` drives it there without an event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def start_blocking(
    executor: Executor | None, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> asyncio.Future[T]:
    """Start ``func(*args, **kwargs)`` in ``executor`` (None: the loop's default), in a copy of
    the current contextvars context, as ``asyncio.to_thread`` does; the future of its result."""
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return asyncio.get_running_loop().run_in_executor(executor, call)


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
