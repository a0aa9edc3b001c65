"""The loop watchdog: an async handler that blocks the event loop is named in the log."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Project, running, until, wait_for

from mailrouter import Router
from mailrouter.runtime.watchdog import THREAD_NAME, LoopWatchdog

SLOW = """
import functools
import time
from mailrouter import route, stateless


def traced(func):
    @functools.wraps(func)
    async def wrapper(message, **captures):
        return await func(message, **captures)
    return wrapper


@route("slow@(host)")
@stateless
async def SLOW(message, host=None):
    time.sleep(1.5)  # blocks the loop: every session stalls


@route("wrapped@(host)")
@stateless
@traced
async def WRAPPED(message, host=None):
    time.sleep(1.5)
"""


def sleep_line(name: str) -> int:
    """The number of the line in SLOW where handler ``name`` sleeps."""
    lines = SLOW.splitlines()
    start = next(n for n, line in enumerate(lines) if f"def {name}(" in line)
    return next(n for n, line in enumerate(lines[start:], start + 1) if "time.sleep" in line)


def send(port: int, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail("joe@x.org")
        client.rcpt(rcpt)
        return client.data(b"Subject: slow\r\n\r\nHi.\r\n")


def watchdogs() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == THREAD_NAME]


@pytest.mark.parametrize("name", ["SLOW", "WRAPPED"])
async def test_an_async_handler_blocking_the_loop_is_named(
    tmp_path: Path,
    make_module: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    app = make_module(SLOW)
    async with running(tmp_path, app) as server:
        watchdog = LoopWatchdog(server.router, threshold=0.5)
        watchdog.start()
        try:
            code, _ = await asyncio.to_thread(send, server.port, f"{name.lower()}@example.com")
            assert code == 250
            await until(lambda: "in all" in caplog.text, message=lambda: caplog.text)
        finally:
            watchdog.stop()
    assert watchdogs() == []
    lines = [r.getMessage() for r in caplog.records if r.name == "mailrouter.runtime.watchdog"]
    assert len(lines) == 2, lines  # once when found, once when the loop answers again
    found, ended = lines
    where = f"{tmp_path / 'handler_modules' / app}.py:{sleep_line(name)}"
    assert found.startswith(f"async handler {app}.{name} blocked the event loop for "), found
    assert found.endswith(f"(at {where})"), found
    assert ended.startswith(f"async handler {app}.{name} blocked the event loop for ")
    assert ended.endswith("s in all")
    assert float(ended.split(" for ")[1].removesuffix("s in all")) >= 1.0


async def test_blocking_outside_a_handler_names_the_place(
    tmp_path: Path, make_module: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_module(SLOW)
    async with running(tmp_path, app) as server:
        watchdog = LoopWatchdog(server.router, threshold=0.3)
        watchdog.start()
        try:
            blocked = threading.Event()
            asyncio.get_running_loop().call_soon(blocked.wait, 1.0)  # not a handler's code
            await until(lambda: "in all" in caplog.text, message=lambda: caplog.text)
        finally:
            watchdog.stop()
    found = next(r.getMessage() for r in caplog.records if "(at " in r.getMessage())
    assert found.startswith("code outside the handlers blocked the event loop for "), found
    assert "threading.py:" in found


def test_a_threshold_of_zero_starts_no_thread() -> None:
    watchdog = LoopWatchdog(Router(), threshold=0)

    async def started() -> list[threading.Thread]:
        watchdog.start()
        return watchdogs()

    assert asyncio.run(started()) == []
    watchdog.stop()


CONFIG = """
loop_block_warning = 0.5
[defaults]
host = 'example\\.com'
"""


def test_the_daemon_logs_the_handler_that_blocks_its_loop(
    tmp_path: Path, make_project: Callable[..., Project]
) -> None:
    project = make_project(config=CONFIG, slow=SLOW)
    port, _ = project.start()
    assert send(port, "slow@example.com")[0] == 250
    log = project.folder / "logs" / "mailrouter.log"
    wait_for(lambda: "in all" in log.read_text(), message=lambda: log.read_text())
    assert project.run("stop").returncode == 0
    text = log.read_text()
    where = f"{project.folder / 'config' / 'handlers' / 'slow.py'}:{sleep_line('SLOW')}"
    assert "async handler handlers.slow.SLOW blocked the event loop for " in text
    assert f"(at {where})" in text
