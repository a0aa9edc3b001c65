"""State store throughput: get, set and lock/unlock operations per second for each store.

Runs against the real services on this machine (Redis on 127.0.0.1:6379, PostgreSQL on
127.0.0.1:5432, database ``test``); a store whose server is down is reported and skipped.

    python benchmarks/bench_state.py [--operations N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=2000)
    args = parser.parse_args()
    unique = uuid.uuid4().hex[:12]
    with tempfile.TemporaryDirectory() as folder:
        urls = {
            "memory": "memory://",
            "shelve": f"shelve:///{folder}/state.db",
            "sqlite": f"sqlite:///{folder}/shared.db",
            "redis": f"redis://127.0.0.1:6379/0?prefix=mailrouter-bench-{unique}:",
            "postgresql": f"postgresql://postgres@127.0.0.1/test?table=bench_{unique}",
        }
        print(f"{'store':12} {'get/s':>10} {'set/s':>10} {'lock/s':>10}")
        for name, url in urls.items():
            try:
                store = open_store(url)
            except StoreError as exc:
                print(f"{name:12} skipped: {exc}")
                continue
            try:
                gets, sets, locks = measure(store, args.operations)
                store.clear()
            finally:
                store.close()
            print(f"{name:12} {gets:10,.0f} {sets:10,.0f} {locks:10,.0f}")


if __name__ == "__main__":
    main()
