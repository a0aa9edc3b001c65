"""``mailrouter sink`` keeps each message exactly as it was received: no header added."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import environment

# CRLF line ends throughout and a final CRLF: what SMTP carries (smtplib would make a bare LF a
# CRLF, and end the data with one). The lines starting with a dot are dot-stuffed by smtplib
# and unstuffed by the sink, so they arrive as written. 8-bit text and a header block that
# looks like a queue's trace must come through untouched too.
MESSAGE = (
    "Return-Path: <forged@example.org>\r\n"
    "From: Dev <dev@x.org>\r\n"
    "To: a@y.org\r\n"
    "Subject: hi there\r\n"
    "X-Custom:   odd   spacing\r\n"
    "\r\n"
    ".a line that starts with a dot\r\n"
    "..two dots\r\n"
    "Grüße, ünïcödé\r\n"
    "From the start of a line\r\n"
).encode()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A running ``mailrouter sink`` keeping mail in ``tmp_path/box``: the process, its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mailrouter", "sink", "--port", "0", "--maildir", "box"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        yield process, int(ready.split(" on ")[1].split(",")[0].rsplit(":", 1)[1])
    finally:
        process.terminate()
        assert process.wait(10) == 0
        if process.stdout is not None:
            process.stdout.close()


def test_the_sink_stores_the_bytes_it_received_unchanged(
    tmp_path: Path, sink: tuple[subprocess.Popen[str], int]
) -> None:
    process, port = sink
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("dev@x.org", ["a@y.org", "b@y.org"], MESSAGE)
    assert process.stdout is not None
    summary = process.stdout.readline()  # printed once the message is saved
    (saved,) = (tmp_path / "box" / "new").iterdir()
    assert saved.read_bytes() == MESSAGE
    assert f"dev@x.org -> a@y.org, b@y.org: 'hi there', {len(MESSAGE)} bytes" in summary
    assert saved.name in summary
