"""The delivery contract over real SMTP and LMTP: every recipient handled exactly once, truthful
replies for the whole message, a report to the sender of recipients refused beside others.

Each handler run appends a line to a file (its side effect), so a run twice is seen.
"""

from __future__ import annotations

import asyncio
import json
import os
import smtplib
import textwrap
from collections.abc import Callable
from email import message_from_bytes, policy
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import Sink, lmtp_send, running, sink_server, until, wait_for
from services import SERVERS, Proxy, require, unique

from mailrouter.cli import main
from mailrouter.journal import open_journal
from mailrouter.outbound import sender
from mailrouter.outbound.transport import ConnectionOptions

HANDLERS = """
from pathlib import Path
from mailrouter import SMTPError, route, stateless

RUNS = Path({runs!r})


def _ran(name, message):
    with RUNS.open("a") as runs:
        runs.write(f"{{name}} {{message.delivery_id}} {{message.attempt}}\\n")


@route("ok-(n)@(host)", n="[0-9]+")
@stateless
def OK(message, n=None, host=None):
    _ran("ok-" + n, message)


@route("refuse@(host)")
@stateless
def REFUSE(message, host=None):
    _ran("refuse", message)
    raise SMTPError(550, "5.7.1 Not here")


@route("later@(host)")
@stateless
def LATER(message, host=None):
    _ran("later", message)
    if not (RUNS.parent / "open").exists():
        raise SMTPError(451, "4.3.0 Not yet")
"""

JOE = "joe@x.org"


def message(subject: str = "hello") -> bytes:
    return (
        f"From: {JOE}\r\nSubject: {subject}\r\nMessage-ID: {make_msgid()}\r\n\r\nHi.\r\n"
    ).encode()


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs.txt"


@pytest.fixture
def handlers(make_module: Callable[..., str], runs: Path) -> str:
    return make_module(HANDLERS.format(runs=str(runs)))


def ran(runs: Path) -> list[str]:
    """The handler runs so far, by name."""
    return [line.split()[0] for line in runs.read_text().splitlines()] if runs.exists() else []


def data(port: int, recipients: list[str], body: bytes, mail_from: str = JOE) -> tuple[int, str]:
    """One transaction over SMTP: the reply to DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail(mail_from)
        for rcpt in recipients:
            assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(body)
    return code, text.decode()


async def smtp(port: int, recipients: list[str], body: bytes, **kw: Any) -> tuple[int, str]:
    return await asyncio.to_thread(data, port, recipients, body, **kw)


async def test_a_refusal_beside_deliveries_answers_250_and_reports_it(
    tmp_path: Path, handlers: str, runs: Path
) -> None:
    sink = Sink()
    rcpts = ["ok-1@example.com", "ok-2@example.com", "refuse@example.com"]
    async with sink_server(sink) as sink_port:
        with sender.using(sender.Relay(ConnectionOptions("127.0.0.1", sink_port))):
            async with running(tmp_path, handlers) as server:
                code, text = await smtp(server.port, rcpts, message("three"))
    assert code == 250 and text.startswith("2.0.0 Ok: queued as ")
    assert sorted(ran(runs)) == ["ok-1", "ok-2", "refuse"]
    (report,) = sink.received
    assert (report.sender, report.recipients) == ("<>", [JOE])  # from the null sender
    parsed = message_from_bytes(report.data, policy=policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert parsed["Auto-Submitted"] == "auto-replied"
    kinds = [part.get_content_type() for part in parsed.iter_parts()]
    assert kinds == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = report.data.decode()
    assert "Final-Recipient: rfc822; refuse@example.com" in status
    assert "Diagnostic-Code: smtp; 550 5.7.1 Not here" in status
    assert "ok-1@example.com" not in status.split("message/delivery-status", 1)[1]
    assert "Subject: three" in status.split("text/rfc822-headers", 1)[1]

    journal = open_journal(f"sqlite://{tmp_path}/run/journal.db")
    assert journal is not None
    with journal:
        (entry,) = journal.entries()
    assert entry.status == "partial"
    outcomes = {record.recipient: record for record in entry.outcomes}
    assert outcomes["ok-1@example.com"].status == "delivered"
    refused = outcomes["refuse@example.com"]
    assert refused.status == "refused" and refused.outcome is not None
    assert refused.outcome.reply == "550 5.7.1 Not here"
    assert refused.outcome.reason == f"delivery report sent to {JOE}"


async def test_no_report_to_the_null_sender(tmp_path: Path, handlers: str, runs: Path) -> None:
    sink = Sink()
    async with sink_server(sink) as sink_port:
        with sender.using(sender.Relay(ConnectionOptions("127.0.0.1", sink_port))):
            async with running(tmp_path, handlers) as server:
                rcpts = ["ok-1@example.com", "refuse@example.com"]
                code, _ = await smtp(server.port, rcpts, message(), mail_from="<>")
    assert code == 250
    assert sink.received == []  # the report is sent before the reply: none was


async def test_all_refused_is_that_refusal(tmp_path: Path, handlers: str) -> None:
    async with running(tmp_path, handlers) as server:
        code, text = await smtp(server.port, ["refuse@example.com"], message())
    assert (code, text) == (550, "5.7.1 Not here")


async def test_a_deferral_retries_only_the_recipients_not_done(
    tmp_path: Path, handlers: str, runs: Path
) -> None:
    body = message()
    rcpts = ["ok-1@example.com", "later@example.com"]
    async with running(tmp_path, handlers) as server:
        assert await smtp(server.port, rcpts, body) == (451, "4.3.0 Not yet")
        assert await smtp(server.port, rcpts, body) == (451, "4.3.0 Not yet")  # a retry
        (tmp_path / "open").touch()
        code, _ = await smtp(server.port, rcpts, body)
    assert code == 250
    assert ran(runs) == ["ok-1", "later", "later", "later"]  # ok-1 once, whatever the retries
    lines = [line.split() for line in runs.read_text().splitlines()]
    assert len({delivery_id for _, delivery_id, _ in lines}) == 1  # stable across retries
    assert [attempt for name, _, attempt in lines if name == "later"] == ["1", "2", "3"]


async def test_the_same_bytes_twice_run_once(tmp_path: Path, handlers: str, runs: Path) -> None:
    body = message()
    async with running(tmp_path, handlers) as server:
        first = await smtp(server.port, ["ok-1@example.com", "ok-2@example.com"], body)
        second = await smtp(server.port, ["ok-1@example.com", "ok-2@example.com"], body)
        other = await smtp(server.port, ["ok-1@example.com"], message())  # other bytes: runs
    assert first[0] == 250 and first[1].startswith("2.0.0 Ok: queued as")
    assert second == (250, "2.0.0 Already delivered")
    assert other[0] == 250
    assert ran(runs) == ["ok-1", "ok-2", "ok-1"]


async def test_over_lmtp_each_recipient_says_it_was_already_delivered(
    tmp_path: Path, handlers: str, runs: Path
) -> None:
    body = message()
    rcpts = ["ok-1@example.com", "later@example.com"]
    async with running(tmp_path, handlers, protocol="lmtp") as server:
        first = await asyncio.to_thread(lmtp_send, server.port, JOE, rcpts, body)
        second = await asyncio.to_thread(lmtp_send, server.port, JOE, rcpts, body)
    assert [code for code, _ in first] == [250, 451]
    assert second == [
        (250, b"2.0.0 <ok-1@example.com> Already delivered"),
        (451, b"4.3.0 Not yet"),
    ]
    assert ran(runs) == ["ok-1", "later", "later"]


async def test_without_the_journal_there_is_no_duplicate_check(
    tmp_path: Path, handlers: str, runs: Path
) -> None:
    body = message()
    async with running(tmp_path, handlers, journal_url="") as server:
        for _ in range(2):
            assert (await smtp(server.port, ["ok-1@example.com"], body))[0] == 250
    assert ran(runs) == ["ok-1", "ok-1"]
    assert not (tmp_path / "run" / "journal.db").exists()


async def test_a_retry_to_another_instance_sharing_a_postgres_journal_runs_nothing_twice(
    tmp_path: Path, handlers: str, runs: Path
) -> None:
    require("postgres")
    url = f"{SERVERS['postgres']}?table={unique()}"
    body = message()
    rcpts = ["ok-1@example.com", "later@example.com"]
    for instance in ("a", "b"):
        (tmp_path / instance).mkdir()
    async with (
        running(tmp_path / "a", handlers, journal_url=url) as first,
        running(tmp_path / "b", handlers, journal_url=url) as second,
    ):
        assert await smtp(first.port, rcpts, body) == (451, "4.3.0 Not yet")
        (tmp_path / "open").touch()
        assert (await smtp(second.port, rcpts, body))[0] == 250
        assert await smtp(first.port, rcpts, body) == (250, "2.0.0 Already delivered")
    assert ran(runs) == ["ok-1", "later", "later"]


async def test_a_journal_outage_answers_451_never_250_then_recovers(
    tmp_path: Path, handlers: str, runs: Path
) -> None:
    require("postgres")
    proxy = Proxy(SERVERS["postgres"])
    proxy.start()
    try:
        url = f"postgresql://postgres@{proxy.address}/test?table={unique()}&timeout=0.5"
        async with running(tmp_path, handlers, journal_url=url) as server:
            assert (await smtp(server.port, ["ok-1@example.com"], message()))[0] == 250
            proxy.stop()
            code, text = await smtp(server.port, ["ok-2@example.com"], message())
            assert (code, text[:6]) == (451, "4.3.0 ")
            proxy.start()

            async def accepted() -> bool:
                code, _ = await smtp(server.port, ["ok-3@example.com"], message())
                assert code in (250, 451)
                return code == 250

            await until(accepted, 30, interval=0.1, message="the journal did not come back")
    finally:
        proxy.stop()
    assert "ok-2" not in ran(runs)  # refused before any handler ran: nothing without a record


async def test_the_messages_command_shows_what_became_of_a_message(
    tmp_path: Path, handlers: str
) -> None:
    async with running(tmp_path, handlers) as server:
        await smtp(server.port, ["ok-1@example.com", "later@example.com"], message("shown"))
        result = await asyncio.to_thread(
            CliRunner().invoke,
            main,
            ["messages", "list", "--json", "--config", str(tmp_path / "config")],
        )
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)
    assert (entry["sender"], entry["status"]) == (JOE, "deferred")
    outcomes = {o["recipient"]: o for o in entry["outcomes"]}
    assert outcomes["ok-1@example.com"]["status"] == "delivered"
    assert outcomes["ok-1@example.com"]["handlers"] == [f"{handlers}.OK"]
    assert outcomes["later@example.com"] == {
        **outcomes["later@example.com"],
        "status": "deferred",
        "reply": "451 4.3.0 Not yet",
    }


SPOOL_HANDLERS = """
import os, signal
from pathlib import Path
from mailrouter import route, stateless

RUNS = Path({runs!r})


@route("first@(host)")
@stateless
def FIRST(message, host=None):
    with RUNS.open("a") as runs:
        runs.write("first\\n")


@route("second@(host)")
@stateless
def SECOND(message, host=None):
    crashed = RUNS.parent / "crashed"
    if not crashed.exists():
        crashed.touch()
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 after the first recipient is done
    with RUNS.open("a") as runs:
        runs.write("second\\n")
"""


def test_spool_leftovers_after_kill_9_skip_the_recipients_done(
    tmp_path: Path, make_project: Callable[..., Any]
) -> None:
    runs = tmp_path / "runs.txt"
    config = textwrap.dedent("""
        mode = "spool"
        state_url = "memory://"
        [defaults]
        host = 'example\\.com'
    """)
    project = make_project(config=config, crashing=SPOOL_HANDLERS.format(runs=str(runs)))
    port, pid = project.start()
    code, _ = data(port, ["first@example.com", "second@example.com"], message())
    assert code == 250  # spooled
    wait_for(lambda: not _alive(pid), 30, message="the handler did not kill the server")
    port, _ = project.start()  # the spool's leftovers are routed first
    wait_for(lambda: "second" in ran(runs), 30, message="the leftover was not routed")
    assert ran(runs) == ["first", "second"]  # first ran once, before and not after the kill
    result = project.run("messages", "list", "--json")
    (entry,) = json.loads(result.stdout)
    assert entry["status"] == "delivered"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"
