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


TWO_ROUTES = """
from mailrouter import route, stateless

@route("kept@(host)")
@stateless
def KEPT(message, host=None):
    pass

@route("gone@(host)")
@stateless
def GONE(message, host=None):
    pass
"""


def test_reload_drops_deleted_functions_and_files_and_survives_exit_at_import(
    tmp_path: Path, make_project: Callable[..., Project]
) -> None:
    project = make_project(first=TWO_ROUTES, second=RECORDER.format(name="second", record="x"))
    handlers = project.folder / "config" / "handlers"
    log = project.folder / "logs" / "mailrouter.log"
    port, pid = project.start()

    def reload_and_wait(marker: str) -> None:
        count = log.read_text().count(marker)
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: log.read_text().count(marker) > count)

    routes = project.run("routes")
    assert "gone@" in routes.stdout and "second@" in routes.stdout
    (handlers / "first.py").write_text(TWO_ROUTES.split('@route("gone')[0])
    (handlers / "second.py").unlink()
    reload_and_wait("reloaded handlers")
    # 4 routes before (the generated hello, kept, gone, second), 2 now: counted from scratch
    assert "reloaded handlers: 2 routes" in log.read_text()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail("a@x.org")
        assert client.rcpt("kept@example.com")[0] == 250
    assert not list((project.folder / "run" / "undeliverable" / "new").iterdir())

    (handlers / "third.py").write_text("import sys\nsys.exit(3)\n")
    reload_and_wait("reload failed")
    assert "SystemExit" in log.read_text()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:  # still serving
        client.sendmail("a@x.org", ["kept@example.com"], b"Subject: after\r\n\r\nx\r\n")
    assert project.run("stop").returncode == 0
