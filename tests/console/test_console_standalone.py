"""``mailrouter console``: the console served apart, beside a running ``mailrouter start``
daemon, through its control socket (real processes, real sockets)."""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from consoles import APP, TOKEN, log_in_sync, message
from helpers import Project, environment, wait_for

from mailrouter.message import delivery_id

CONFIG = """
console_token = "{token}"

[defaults]
host = 'example\\.com'
"""
READY = re.compile(r"mailrouter console on (http://127\.0\.0\.1:\d+)/")


@contextmanager
def standalone(project: Project) -> Iterator[str]:
    """``mailrouter console --port 0`` in the project; its URL. Stopped (SIGTERM) after."""
    with subprocess.Popen(
        [sys.executable, "-m", "mailrouter", "console", "--port", "0"],
        cwd=project.folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment(),
    ) as process:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True)
        reader.start()
        try:
            found = wait_for(
                lambda: next((m for line in lines if (m := READY.search(line))), None),
                message=lambda: f"mailrouter console did not start: {lines}",
            )
            yield found.group(1)
        finally:
            process.terminate()
            assert process.wait(30) == 0, lines
            reader.join(30)


def test_the_standalone_console_works_through_the_control_socket(
    make_project: Callable[..., Project],
) -> None:
    project = make_project(config=CONFIG.format(token=TOKEN), app=APP)
    port, _ = project.start()
    data = message("to the standalone console")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("joe@example.org", ["ok@example.com"], data)
    with standalone(project) as url, httpx.Client(base_url=url, timeout=30) as browser:
        csrf = log_in_sync(browser, url)
        assert "to the standalone console" in browser.get("/messages/rows").text
        page = browser.get(f"/messages/{delivery_id('joe@example.org', data)}")
        assert "handlers.app.RECORD" in page.text
        assert "the console was off when it arrived" in page.text  # the server keeps no copies

        composed = browser.post(
            "/compose",
            data={
                "csrf": csrf,
                "sender": "ann@example.org",
                "to": "hello@example.com",
                "subject": "composed apart",
                "text": "x" * 100_000,
            },
            headers={"origin": url},
        )
        assert composed.status_code == 303, composed.text
        shown = browser.get(composed.headers["location"])
        assert "delivered: 250 2.0.0" in shown.text and "handlers.app.RECORD" in shown.text
        assert "queued" not in browser.get("/messages/rows?status=queued").text.lower()
        assert "<svg" in browser.get("/activity").text
    assert project.run("stop").returncode == 0


def test_the_standalone_console_needs_a_running_server(
    make_project: Callable[..., Project],
) -> None:
    project = make_project(config=CONFIG.format(token=TOKEN))
    result = project.run("console", "--port", "0")
    assert result.returncode == 1
    assert "the console needs a running server" in result.stderr
    unset = project.run("console")
    assert unset.returncode == 1 and "give the console a port" in unset.stderr
