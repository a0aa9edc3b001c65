"""The console of a ``mailrouter start --workers 2`` daemon: the first worker serves it, and
every worker keeps its copies of messages for it (real processes, real sockets)."""

from __future__ import annotations

import functools
import smtplib
from collections.abc import Callable

import httpx
from consoles import TOKEN, log_in_sync, message
from helpers import Project, free_port, wait_for

from mailrouter.message import delivery_id

SENDER = "joe@example.org"
CONFIG = """
console_port = {console}
console_token = "{token}"
state_url = "sqlite://run/state.db"

[defaults]
host = 'example\\.com'
"""
#: a handler that notes which worker process handled each message (by its subject)
WORKER_APP = """
import os
from pathlib import Path

from mailrouter import route, stateless

HANDLED = Path(__file__).with_name("handled.txt")


@route("(name)@(host)", name="ok")
@stateless
def RECORD(message, name=None, host=None):
    with HANDLED.open("a") as out:
        out.write(f"{message['Subject']} {os.getpid()}\\n")
"""


def test_the_first_worker_serves_the_console_of_both(make_project: Callable[..., Project]) -> None:
    console_port = free_port()
    project = make_project(config=CONFIG.format(console=console_port, token=TOKEN), app=WORKER_APP)
    port, _ = project.start("--workers", "2")
    handled = project.folder / "config" / "handlers" / "handled.txt"
    url = f"http://127.0.0.1:{console_port}"
    sent: dict[str, bytes] = {}

    def by_worker() -> dict[str, str] | None:
        """Send one more message (a connection of its own); each worker's pid -> a subject
        it handled, once both handled one."""
        subject = f"message {len(sent)}"
        sent[subject] = message(subject)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail(SENDER, ["ok@example.com"], sent[subject])
        lines = handled.read_text().splitlines()
        workers = {pid: subject for subject, pid in (line.rsplit(" ", 1) for line in lines)}
        return workers if len(workers) == 2 else None

    workers = wait_for(by_worker, timeout=30, interval=0)
    with httpx.Client(base_url=url, timeout=30) as browser:
        log_in_sync(browser, url)
        rows = browser.get("/messages/rows").text
        assert all(subject in rows for subject in sent)

        def kept(subject: str) -> httpx.Response | None:
            page = browser.get(f"/messages/{delivery_id(SENDER, sent[subject])}")
            return page if "The text part." in page.text else None

        for subject in workers.values():  # each worker's copy of the message it handled
            shown = wait_for(functools.partial(kept, subject))
            assert subject in shown.text and "handlers.app.RECORD" in shown.text
    assert project.run("stop").returncode == 0
