"""SIGHUP reloads the handler modules of a running daemon without dropping connections."""

from __future__ import annotations

import os
import signal
import smtplib
from collections.abc import Callable
from pathlib import Path

from helpers import Project, wait_for

RECORDER = """
from mailrouter import route, stateless

@route("{name}@(host)")
@stateless
def RECORD(message, host=None):
    with open({record!r}, "a") as out:
        out.write("{name} " + message.recipient + "\\n")
"""


def test_sighup_loads_new_modules_and_keeps_routes_on_a_broken_one(
    tmp_path: Path, make_project: Callable[..., Project]
) -> None:
    record = tmp_path / "record.txt"
    project = make_project(first=RECORDER.format(name="first", record=str(record)))
    handlers = project.folder / "config" / "handlers"
    log = project.folder / "logs" / "mailrouter.log"
    port, pid = project.start()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("a@x.org", ["first@example.com"], b"Subject: 1\r\n\r\nx\r\n")
        (handlers / "second.py").write_text(RECORDER.format(name="second", record=str(record)))
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: "reloaded handlers" in log.read_text())
        # the same connection is still served, now with the new module's routes
        client.sendmail("a@x.org", ["second@example.com"], b"Subject: 2\r\n\r\nx\r\n")

        (handlers / "first.py").write_text("def broken(:\n")
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: "reload failed" in log.read_text())
        client.sendmail("a@x.org", ["first@example.com"], b"Subject: 3\r\n\r\nx\r\n")
    assert record.read_text().splitlines() == [
        "first first@example.com",
        "second second@example.com",
        "first first@example.com",
    ]
    assert "SyntaxError" in log.read_text()
    assert project.run("stop").returncode == 0
