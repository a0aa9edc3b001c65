"""The journal calls of one pass of the event loop, made together.

Every delivery asks the journal twice at least (``begin``, then a write); made one by one, each
call is a round trip to an executor thread and each write a transaction of its own. Here the
calls queued during one pass of the loop go to the I/O executor as one job: the reads one
after another, the writes in one transaction (``Journal.write_all``). Each caller still waits
for its own call, so a write is committed before its caller goes on.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

from mailrouter.journal import Arrival, Attempt, Journal, Write
from mailrouter.routing.executor import start_blocking

_Calls = list[tuple[Any, "asyncio.Future[Any]"]]


class JournalCalls:
    """``begin`` and the writes of one journal, batched per pass of the loop."""

    def __init__(self, journal: Journal, executor: Executor | None) -> None:
        self.journal = journal
        self.executor = executor  # where the batches run: the server's I/O threads
        self._begins: _Calls = []
        self._writes: _Calls = []
        self._due = False  # a batch is scheduled for the end of this pass

    async def begin(self, arrival: Arrival) -> Attempt:
        """``Journal.begin``."""
        result: Attempt = await self._queue(self._begins, arrival)
        return result

    async def write(self, write: Write) -> None:
        """``Journal.record`` or ``Journal.finish``, as ``write`` says; once it is committed."""
        await self._queue(self._writes, write)

    def _queue(self, calls: _Calls, call: object) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        calls.append((call, future))
        if not self._due:
            self._due = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """Send the calls queued so far to the executor, as one job."""
        self._due = False
        begins, self._begins = self._begins, []
        writes, self._writes = self._writes, []
        try:
            job = start_blocking(
                self.executor, self._make, [a for a, _ in begins], [w for w, _ in writes]
            )
        except RuntimeError as exc:  # the executor is shut down
            _hand_out(begins + writes, [exc] * (len(begins) + len(writes)))
            return
        job.add_done_callback(lambda done: _finish(done, begins, writes))

    def _make(
        self, arrivals: list[Arrival], writes: list[Write]
    ) -> tuple[list[Attempt | Exception], list[Exception | None]]:
        """The calls, in a thread: each ``begin``'s attempt or error, each write's error."""
        attempts: list[Attempt | Exception] = []
        for arrival in arrivals:
            try:
                attempts.append(self.journal.begin(arrival))
            except Exception as exc:  # JournalError, or a bug: that caller's to handle
                attempts.append(exc)
        errors: list[Exception | None] = []
        try:
            errors.extend(self.journal.write_all(writes))
        except Exception as exc:  # a bug: every write's, the reads stand
            errors = [exc] * len(writes)
        return attempts, errors


def _finish(
    done: asyncio.Future[tuple[list[Attempt | Exception], list[Exception | None]]],
    begins: _Calls,
    writes: _Calls,
) -> None:
    """Give each caller of a batch its result (on the loop)."""
    error = done.exception()
    if error is not None:  # the batch itself failed: every call did
        _hand_out(begins + writes, [error] * (len(begins) + len(writes)))
        return
    attempts, errors = done.result()
    _hand_out(begins, attempts)
    _hand_out(writes, errors)


def _hand_out(calls: _Calls, results: list[Any]) -> None:
    for (_, future), result in zip(calls, results, strict=True):
        if future.done():  # its caller was cancelled
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
