"""JournalCalls: the journal calls of one pass of the loop go to the executor as one job, the
writes in one transaction; each caller gets its own result or error."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from mailrouter.inbound.journal_calls import JournalCalls
from mailrouter.journal import Arrival, Journal, JournalError, Outcome, Write, open_journal
from mailrouter.journal.records import FINISH

DELIVERED = Outcome("delivered", reply="250 ok")


class CountingExecutor(ThreadPoolExecutor):
    """A thread pool that counts the jobs it is given."""

    jobs = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def executor() -> Iterator[CountingExecutor]:
    with CountingExecutor(4) as pool:
        yield pool


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = open_journal(f"sqlite://{tmp_path}/journal.db")
    assert opened is not None
    with opened:
        opened.entries()  # the tables
        yield opened


def arrival(n: int, rcpt: str = "a@x.org") -> Arrival:
    return Arrival("s@x.org", [rcpt], f"Subject: {n}\r\n\r\nbody {n}\r\n".encode())


def finish(one: Arrival) -> Write:
    return Write(FINISH, one, 1, [(one.recipients[0], DELIVERED)], "250 ok", 0.1)


async def test_calls_of_one_pass_are_one_job(journal: Journal, executor: CountingExecutor) -> None:
    calls = JournalCalls(journal, executor)
    arrivals = [arrival(n) for n in range(10)]
    attempts = await asyncio.gather(*(calls.begin(one) for one in arrivals))
    assert [attempt.number for attempt in attempts] == [1] * 10
    assert executor.jobs == 1
    await asyncio.gather(*(calls.write(finish(one)) for one in arrivals))
    assert executor.jobs == 2
    for one in arrivals:  # committed before the callers went on
        assert journal.get(one.delivery_id).status == "delivered"  # type: ignore[union-attr]
    again = await asyncio.gather(*(calls.begin(one) for one in arrivals[:3]))
    assert [attempt.number for attempt in again] == [2] * 3
    assert all(attempt.done for attempt in again)


async def test_a_failing_write_fails_its_caller_alone(
    tmp_path: Path, journal: Journal, executor: CountingExecutor
) -> None:
    with closing(sqlite3.connect(tmp_path / "journal.db")) as conn:
        conn.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON {journal.table}_recipients"
            " WHEN NEW.rcpt = 'bad@x.org' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    calls = JournalCalls(journal, executor)
    good, bad = arrival(1), arrival(2, "bad@x.org")
    results = await asyncio.gather(
        calls.write(finish(good)), calls.write(finish(bad)), calls.begin(arrival(3)),
        return_exceptions=True,
    )  # fmt: skip
    assert results[0] is None and results[2].number == 1  # type: ignore[union-attr]
    assert isinstance(results[1], JournalError) and "refused by the test" in str(results[1])
    assert executor.jobs == 1
    assert journal.get(good.delivery_id) is not None
    assert journal.get(bad.delivery_id) is None


async def test_a_closed_journal_fails_each_call(
    journal: Journal, executor: CountingExecutor
) -> None:
    calls = JournalCalls(journal, executor)
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        await calls.begin(arrival(1))
    with pytest.raises(JournalError, match="closed"):
        await calls.write(finish(arrival(1)))


async def test_a_shut_down_executor_fails_the_calls(
    journal: Journal, executor: CountingExecutor
) -> None:
    calls = JournalCalls(journal, executor)
    executor.shutdown()
    results = await asyncio.gather(
        calls.begin(arrival(1)), calls.write(finish(arrival(2))), return_exceptions=True
    )
    assert all(isinstance(result, RuntimeError) for result in results)


async def test_a_cancelled_caller_does_not_undo_the_batch(
    journal: Journal, executor: CountingExecutor
) -> None:
    """The write of a caller cancelled after queueing it is still made: it records a fact
    (a recipient's handlers finished), which a retry must see."""
    calls = JournalCalls(journal, executor)
    kept, dropped = arrival(1), arrival(2)
    waiting = asyncio.ensure_future(calls.write(finish(dropped)))
    await asyncio.sleep(0)
    waiting.cancel()
    await calls.write(finish(kept))
    assert waiting.cancelled()
    assert journal.get(dropped.delivery_id) is not None
