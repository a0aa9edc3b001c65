"""Nothing acknowledged is lost: kill -9 a busy daemon, restart it, and account for every 250."""

from __future__ import annotations

import os
import random
import signal
import smtplib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Project, wait_for

from mailrouter.queue import Queue

RECORDER = """
from mailrouter import route, route_like

def record(message):
    with open({record!r}, "a") as out:
        out.write(message["Message-ID"] + "\\n")

@route("rec@(host)")
def START(message, host=None):
    record(message)
    return COUNTED

@route_like(START)
def COUNTED(message, host=None):
    record(message)
    return START
"""

CONFIG = """
handlers = []
[defaults]
host = 'example\\.com'
"""


@pytest.mark.parametrize("mode", ["direct", "spool"])
def test_kill_9_loses_no_acknowledged_message(
    tmp_path: Path, make_project: Callable[..., Project], mode: str
) -> None:
    record = tmp_path / "record.txt"
    record.touch()
    recorder = RECORDER.format(record=str(record))
    project = make_project("proj", f'mode = "{mode}"\n' + CONFIG, recorder=recorder)
    port, pid = project.start()
    target = random.randint(300, 2500)  # kill at a random point in the stream
    acknowledged: list[str] = []
    reached = threading.Event()  # set when `target` messages are acknowledged
    guard = threading.Lock()
    stop = threading.Event()

    def client(number: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                for i in range(2000):
                    if stop.is_set():
                        return
                    message_id = f"<{number}.{i}@crash.test>"
                    rcpt = "nobody@example.com" if i % 5 == 4 else "rec@example.com"
                    data = f"Message-ID: {message_id}\r\nSubject: {i}\r\n\r\nbody\r\n".encode()
                    smtp.sendmail(f"sender{number}@x.org", [rcpt], data)
                    with guard:
                        acknowledged.append(message_id)
                        if len(acknowledged) >= target:
                            reached.set()
        except (OSError, smtplib.SMTPException):
            return  # the server was killed under us

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    reached.wait(30)  # past the deadline, the assertion below tells how far the clients got
    os.kill(pid, signal.SIGKILL)
    stop.set()
    for thread in clients:
        thread.join(30)
    assert len(acknowledged) >= 300, "the clients were too slow to test anything"
    # the restarted server opens the same state file and queue, and serves again
    port, pid = project.start()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("after@x.org", ["rec@example.com"], b"Message-ID: <after@x>\r\n\r\nx\r\n")
    queue = Queue(project.folder / "run" / "undeliverable")
    recorded: set[str] = set()
    lost: list[str] = []

    def accounted() -> bool:
        nonlocal recorded, lost
        recorded = set(record.read_text().split())
        queued = {queue.get(key)["Message-ID"] for key in queue.keys()}  # noqa: SIM118
        lost = [mid for mid in acknowledged if mid not in recorded and mid not in queued]
        return not lost and "<after@x>" in recorded

    # spool mode routes what the crash left after the 250
    wait_for(accounted, 60, interval=0.05, message=lambda: f"lost: {lost}")
    assert lost == []
    assert "<after@x>" in recorded
    assert project.run("stop").returncode == 0


def test_a_corrupt_state_file_stops_the_start_with_a_clear_error(
    make_project: Callable[..., Project],
) -> None:
    project = make_project("proj", CONFIG)
    state = project.folder / "run" / "state.db"
    state.parent.mkdir()
    state.write_bytes(b"this is not a database" * 100)
    result = project.run("start", "--port", "0")
    assert result.returncode != 0
    assert str(state) in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert state.read_bytes() == b"this is not a database" * 100  # not replaced by an empty one
