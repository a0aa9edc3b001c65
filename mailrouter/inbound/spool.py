"""Spool mode: each message is fsync'd into an incoming maildir and answered at once; worker
tasks then feed the router from the spool, so handler latency no longer holds up SMTP clients.

Delivery from the spool is at least once: an entry is claimed, routed, and only then deleted,
so a crash (or a state store that is down) means the message is routed again, never lost. What
the client can no longer be told goes to the undeliverable queue instead: a recipient whose
handler refused the message, or the whole message when its handlers time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from mailrouter.errors import QueueError
from mailrouter.message import MailRequest
from mailrouter.queue import Queue
from mailrouter.routing.router import Router

log = logging.getLogger(__name__)

_FIRST_RETRY = 1.0  # seconds before a message whose delivery failed is tried again
_LAST_RETRY = 300.0


class Spool:
    """The incoming maildir and the tasks that deliver from it."""

    def __init__(
        self, queue: Queue, router: Router, *, concurrency: int, handler_timeout: float = 0
    ) -> None:
        self.queue = queue
        self.router = router
        self.concurrency = concurrency
        self.handler_timeout = handler_timeout or None
        if router.undeliverable is None:
            raise ValueError("spool mode needs a router with an undeliverable queue")
        self.undeliverable = router.undeliverable
        self._waiting: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._retries: dict[str, float] = {}  # key -> the delay before its next try
        self._timers: set[asyncio.TimerHandle] = set()

    async def accept(self, message: MailRequest) -> str:
        """Store ``message`` durably (QueueError if it cannot be) and schedule its delivery."""
        key: str = await self._blocking(self.queue.push, message)
        self._waiting.put_nowait(key)
        return key

    async def start(self) -> int:
        """Deliver what an earlier run left in the spool first, then new mail; how much was left."""
        await self._blocking(self.queue.recover)
        left: list[str] = await self._blocking(self.queue.keys)
        for key in left:
            self._waiting.put_nowait(key)
        if left:
            log.info("delivering %d messages left in the spool", len(left))
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.concurrency)]
        return len(left)

    async def stop(self, timeout: float) -> None:
        """Stop taking entries; let deliveries under way finish for up to ``timeout`` seconds.

        What is not delivered stays in the spool for the next start.
        """
        for timer in self._timers:
            timer.cancel()
        for task in self._tasks:
            if task not in self._busy:
                task.cancel()
        if self._busy:
            _, late = await asyncio.wait(self._busy, timeout=timeout)
            for task in late:
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    @property
    def delivering(self) -> int:
        """How many messages are being routed from the spool right now."""
        return len(self._busy)

    def __len__(self) -> int:
        """How many messages wait to be routed (not counting those being routed)."""
        return self._waiting.qsize()

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while True:
            key = await self._waiting.get()
            self._busy.add(task)
            try:
                await self._deliver(key)
            finally:
                self._busy.discard(task)

    async def _deliver(self, key: str) -> None:
        try:
            entry = await self._blocking(self.queue.claim, key)
        except KeyError:
            return  # already delivered
        except QueueError as exc:
            log.error("cannot read %s from the spool: %s", key, exc)
            return
        message = entry.message
        try:
            result = await asyncio.wait_for(
                self.router.deliver(message, keep_refused=True), self.handler_timeout
            )
        except TimeoutError:  # a handler that hangs would hang again: park the message
            reasons = dict.fromkeys(message.recipients, "handlers timed out")
            try:
                await self._blocking(self.undeliverable.push, message, reasons)
            except QueueError as exc:
                self._retry_later(key, str(exc))
                return
            log.error("handlers for %s timed out; queued as undeliverable", key)
        except Exception as exc:  # the state store or the queue: try again later
            self._retry_later(key, f"{type(exc).__name__}: {exc}")
            return
        else:
            if result.reasons and not result.queued:
                self._retry_later(key, "the undeliverable queue is not writable")
                return
        self._retries.pop(key, None)
        await self._blocking(self.queue.finish, key)

    def _retry_later(self, key: str, why: str) -> None:
        """Put a claimed entry back and deliver it again after a growing delay."""
        delay = self._retries.get(key, _FIRST_RETRY)
        self._retries[key] = min(delay * 2, _LAST_RETRY)
        log.error("delivery of %s from the spool failed, retrying in %.0fs: %s", key, delay, why)
        self.queue.release(key)
        timer = asyncio.get_running_loop().call_later(delay, self._requeue, key)
        self._timers.add(timer)

    def _requeue(self, key: str) -> None:
        self._timers = {timer for timer in self._timers if not timer.cancelled()}
        self._waiting.put_nowait(key)

    async def _blocking(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.router.executor, func, *args)
