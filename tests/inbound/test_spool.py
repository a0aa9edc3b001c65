"""Spool mode: DATA is fsync'd into the spool and answered at once; workers route it later."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import smtplib
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import lmtp_send, mail, running

from mailrouter.errors import StoreError
from mailrouter.inbound.spool import Spool
from mailrouter.queue import Queue
from mailrouter.routing.router import Router
from mailrouter.state import MemoryStorage

HANDLERS = """
import threading
from mailrouter import route, stateless, SMTPError

seen = []
gate = threading.Event()
gate.set()
failures = []

@route("rec@(host)")
def START(message, host=None):
    gate.wait(30)
    seen.append(message["Subject"])

@route("refuse@(host)")
@stateless
def refuse(message, host=None):
    raise SMTPError(550, "not wanted here")

@route("hang@(host)")
@stateless
def hang(message, host=None):
    gate.wait(30)

held = []

@route("hold@(host)")
@stateless
def hold(message, host=None):
    held.append(message["Subject"])
    gate.wait(30)
    seen.append(message["Subject"])
"""


@pytest.fixture
def app(make_module: Callable[..., str]) -> str:
    return make_module(HANDLERS)


def handlers(app: str) -> Any:
    """The loaded handler module (its ``seen`` list and ``gate``)."""
    return importlib.import_module(app)


async def send(port: int, to: list[str], subject: str, body: str = "body\r\n") -> tuple[int, bytes]:
    def go() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo()
            client.mail("alice@example.org")
            for rcpt in to:
                client.rcpt(rcpt)
            return client.data(f"Subject: {subject}\r\n\r\n{body}".encode())

    return await asyncio.to_thread(go)


async def until(condition: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def test_mail_is_accepted_before_its_handler_runs(tmp_path: Path, app: str) -> None:
    module = handlers(app)
    module.gate.clear()
    async with running(tmp_path, app, mode="spool") as server:
        code, text = await send(server.port, ["rec@example.com"], "one")
        assert code == 250
        assert b"queued as" in text
        assert module.seen == []  # the handler is still held
        module.gate.set()
        await until(lambda: module.seen == ["one"])
        spool = tmp_path / "run" / "spool"
        await until(lambda: not [*(spool / "new").iterdir(), *(spool / "cur").iterdir()])


async def test_what_a_crash_left_in_the_spool_is_delivered_at_start(
    tmp_path: Path, app: str
) -> None:
    spool = Queue(tmp_path / "run" / "spool")
    spool.push(mail(recipients=["rec@example.com"], subject="waiting"))
    claimed = spool.push(mail(recipients=["rec@example.com"], subject="being routed"))
    spool.claim(claimed)  # the crash came while this one was being routed
    module = handlers(app)
    async with running(tmp_path, app, mode="spool"):
        await until(lambda: sorted(module.seen) == ["being routed", "waiting"])
    assert spool.keys() == []


async def test_a_refusal_nobody_can_hear_goes_to_the_undeliverable_queue(
    tmp_path: Path, app: str
) -> None:
    async with running(tmp_path, app, mode="spool") as server:
        code, _ = await send(server.port, ["refuse@example.com", "rec@example.com"], "mixed")
        assert code == 250
        queue = Queue(tmp_path / "run" / "undeliverable")
        await until(lambda: len(queue.keys()) == 1)
    entry = queue.read(queue.keys()[0])
    assert entry.reasons == {"refuse@example.com": "refused: 550 5.0.0 not wanted here"}
    assert handlers(app).seen == ["mixed"]


async def test_handlers_that_time_out_park_the_message(tmp_path: Path, app: str) -> None:
    module = handlers(app)
    module.gate.clear()
    async with running(tmp_path, app, mode="spool", handler_timeout=0.2) as server:
        try:
            code, _ = await send(server.port, ["hang@example.com"], "slow")
            assert code == 250
            queue = Queue(tmp_path / "run" / "undeliverable")
            await until(lambda: len(queue.keys()) == 1)
            entry = queue.read(queue.keys()[0])
            assert entry.reasons == {"hang@example.com": "handlers timed out"}
        finally:
            module.gate.set()  # let the hung handler's thread end


async def test_a_failing_state_store_means_a_retry_not_a_loss(
    tmp_path: Path, app: str, make_module: Callable[..., str]
) -> None:
    flaky = make_module(
        """
        from mailrouter.state import MemoryStorage

        class Flaky(MemoryStorage):
            failures = 2

            def get(self, key, sender):
                if Flaky.failures:
                    Flaky.failures -= 1
                    raise ConnectionError("the store is down")
                return super().get(key, sender)
        """
    )
    async with running(tmp_path, app, mode="spool", state_url=f"{flaky}:Flaky") as server:
        code, _ = await send(server.port, ["rec@example.com"], "eventually")
        assert code == 250
        await until(lambda: handlers(app).seen == ["eventually"])
    assert Queue(tmp_path / "run" / "undeliverable").keys() == []


async def test_lmtp_in_spool_mode_answers_each_recipient(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, mode="spool", protocol="lmtp") as server:
        replies = await asyncio.to_thread(
            lmtp_send,
            server.port,
            "alice@example.org",
            ["rec@example.com", "refuse@example.com"],
            b"Subject: lmtp\r\n\r\nx\r\n",
        )
        assert [code for code, _ in replies] == [250, 250]
        await until(lambda: handlers(app).seen == ["lmtp"])


async def test_an_unwritable_spool_gets_a_temporary_failure(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, mode="spool") as server:
        spool_tmp = tmp_path / "run" / "spool" / "tmp"
        spool_tmp.rmdir()
        spool_tmp.write_text("not a directory")
        code, text = await send(server.port, ["rec@example.com"], "nowhere")
        assert (code, text[:5]) == (451, b"4.3.0")
        spool_tmp.unlink()
        spool_tmp.mkdir()  # repaired: served again without a restart
        assert (await send(server.port, ["rec@example.com"], "again"))[0] == 250
        await until(lambda: handlers(app).seen == ["again"])


async def test_a_full_spool_disk_is_452(tmp_path: Path, app: str) -> None:
    spool_dir = tmp_path / "run" / "spool"
    spool_dir.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(spool_dir)], capture_output=True
    )
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small tmpfs: {mounted.stderr.decode()}")
        pytest.skip("mounting a tmpfs needs root")
    try:
        async with running(tmp_path, app, mode="spool") as server:
            big = ("x" * 76 + "\r\n") * 2000  # ~156 KB, more than the 64 KB disk
            code, text = await send(server.port, ["rec@example.com"], "big", big)
            assert (code, text[:5]) == (452, b"4.3.1")
            assert list((spool_dir / "new").iterdir()) == []
            assert list((spool_dir / "tmp").iterdir()) == []
    finally:
        subprocess.run(["umount", str(spool_dir)], check=True)


class DownStore(MemoryStorage):
    """A state store whose reads fail, as when its server is down."""

    def get(self, key: str, sender: str) -> str:
        raise StoreError("the state store is down")


@contextlib.asynccontextmanager
async def spooling(
    tmp_path: Path,
    app: str,
    max_attempts: int = 10,
    store: MemoryStorage | None = None,
    concurrency: int = 2,
) -> AsyncIterator[Spool]:
    """A started Spool on ``tmp_path/spool`` feeding a router whose state store is ``store``
    (by default one that is down)."""
    router = Router(
        store=DownStore() if store is None else store,
        undeliverable=Queue(tmp_path / "undeliverable"),
        defaults={"host": r"example\.com"},
    )
    router.load([app])
    spool = Spool(
        Queue(tmp_path / "spool"), router, concurrency=concurrency, max_attempts=max_attempts
    )
    await spool.start()
    try:
        yield spool
    finally:
        await spool.stop(timeout=5)
        router.close()


def parked(queue: Queue) -> list[dict[str, str]]:
    """The reasons of each entry in ``queue``, oldest first."""
    waiting = queue.keys()
    return [queue.read(key).reasons for key in waiting]


async def test_a_message_that_keeps_failing_is_parked_after_max_attempts(
    tmp_path: Path, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with spooling(tmp_path, app, max_attempts=2) as spool:
        await spool.accept(mail(recipients=["rec@example.com"], subject="doomed"))
        undeliverable = Queue(tmp_path / "undeliverable")
        await until(lambda: len(undeliverable.keys()) == 1)  # after one retry
    assert parked(undeliverable) == [
        {"rec@example.com": "delivery failed 2 times, last: StoreError: the state store is down"}
    ]
    assert not [*(tmp_path / "spool" / "new").iterdir(), *(tmp_path / "spool" / "cur").iterdir()]
    assert "(attempt 1 of 2), retrying in 1s: StoreError" in caplog.text
    [line] = [r for r in caplog.records if "queued as undeliverable" in r.getMessage()]
    assert line.levelname == "ERROR"
    assert handlers(app).seen == []


async def test_the_attempt_count_survives_a_restart(tmp_path: Path, app: str) -> None:
    earlier = Queue(tmp_path / "spool")
    key = earlier.push(mail(recipients=["rec@example.com"]))
    earlier.claim(key)
    earlier.release(key, attempts=2)  # what a run that failed twice left behind
    async with spooling(tmp_path, app, max_attempts=3):
        undeliverable = Queue(tmp_path / "undeliverable")
        await until(lambda: len(undeliverable.keys()) == 1)  # at once: the third attempt
    assert parked(undeliverable) == [
        {"rec@example.com": "delivery failed 3 times, last: StoreError: the state store is down"}
    ]
    assert earlier.keys() == []


def test_max_attempts_must_allow_one_attempt(tmp_path: Path) -> None:
    router = Router(undeliverable=Queue(tmp_path / "undeliverable"))
    with pytest.raises(ValueError, match="max_attempts"):
        Spool(Queue(tmp_path / "spool"), router, concurrency=1, max_attempts=0)


# -- stopping ----------------------------------------------------------------------------------


def spooled(tmp_path: Path) -> list[str]:
    """The subjects of the messages waiting in the server's spool."""
    spool = Queue(tmp_path / "run" / "spool")
    return [spool.get(key)["Subject"] or "" for key in spool.keys()]  # noqa: SIM118 - a Queue


async def test_a_stop_finishes_what_is_being_routed_and_takes_nothing_more(
    tmp_path: Path, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "mailrouter.inbound.spool")
    module = handlers(app)
    module.gate.clear()
    settings = {"mode": "spool", "spool_concurrency": 1, "drain_timeout": 30}
    async with running(tmp_path, app, **settings) as server:
        try:
            assert (await send(server.port, ["hold@example.com"], "first"))[0] == 250
            await until(lambda: module.held == ["first"])
            assert (await send(server.port, ["hold@example.com"], "second"))[0] == 250
            stopping = asyncio.create_task(server.stop())  # drain_timeout: 30 s
            await until(lambda: "being routed from the spool" in caplog.text)
        finally:
            module.gate.set()
        await until(stopping.done, 5)  # the busy worker ended with its entry; none waited on
    assert module.seen == ["first"]
    assert spooled(tmp_path) == ["second"]  # waiting for the next start


async def test_a_stop_with_an_idle_spool_returns_at_once(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, mode="spool", drain_timeout=30) as server:
        assert (await send(server.port, ["rec@example.com"], "done"))[0] == 250
        await until(lambda: handlers(app).seen == ["done"])
        stopping = asyncio.create_task(server.stop())
        await until(stopping.done, 5)
    assert spooled(tmp_path) == []


# -- supervision -------------------------------------------------------------------------------


async def test_a_worker_backs_off_from_a_spool_error_and_goes_on(
    tmp_path: Path, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path, app, mode="spool") as server:
        cur = tmp_path / "run" / "spool" / "cur"
        cur.rmdir()
        cur.write_text("not a directory")  # claims fail, even for root (chmod would not stop it)
        try:
            assert (await send(server.port, ["rec@example.com"], "later"))[0] == 250
            await until(lambda: "a spool worker failed on" in caplog.text)
        finally:
            cur.unlink()
            cur.mkdir()
        await until(lambda: handlers(app).seen == ["later"])  # the entry was tried again
    failed = next(r for r in caplog.records if "a spool worker failed on" in r.getMessage())
    assert "trying it again in 1s: cannot claim" in failed.getMessage()
    assert failed.levelname == "ERROR" and not failed.exc_info  # a queue error: no traceback


class Crash(BaseException):
    """Not an Exception: nothing on the way up catches it, and it ends the worker."""


class CrashingStore(MemoryStorage):
    """A state store whose first read raises ``Crash``."""

    crashes = 1

    def get(self, key: str, sender: str) -> str:
        if self.crashes:
            self.crashes -= 1
            raise Crash("the store's client library gave up")
        return super().get(key, sender)


async def test_a_worker_that_ends_is_replaced(
    tmp_path: Path, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with spooling(tmp_path, app, store=CrashingStore(), concurrency=1) as spool:
        await spool.accept(mail(recipients=["rec@example.com"], subject="crashed"))
        await until(lambda: "a spool worker ended" in caplog.text)
        await spool.accept(mail(recipients=["rec@example.com"], subject="next"))
        await until(lambda: handlers(app).seen == ["next"])  # by the worker started instead
    [ended] = [r for r in caplog.records if "a spool worker ended" in r.getMessage()]
    assert "Crash" in ended.getMessage() and ended.exc_info is not None
    async with spooling(tmp_path, app, store=MemoryStorage()):  # the next start
        await until(lambda: handlers(app).seen == ["next", "crashed"])
