"""Spool mode: each message is fsync'd into an incoming maildir and answered at once; worker
tasks then feed the router from the spool, so handler latency no longer holds up SMTP clients.

Delivery from the spool is at least once: an entry is claimed, routed, and only then deleted,
so a crash (or a state store that is down) means the message is routed again, never lost. What
the client can no longer be told goes to the undeliverable queue instead: a recipient whose
handler refused the message, the whole message when its handlers time out, and the whole
message after ``max_attempts`` failed tries (their count is kept in the spool entry's name, so
it survives a restart).

The workers are supervised: one that fails (the spool's disk, say) logs the error, puts the
entry back for later and waits a little, longer after each failure in a row; one that ends
anyway is replaced. A stop lets each worker finish the entry it routes, and no more.
"""

from __future__ import annotations

import asyncio
import logging

from mailrouter.errors import QueueError
from mailrouter.inbound.journal_calls import JournalCalls
from mailrouter.inbound.ledger import JournalLedger
from mailrouter.message import MailRequest
from mailrouter.queue import Queue, QueueEntry
from mailrouter.routing.executor import run_blocking
from mailrouter.routing.router import Router

log = logging.getLogger(__name__)

_FIRST_RETRY = 1.0  # seconds before a message whose delivery failed is tried again
_LAST_RETRY = 300.0


class Spool:
    """The incoming maildir and the tasks that deliver from it."""

    def __init__(
        self,
        queue: Queue,
        router: Router,
        *,
        concurrency: int,
        handler_timeout: float = 0,
        max_attempts: int = 10,
    ) -> None:
        if router.undeliverable is None:
            raise ValueError("spool mode needs a router with an undeliverable queue")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts!r}")
        self.queue = queue
        self.router = router
        self.concurrency = concurrency
        self.handler_timeout = handler_timeout or None
        self.max_attempts = max_attempts
        self.undeliverable = router.undeliverable
        self.journal_calls: JournalCalls | None = None  # set by the server: done ones are skipped
        self._executor = router.io_executor
        self._waiting: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}  # key -> its next try
        self._stopping = False

    async def accept(self, message: MailRequest) -> str:
        """Store ``message`` durably (QueueError if it cannot be) and schedule its delivery."""
        key = await run_blocking(self._executor, self.queue.push, message)
        self._waiting.put_nowait(key)
        return key

    async def start(self) -> int:
        """Deliver what an earlier run left in the spool first, then new mail; how much was left."""
        await run_blocking(self._executor, self.queue.recover)
        left = await run_blocking(self._executor, self.queue.keys)
        for key in left:
            self._waiting.put_nowait(key)
        if left:
            log.info("delivering %d messages left in the spool", len(left))
        for _ in range(self.concurrency):
            self._start_worker()
        return len(left)

    async def stop(self, timeout: float) -> None:
        """Stop taking entries at once; let the deliveries under way finish, for up to
        ``timeout`` seconds. What is not delivered stays in the spool for the next start."""
        self._stopping = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks - self._busy:
            task.cancel()
        if self._busy:
            log.info(
                "waiting up to %.0fs for %d messages being routed from the spool",
                timeout,
                len(self._busy),
            )
            _, late = await asyncio.wait(self._busy, timeout=timeout)
            if late:
                log.warning(
                    "%d messages still being routed after %.0fs; they stay in the spool",
                    len(late),
                    timeout,
                )
            for task in late:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def delivering(self) -> int:
        """How many messages are being routed from the spool right now."""
        return len(self._busy)

    def __len__(self) -> int:
        """How many messages wait to be routed (not counting those being routed)."""
        return self._waiting.qsize()

    def _start_worker(self, pause: float = 0) -> None:
        task = asyncio.create_task(self._work(pause))
        self._tasks.add(task)
        task.add_done_callback(self._supervise)

    def _supervise(self, task: asyncio.Task[None]) -> None:
        """A worker ended: if by an error, and the spool is not stopping, start another after a
        pause (a cancelled one was meant to end: by a stop, or the loop's own end)."""
        self._tasks.discard(task)
        if self._stopping or task.cancelled():
            return
        error = task.exception()
        log.error("a spool worker ended (%r); starting another", error, exc_info=error)
        self._start_worker(pause=_FIRST_RETRY)

    async def _work(self, pause: float) -> None:
        """Deliver entries until the spool stops. A failed entry is put back for later, and the
        worker waits before it takes the next: longer after each failure in a row."""
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(pause)
        failures = 0
        while not self._stopping:
            key = await self._waiting.get()
            self._busy.add(task)
            try:
                await self._deliver(key)
                failures = 0
            except Exception as exc:
                failures += 1
                log.error(
                    "a spool worker failed on %s, trying it again in %.0fs: %s",
                    key,
                    _backoff(failures),
                    exc,
                    exc_info=not isinstance(exc, QueueError),
                )
                self._later(key, _backoff(failures))
            finally:
                self._busy.discard(task)
            if failures and not self._stopping:
                await asyncio.sleep(_backoff(failures))

    async def _deliver(self, key: str) -> None:
        """Claim and route one entry; then delete it, or put it back to be tried again.

        A QueueError leaves the entry waiting, or claimed (``recover`` returns it at start)."""
        try:
            entry = await run_blocking(self._executor, self.queue.claim, key)
        except KeyError:
            return  # already delivered
        failure = await self._route(entry)
        if failure is not None and entry.attempts + 1 >= self.max_attempts:
            reason = f"delivery failed {entry.attempts + 1} times, last: {failure}"
            failure = await self._park(entry, reason)
        if failure is not None:
            await self._retry_later(entry, failure)
            return
        await run_blocking(self._executor, self.queue.finish, key)

    async def _route(self, entry: QueueEntry) -> str | None:
        """Route the entry's message; why it must be tried again, or None if it is done with."""
        message = entry.message
        try:
            ledger = None
            if self.journal_calls is not None:
                ledger = await JournalLedger.resume(self.journal_calls, message)
            async with asyncio.timeout(self.handler_timeout):
                result = await self.router.deliver(message, keep_refused=True, ledger=ledger)
            if ledger is not None:
                await ledger.settle(result.replies, result, "", 0.0)
        except TimeoutError:  # a handler that hangs would hang again: park the message
            return await self._park(entry, "handlers timed out")
        except Exception as exc:  # the state store or the queue: try again later
            return f"{type(exc).__name__}: {exc}"
        if result.reasons and not result.queued:
            return "the undeliverable queue is not writable"
        return None

    async def _park(self, entry: QueueEntry, reason: str) -> str | None:
        """Put the whole message into the undeliverable queue; None, or why it cannot be."""
        message = entry.message
        reasons = dict.fromkeys(message.recipients, reason)
        try:
            await run_blocking(self._executor, self.undeliverable.push, message, reasons)
        except QueueError as exc:
            return str(exc)
        log.error(
            "%s from %r to %r queued as undeliverable: %s",
            entry.key,
            message.sender,
            message.recipients,
            reason,
        )
        return None

    async def _retry_later(self, entry: QueueEntry, failure: str) -> None:
        """Put a claimed entry back, one more failed attempt counted in its name, and deliver it
        again after a delay that doubles with each attempt."""
        attempts = entry.attempts + 1
        delay = _backoff(attempts)
        log.error(
            "delivery of %s from the spool failed (attempt %d of %d), retrying in %.0fs: %s",
            entry.key,
            attempts,
            self.max_attempts,
            delay,
            failure,
        )
        key = await run_blocking(self._executor, self.queue.release, entry.key, attempts=attempts)
        self._later(key, delay)

    def _later(self, key: str, delay: float) -> None:
        """Deliver ``key`` again in ``delay`` seconds (after a stop: at the next start)."""
        if not self._stopping:
            self._timers[key] = asyncio.get_running_loop().call_later(delay, self._requeue, key)

    def _requeue(self, key: str) -> None:
        self._timers.pop(key, None)
        self._waiting.put_nowait(key)


def _backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: 1, 2, 4 ... at most 5 minutes."""
    return min(_FIRST_RETRY * 2.0 ** min(failures - 1, 16), _LAST_RETRY)
