"""In-process routing throughput: deliveries per second through a trivial stateful handler.

Compares MemoryStorage, ShelveStorage (kept open, SQLite-backed, durable) and a shelf reopened
on every call as Lamson's ShelveStorage did. Run by hand:

    python benchmarks/bench_router.py [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import shelve
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailrouter import MailRequest, Router
from mailrouter.state import START, MemoryStorage, ShelveStorage, StateStorage

HANDLER = """
from mailrouter import route

@route("bench@example.com")
def START(message):
    return NEXT

@route("bench@example.com")
def NEXT(message):
    return START
"""

DATA = b"From: a@x.org\r\nSubject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"


class ReopeningShelf:
    """A shelf opened and closed around every call, as Lamson's ShelveStorage does."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.guard = threading.RLock()

    def get(self, key: str, sender: str) -> str:
        with self.guard, shelve.open(self.path) as shelf:
            return str(shelf.get(repr([key, sender]), START))

    def set(self, key: str, sender: str, state: str) -> None:
        with self.guard, shelve.open(self.path) as shelf:
            if state == START:
                shelf.pop(repr([key, sender]), None)
            else:
                shelf[repr([key, sender])] = state

    def clear(self) -> None:
        with self.guard, shelve.open(self.path) as shelf:
            shelf.clear()

    @contextmanager
    def lock(self, key: str, sender: str) -> Iterator[None]:
        with self.guard:
            yield

    def close(self) -> None:
        pass


async def measure(store: StateStorage, messages: int, senders: int = 16) -> float:
    """Deliveries per second, ``senders`` conversations at once."""
    router = Router(store=store)
    router.load(["bench_handler"])
    requests = [
        MailRequest(("127.0.0.1", 1), f"s{i % senders}@x.org", ["bench@example.com"], DATA)
        for i in range(messages)
    ]
    try:
        start = time.perf_counter()
        for batch in range(0, messages, senders):
            await asyncio.gather(*(router.deliver(r) for r in requests[batch : batch + senders]))
        return messages / (time.perf_counter() - start)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "bench_handler.py").write_text(textwrap.dedent(HANDLER))
        sys.path.insert(0, folder)
        results = {
            "MemoryStorage": asyncio.run(measure(MemoryStorage(), args.messages)),
            "ShelveStorage": asyncio.run(
                measure(ShelveStorage(Path(folder, "state.db")), args.messages)
            ),
            "reopen-per-call shelf (Lamson)": asyncio.run(
                measure(ReopeningShelf(str(Path(folder, "lamson"))), args.messages // 4)
            ),
        }
    for name, rate in results.items():
        print(f"{name:32} {rate:10,.0f} deliveries/s")
    ratio = results["ShelveStorage"] / results["reopen-per-call shelf (Lamson)"]
    print(f"ShelveStorage / reopen-per-call: {ratio:.1f}x")


if __name__ == "__main__":
    main()
