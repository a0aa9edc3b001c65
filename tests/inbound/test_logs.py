"""Structured logs: ``log_format = "json"`` writes one JSON object per line, one per message."""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import OUTCOMES, running

from mailrouter.cli.common import JsonFormatter, configure_logging
from mailrouter.config import Settings, load_settings

APP = OUTCOMES  # ok@ accepted (by OK and REFUSE), refuse@ refused with 550, boom@ fails
MESSAGE = b"From: a@x.org\r\nSubject: test\r\n\r\nHello.\r\n"


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    """Undo what ``configure_logging`` does to the root and aiosmtpd loggers."""
    root, aiosmtpd = logging.getLogger(), logging.getLogger("mail.log")
    handlers, level, aiosmtpd_level = list(root.handlers), root.level, aiosmtpd.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    aiosmtpd.setLevel(aiosmtpd_level)


def send(port: int, rcpt: str) -> tuple[int, str]:
    """Send one message; the reply after DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail("a@x.org")
        client.rcpt(rcpt)
        code, text = client.data(MESSAGE)
    return code, text.decode()


async def logged(tmp_path: Path, app: str, rcpts: list[str], **overrides: Any) -> list[str]:
    """The log file's lines after sending one message to each of ``rcpts``."""
    settings = Settings(log_file=str(tmp_path / "server.log"), **overrides)
    configure_logging(settings, to_file=True)
    async with running(tmp_path, app, **overrides) as server:
        for rcpt in rcpts:
            await asyncio.to_thread(send, server.port, rcpt)
    return (tmp_path / "server.log").read_text().splitlines()


def deliveries(lines: list[str]) -> dict[str, dict[str, Any]]:
    """The delivery records among JSON log lines, by recipient."""
    records = [json.loads(line) for line in lines]
    return {r["recipients"][0]: r for r in records if r["logger"] == "mailrouter.routing.result"}


async def test_json_logs_one_record_per_message(tmp_path: Path, app: str) -> None:
    rcpts = ["ok@example.com", "refuse@example.com", "nobody@example.com", "boom@example.com"]
    lines = await logged(tmp_path, app, rcpts, log_format="json")
    assert all(line.startswith("{") and line.endswith("}") for line in lines), lines
    found = deliveries(lines)
    assert list(found) == rcpts

    ok = found["ok@example.com"]
    assert set(ok) >= {"time", "level", "logger", "message", "message_id", "peer", "duration"}
    assert ok["level"] == "INFO" and ok["message"].startswith(ok["message_id"])
    assert ok["peer"].startswith("127.0.0.1:") and ok["sender"] == "a@x.org"
    assert ok["handlers"] == [f"{app}.OK", f"{app}.REFUSE"]
    assert (ok["code"], ok["outcome"], ok["queue_key"], ok["handler_errors"]) == (
        250,
        "accepted",
        None,
        0,
    )
    assert ok["reply"] == f"250 2.0.0 Ok: queued as {ok['message_id']}"
    assert ok["size"] == len(MESSAGE) and ok["duration"] >= 0

    refused = found["refuse@example.com"]
    assert refused["handlers"] == [f"{app}.REFUSE"]
    assert (refused["code"], refused["outcome"]) == (550, "refused")
    nobody = found["nobody@example.com"]
    assert (nobody["handlers"], nobody["outcome"]) == ([], "queued") and nobody["queue_key"]
    boom = found["boom@example.com"]
    assert (boom["handlers"], boom["handler_errors"]) == ([f"{app}.BOOM"], 1)
    assert boom["outcome"] == "queued"

    failure = next(json.loads(line) for line in lines if "failed for" in line)
    assert failure["level"] == "ERROR" and failure["logger"] == "mailrouter.routing.router"
    assert "RuntimeError: handler bug" in failure["exception"]


async def test_text_logs_keep_the_record_at_debug(tmp_path: Path, app: str) -> None:
    lines = await logged(tmp_path, app, ["ok@example.com"])
    assert not any("mailrouter.routing.result" in line for line in lines)
    (tmp_path / "server.log").unlink()
    lines = await logged(tmp_path, app, ["ok@example.com"], log_level="DEBUG")
    (line,) = [line for line in lines if "mailrouter.routing.result" in line]
    assert " DEBUG " in line and "from 'a@x.org' to ['ok@example.com']: 250 2.0.0" in line


def test_the_json_formatter_writes_one_object_per_line() -> None:
    record = logging.LogRecord("x.y", logging.WARNING, __file__, 1, "a\r\nb %s", ("c",), None)
    record.__dict__["peer"] = "1.2.3.4:5"
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["time"].endswith("Z") and entry["level"] == "WARNING" and entry["logger"] == "x.y"
    assert (entry["message"], entry["peer"]) == ("a\r\nb c", "1.2.3.4:5")
    assert entry["exception"].endswith("ValueError: bad\nvalue")


def test_log_format_is_a_setting(tmp_path: Path) -> None:
    (tmp_path / "mailrouter.toml").write_text('log_format = "JSON"\n')
    assert load_settings(tmp_path, environ={}).log_format == "json"
    assert load_settings(tmp_path, environ={"MAILROUTER_LOG_FORMAT": "text"}).log_format == "text"
