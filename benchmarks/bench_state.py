"""State store throughput: get, set and lock/unlock operations per second for each store, and
end to end: messages per second of one mailrouter process against two sharing the store.

Runs against the real services on this machine (Redis on 127.0.0.1:6379, PostgreSQL on
127.0.0.1:5432, database ``test``); a store whose server is down is reported and skipped.

    python benchmarks/bench_state.py [--operations N]
    python benchmarks/bench_state.py --end-to-end [--messages N] [--rounds R]

End to end, ``smtp_bench.py``'s load generator (16 connections x 10 messages of 2 KB, 16
senders) drives a handler that moves its sender to the next state with every message (a get and
a set per message), on each shared store: one process, ``workers = 2`` (one port), and two
instances on two ports (the connections alternate). Nothing is pinned: the processes and the
load generator share this machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import smtp_bench
import targets

from mailrouter.errors import StoreError
from mailrouter.state import StateStorage, open_store


def rate(operations: int, action: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(operations):
        action(i)
    return operations / (time.perf_counter() - start)


def measure(store: StateStorage, operations: int) -> tuple[float, float, float]:
    senders = [f"sender{i}@x.org" for i in range(100)]

    def lock(i: int) -> None:
        with store.lock("bench", senders[i % 100]):
            pass

    sets = rate(operations, lambda i: store.set("bench", senders[i % 100], f"S{i}"))
    gets = rate(operations, lambda i: store.get("bench", senders[i % 100]))
    locks = rate(operations, lock)
    return gets, sets, locks


COUNTING = """
from mailrouter import route, route_like

@route("bench@(host)")
def START(message, host=None):
    return NEXT

@route_like(START)
def NEXT(message, host=None):
    return START
"""

LAYOUTS = {"one process": (1, 1), "workers = 2": (1, 2), "two instances": (2, 1)}


def store_urls(folder: str) -> dict[str, str]:
    """Every store by name, each with its own keys (Redis prefix, PostgreSQL table)."""
    unique = uuid.uuid4().hex[:12]
    return {
        "memory": "memory://",
        "shelve": f"shelve:///{folder}/state.db",
        "sqlite": f"sqlite:///{folder}/shared.db",
        "redis": f"redis://127.0.0.1:6379/0?prefix=mailrouter-bench-{unique}:",
        "postgresql": f"postgresql://postgres@127.0.0.1/test?table=bench_{unique}",
    }


def operations(folder: str, count: int) -> None:
    """get, set and lock/unlock operations per second, in this process, for each store."""
    print(f"{'store':12} {'get/s':>10} {'set/s':>10} {'lock/s':>10}")
    for name, url in store_urls(folder).items():
        try:
            store = open_store(url)
        except StoreError as exc:
            print(f"{name:12} skipped: {exc}")
            continue
        try:
            gets, sets, locks = measure(store, count)
            store.clear()
        finally:
            store.close()
        print(f"{name:12} {gets:10,.0f} {sets:10,.0f} {locks:10,.0f}")


def end_to_end(folder: str, messages: int, rounds: int) -> None:
    """Messages per second of one process, two workers and two instances on each shared store."""
    targets.OPTIONS.pin = False
    data = smtp_bench.message(2048)
    print(f"{'store':12} {'layout':14} {'msg/s':>8} {'x one':>6}")
    for name in ("sqlite", "redis", "postgresql"):
        url = store_urls(folder)[name]
        best: dict[str, float] = {}
        for _ in range(rounds):
            for layout, (instances, workers) in LAYOUTS.items():
                specs = [
                    targets.mailrouter(
                        Path(folder),
                        f"{name} {layout} {i}",
                        COUNTING,
                        state_url=url,
                        workers=workers,
                    )
                    for i in range(instances)
                ]
                with contextlib.ExitStack() as stack:
                    ports = [stack.enter_context(targets.running(spec)).port for spec in specs]
                    smtp_bench.run_client(ports, 4, 5, 40, data)  # warm up
                    start = time.perf_counter()
                    smtp_bench.run_client(ports, 16, 10, messages, data)
                    rate = messages / (time.perf_counter() - start)
                best[layout] = max(best.get(layout, 0.0), rate)
        for layout, rate in best.items():
            print(f"{name:12} {layout:14} {rate:8,.0f} {rate / best['one process']:6.2f}")
        store = open_store(url)
        store.clear()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=2000)
    parser.add_argument("--end-to-end", action="store_true")
    parser.add_argument("--messages", type=int, default=4800, help="end to end, per run")
    parser.add_argument("--rounds", type=int, default=2, help="end to end: the best of")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.end_to_end:
            end_to_end(folder, args.messages, args.rounds)
        else:
            operations(folder, args.operations)


if __name__ == "__main__":
    main()
