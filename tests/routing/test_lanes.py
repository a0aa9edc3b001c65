"""KeyedLanes: one turn at a time per key, in order; a busy key's calls follow each other in
one thread; cancelled turns never run, timed-out calls keep the lane until they return."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from mailrouter.routing.locks import KeyedLanes


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as pool:
        yield pool


async def test_one_keys_turns_run_one_at_a_time_in_order(executor: ThreadPoolExecutor) -> None:
    lanes, ran, inside = KeyedLanes(), [], []

    def call(n: int) -> int:
        inside.append(n)
        assert len(inside) == 1, "two turns of one key at once"
        threading.Event().wait(0.001)
        ran.append(n)
        inside.remove(n)
        return n * 10

    async def held(n: int) -> int:
        async with lanes.hold("k"):
            inside.append(n)
            assert len(inside) == 1, "two turns of one key at once"
            await asyncio.sleep(0.001)
            ran.append(n)
            inside.remove(n)
        return n * 10

    turns = [lanes.run("k", executor, call, n) if n % 3 else held(n) for n in range(12)]
    assert await asyncio.gather(*turns) == [n * 10 for n in range(12)]
    assert ran == list(range(12))
    assert len(lanes) == 0  # no lane left behind


async def test_a_busy_keys_calls_follow_each_other_in_one_thread(
    executor: ThreadPoolExecutor,
) -> None:
    lanes, first_may_end = KeyedLanes(), threading.Event()

    def call(block: bool) -> int:
        if block:
            first_may_end.wait(10)
        return threading.get_ident()

    first = asyncio.ensure_future(lanes.run("k", executor, call, True))
    await asyncio.sleep(0.05)  # the first call is running
    rest = [asyncio.ensure_future(lanes.run("k", executor, call, False)) for _ in range(5)]
    await asyncio.sleep(0)
    first_may_end.set()
    threads = {await first, *await asyncio.gather(*rest)}
    assert len(threads) == 1


async def test_keys_do_not_wait_for_each_other(executor: ThreadPoolExecutor) -> None:
    lanes, release = KeyedLanes(), threading.Event()
    blocked = asyncio.ensure_future(lanes.run("slow", executor, release.wait, 10))
    assert await lanes.run("quick", executor, lambda: "done") == "done"
    async with lanes.hold("other"):
        pass
    release.set()
    assert await blocked is True


async def test_a_call_cancelled_before_its_turn_never_runs(executor: ThreadPoolExecutor) -> None:
    lanes, release, ran = KeyedLanes(), threading.Event(), []
    running = asyncio.ensure_future(lanes.run("k", executor, release.wait, 10))
    await asyncio.sleep(0.05)
    waiting = asyncio.ensure_future(lanes.run("k", executor, ran.append, "waiting"))
    await asyncio.sleep(0)
    waiting.cancel()
    after = asyncio.ensure_future(lanes.run("k", executor, ran.append, "after"))
    release.set()
    await running
    await after
    assert waiting.cancelled()
    assert ran == ["after"]
    assert len(lanes) == 0


async def test_a_timed_out_call_keeps_the_lane_until_it_returns(
    executor: ThreadPoolExecutor,
) -> None:
    lanes, release, events = KeyedLanes(), threading.Event(), []

    def slow() -> None:
        release.wait(10)
        events.append("slow returned")

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(lanes.run("k", executor, slow), 0.05)
    nxt = asyncio.ensure_future(lanes.run("k", executor, events.append, "next ran"))
    held = asyncio.ensure_future(_hold(lanes, "k", events))
    await asyncio.sleep(0.05)
    assert events == []  # both wait for the timed-out call
    release.set()
    await asyncio.gather(nxt, held)
    assert events == ["slow returned", "next ran", "held"]
    assert len(lanes) == 0


async def _hold(lanes: KeyedLanes, key: str, events: list[str]) -> None:
    async with lanes.hold(key):
        events.append("held")


async def test_a_hold_cancelled_while_waiting_leaves_the_lane(
    executor: ThreadPoolExecutor,
) -> None:
    lanes, events = KeyedLanes(), []
    async with lanes.hold("k"):
        waiting = asyncio.ensure_future(_hold(lanes, "k", events))
        await asyncio.sleep(0)
        waiting.cancel()
        after = asyncio.ensure_future(lanes.run("k", executor, events.append, "after"))
        await asyncio.sleep(0)
    await after
    assert waiting.cancelled()
    assert events == ["after"]
    assert len(lanes) == 0


async def test_a_failing_call_raises_to_its_task_and_the_lane_goes_on(
    executor: ThreadPoolExecutor,
) -> None:
    lanes = KeyedLanes()

    def fail() -> None:
        raise ValueError("boom")

    failing = asyncio.ensure_future(lanes.run("k", executor, fail))
    after = asyncio.ensure_future(lanes.run("k", executor, lambda: "after"))
    with pytest.raises(ValueError, match="boom"):
        await failing
    assert await after == "after"
    assert len(lanes) == 0


async def test_a_shut_down_executor_fails_the_call(executor: ThreadPoolExecutor) -> None:
    lanes = KeyedLanes()
    executor.shutdown()
    with pytest.raises(RuntimeError):
        await lanes.run("k", executor, lambda: None)
    assert len(lanes) == 0
