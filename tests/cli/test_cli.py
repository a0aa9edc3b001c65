"""The ``mailrouter`` command in-process with CliRunner: routes, queue, send, gen, errors."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import Sink, mail, running, sink_server

from mailrouter import __version__
from mailrouter.cli import common, main
from mailrouter.cli import queue as queue_cli
from mailrouter.cli import server as server_cli
from mailrouter.config import FIELDS, Settings, load_settings
from mailrouter.message import MailRequest
from mailrouter.outbound.outbox import Attempt, Outbox, RetryPolicy, Schedule
from mailrouter.queue import Queue
from mailrouter.runtime import pidlock
from mailrouter.state import ShelveStorage

APP = """
from mailrouter import route, stateless, SMTPError
seen = []

@route("(name)@(host)", name="[a-z]+")
@stateless
def RECORD(message, name=None, host=None):
    if name == "refuse":
        raise SMTPError(550, "5.7.1 Not here")
    seen.append((message.sender, message.recipient, message.data))
"""

FLAGGED = """
from mailrouter import nolocking, route, stateless

@route("log@(host)")
@stateless
@nolocking
def LOG(message, host=None):
    pass
"""


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what commands do to the process: sys.path, handler modules, logging, env."""
    for name in list(os.environ):
        if name.startswith("MAILROUTER_"):
            monkeypatch.delenv(name)
    path, modules = list(sys.path), set(sys.modules)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name == "handlers" or name.startswith("handlers."):
            del sys.modules[name]
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def invoke(*args: str, input: str | bytes | None = None, **env: str) -> Result:
    return CliRunner().invoke(main, list(args), input=input, env=env or None)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project made by ``mailrouter gen``."""
    folder = tmp_path / "project"
    result = invoke("gen", str(folder))
    assert result.exit_code == 0, result.output
    return folder


def config(project: Path) -> str:
    return str(project / "config")


def settings_of(project: Path) -> Settings:
    return load_settings(project / "config")


def column_starts(line: str) -> list[int]:
    return [m.start() for m in re.finditer(r"(?:^|(?<=\s\s))\S", line)]


def assert_one_line_error(result: Result, *parts: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for part in parts:
        assert part in lines[0]


# -- errors and version ----------------------------------------------------------------------


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"mailrouter, version {__version__}\n"


def test_a_bad_config_key_is_one_line_and_no_traceback(project: Path) -> None:
    toml = project / "config" / "mailrouter.toml"
    toml.write_text("bogus = 1\n" + toml.read_text())
    for command in (["routes"], ["status"], ["queue", "list"], ["start", "--foreground"]):
        assert_one_line_error(invoke(*command, "--config", config(project)), "'bogus'")


def test_a_bad_env_value_is_one_line(project: Path) -> None:
    result = invoke("routes", "--config", config(project), MAILROUTER_PORT="many")
    assert_one_line_error(result, "MAILROUTER_PORT")


def test_a_missing_config_folder_is_one_line(tmp_path: Path) -> None:
    result = invoke("routes", "--config", str(tmp_path / "nowhere"))
    assert_one_line_error(result, "no config folder")


def test_config_comes_from_the_environment(project: Path) -> None:
    result = invoke("routes", MAILROUTER_CONFIG=config(project))
    assert result.exit_code == 0, result.output
    assert "handlers.hello.START" in result.stdout


def test_a_broken_handler_module_is_one_line(project: Path) -> None:
    (project / "config" / "handlers" / "broken.py").write_text("def oops(:\n")
    result = invoke("routes", "--config", config(project))
    assert_one_line_error(result, "handlers.broken", "SyntaxError")


# -- start options -----------------------------------------------------------------------------


def test_start_has_an_option_for_every_setting() -> None:
    params = {param.name: param for param in server_cli.start.params}
    for name in FIELDS:
        if name not in ("config_dir", "defaults"):
            assert name in params, name
            assert "--" + name.replace("_", "-") in params[name].opts


@pytest.fixture
def captured_run(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Replace the server's ``run`` by one that records its settings and is ready at once."""
    calls: list[Settings] = []

    def fake_run(settings: Settings, *, on_ready: Callable[[str], None] | None = None) -> None:
        calls.append(settings)
        assert on_ready is not None
        on_ready("127.0.0.1:2525")
        pid_file = settings.path(settings.pid_file)
        assert pid_file.read_text() == f"{os.getpid()}\n"
        assert Path(f"{pid_file}.address").read_text() == "127.0.0.1:2525\n"

    monkeypatch.setattr("mailrouter.runtime.launch.run", fake_run)
    return calls


def test_start_options_override_env_and_file(project: Path, captured_run: list[Settings]) -> None:
    toml = project / "config" / "mailrouter.toml"
    toml.write_text(toml.read_text().replace("# max_recipients = 1000", "max_recipients = 7"))
    result = invoke(
        "start",
        "--foreground",
        "--config",
        config(project),
        "--port",
        "0",
        "--log-level",
        "debug",
        "--reject-unroutable",
        "--handlers",
        "a.b",
        "--handlers",
        "c",
        "--drain-timeout",
        "2.5",
        MAILROUTER_PORT="2600",
        MAILROUTER_HOSTNAME="mx.example.com",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == f"mailrouter running on 127.0.0.1:2525 (pid {os.getpid()})\n"
    [settings] = captured_run
    assert settings.port == 0
    assert settings.log_level == "DEBUG"
    assert settings.reject_unroutable is True
    assert settings.handlers == ("a.b", "c")
    assert settings.drain_timeout == 2.5
    assert settings.hostname == "mx.example.com"
    assert settings.max_recipients == 7
    assert not settings.path(settings.pid_file).exists()  # removed after a clean stop


def test_start_without_options_keeps_env_values(
    project: Path, captured_run: list[Settings]
) -> None:
    result = invoke(
        "start",
        "--foreground",
        "--config",
        config(project),
        MAILROUTER_PORT="2600",
        MAILROUTER_REJECT_UNROUTABLE="yes",
        MAILROUTER_LOG_LEVEL="warning",
    )
    assert result.exit_code == 0, result.output
    [settings] = captured_run
    assert (settings.port, settings.reject_unroutable, settings.log_level) == (
        2600,
        True,
        "WARNING",
    )
    assert settings.handlers == ()


def test_start_refuses_an_out_of_range_port(project: Path) -> None:
    result = invoke("start", "--config", config(project), "--port", "70000")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# -- routes ------------------------------------------------------------------------------------


def test_routes_lists_handlers_in_match_order_aligned(project: Path) -> None:
    (project / "config" / "handlers" / "logger.py").write_text(FLAGGED)
    result = invoke("routes", "--config", config(project))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["PATTERN", "HANDLER", "FLAGS"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["hello@(host)", "handlers.hello.START"],
        ["hello@(host)", "handlers.hello.GREETED"],
        ["log@(host)", "handlers.logger.LOG"],
    ]
    assert lines[3].split()[2] == "stateless,nolocking"
    assert column_starts(lines[0]) == column_starts(lines[3])
    assert column_starts(lines[0])[:2] == column_starts(lines[1])


def test_routes_test_shows_the_handlers_that_would_run(project: Path) -> None:
    result = invoke("routes", "--config", config(project), "--test", "Hello@LocalHost")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split() == [
        "handlers.hello.START",
        "hello@(host)",
        "host=localhost",
    ]


def test_routes_test_follows_the_senders_state_while_the_store_is_locked(project: Path) -> None:
    settings = settings_of(project)
    path = settings.path("run/state.db")
    with ShelveStorage(path) as store:  # a running server holds this lock
        store.set("handlers.hello", "bob@example.org", "GREETED")
        result = invoke(
            "routes",
            "--config",
            config(project),
            "--test",
            "hello@localhost",
            "--sender",
            "Bob <BOB@example.org>",
        )
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[1].split()[0] == "handlers.hello.GREETED"
        fresh = invoke("routes", "--config", config(project), "--test", "hello@localhost")
        assert fresh.stdout.splitlines()[1].split()[0] == "handlers.hello.START"


def test_routes_test_without_a_handler_exits_1(project: Path) -> None:
    result = invoke("routes", "--config", config(project), "--test", "nobody@localhost")
    assert result.exit_code == 1
    assert "no handler" in result.stdout


# -- queue -------------------------------------------------------------------------------------


def queue_of(project: Path) -> Queue:
    settings = settings_of(project)
    return Queue(settings.path(settings.undeliverable))


def test_queue_list_count_show_remove(project: Path) -> None:
    assert invoke("queue", "list", "--config", config(project)).stdout == (
        "the undeliverable queue is empty\n"
    )
    queue = queue_of(project)
    first = queue.push(mail("alice@example.org", ["x@example.com"]), {"x@example.com": "no route"})
    message = mail("", ["y@example.com", "z@example.com"], body="Exact\r\nbytes.\r\n")
    second = queue.push(message, {"y@example.com": "handler failed", "z@example.com": "no route"})

    listed = invoke("queue", "list", "--config", config(project))
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["KEY", "DATE", "SENDER", "RECIPIENTS", "REASON"]
    assert rows[0].startswith(first) and rows[1].startswith(second)
    cells = [re.split(r"\s{2,}", row) for row in rows]
    assert cells[0][2:] == ["alice@example.org", "x@example.com", "no route"]
    assert cells[1][2:] == ["<>", "y@example.com, z@example.com", "handler failed; no route"]
    assert column_starts(header)[-1] == column_starts(rows[0])[-1] == column_starts(rows[1])[-1]

    assert invoke("queue", "count", "--config", config(project)).stdout == "2\n"

    shown = invoke("queue", "show", "--config", config(project), second)
    assert shown.exit_code == 0, shown.output
    info, _, raw = shown.stdout_bytes.partition(b"\n\n")
    assert b"Sender:    <>" in info
    assert b"Recipient: y@example.com: handler failed" in info
    assert b"Peer:      127.0.0.1 40000" in info
    assert raw == message.data

    removed = invoke("queue", "remove", "--config", config(project), first)
    assert removed.exit_code == 0 and queue.keys() == [second]
    again = invoke("queue", "remove", "--config", config(project), first)
    assert_one_line_error(again, first)
    assert_one_line_error(invoke("queue", "show", "--config", config(project), "../x"), "../x")


def test_queue_clear_asks_first(project: Path) -> None:
    queue = queue_of(project)
    for _ in range(3):
        queue.push(mail())
    declined = invoke("queue", "clear", "--config", config(project), input="n\n")
    assert declined.exit_code == 1 and len(queue) == 3
    accepted = invoke("queue", "clear", "--config", config(project), input="y\n")
    assert accepted.exit_code == 0 and len(queue) == 0
    assert "removed 3 messages" in accepted.stdout
    queue.push(mail())
    assert invoke("queue", "clear", "--yes", "--config", config(project)).exit_code == 0
    assert len(queue) == 0


def test_queue_replay_removes_what_is_handled_now(project: Path) -> None:
    queue = queue_of(project)
    handled = queue.push(mail(recipients=["hello@localhost"]), {"hello@localhost": "no route"})
    kept = queue.push(mail(recipients=["nobody@localhost"]), {"nobody@localhost": "no route"})
    both = ["hello@example.com", "other@example.com"]
    original = mail("carol@example.org", both)
    partly = queue.push(original, dict.fromkeys(both, "no route"))

    result = invoke("queue", "replay", "--config", config(project))
    assert result.exit_code == 0, result.output
    assert f"kept {kept}: no route" in result.stdout
    assert "replayed 3 messages: 1 delivered, 2 still undeliverable" in result.stdout
    keys = queue.keys()
    assert handled not in keys and partly not in keys and kept in keys
    [requeued] = [key for key in keys if key != kept]
    entry = queue.read(requeued)
    assert entry.message.recipients == ["other@example.com"]
    assert entry.message.sender == "carol@example.org"
    assert entry.data == original.data
    # The handlers ran and kept their states in the project's store.
    with ShelveStorage(settings_of(project).path("run/state.db"), readonly=True) as store:
        assert store.get("handlers.hello", "alice@example.org") == "GREETED"
        assert store.get("handlers.hello", "carol@example.org") == "GREETED"


def test_queue_replay_shows_progress_for_many(project: Path) -> None:
    queue = queue_of(project)
    for _ in range(queue_cli.PROGRESS_THRESHOLD + 1):
        queue.push(mail(recipients=["hello@localhost"]))
    result = invoke("queue", "replay", "--config", config(project))
    assert result.exit_code == 0, result.output
    assert "replaying" in result.output
    assert f"{queue_cli.PROGRESS_THRESHOLD + 1} delivered, 0 still undeliverable" in result.stdout
    assert len(queue) == 0


def test_queue_replay_while_the_server_runs_says_to_stop_it(project: Path) -> None:
    settings = settings_of(project)
    queue_of(project).push(mail(recipients=["hello@localhost"]))
    with pidlock.pid_file(settings), ShelveStorage(settings.path("run/state.db")):
        result = invoke("queue", "replay", "--config", config(project))
    assert_one_line_error(result, "in use", "control socket", "stop the server first")
    assert len(queue_of(project)) == 1


# -- queue --box outbox / failed, and queue retry -----------------------------------------------

NOW = 1767225600.0  # 2026-01-01 00:00:00 UTC: a fixed "now" for entries stored by the tests


def outbox_of(project: Path) -> Outbox:
    settings = settings_of(project)
    return Outbox(settings.path(settings.outbox), settings.path(settings.failed))


async def store(project: Path, message: MailRequest, replies: dict[str, Attempt], **kw: Any) -> str:
    """Keep ``message`` for ``replies`` through the relay's own path; the key it was kept under."""
    stored = await outbox_of(project).store(message.sender, message.data, replies, **kw)
    key = stored.outbox_key or stored.failed_key
    assert key is not None
    return key


def local(when: float) -> str:
    return datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")


def cells_of(output: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line) for line in output.splitlines()]


def test_queue_box_outbox_lists_shows_counts_removes_and_clears(project: Path) -> None:
    box = ["--config", config(project), "--box", "outbox"]
    assert invoke("queue", "list", *box).stdout == "the outbox is empty\n"
    assert invoke("queue", "clear", "--yes", *box).stdout == "the outbox is empty\n"
    assert invoke("queue", "count", *box).stdout == "0\n"

    message = mail("alice@example.org", ["x@example.com", "y@example.com"])
    replies = {
        "x@example.com": Attempt("deferred", "451 4.3.0 Try later"),
        "y@example.com": Attempt("deferred", "421 4.4.2 Timed out"),
    }
    first = asyncio.run(
        store(project, message, replies, schedule=Schedule(2, NOW - 180, NOW), now=NOW)
    )
    other = mail("", ["z@example.com"])
    second = asyncio.run(
        store(project, other, {"z@example.com": Attempt("deferred", "452 Full")}, now=NOW)
    )
    queue_of(project).push(mail())  # in the undeliverable queue: not listed with --box outbox

    listed = invoke("queue", "list", *box)
    assert listed.exit_code == 0, listed.output
    header, *rows = cells_of(listed.stdout)
    assert header == ["KEY", "DATE", "SENDER", "RECIPIENTS", "ATTEMPTS", "NEXT", "LAST REPLY"]
    assert [row[0] for row in rows] == [first, second]
    assert rows[0][2:] == [
        "alice@example.org",
        "x@example.com, y@example.com",
        "3",
        local(NOW + 240),
        "451 4.3.0 Try later; 421 4.4.2 Timed out",
    ]
    assert rows[1][2:] == ["<>", "z@example.com", "1", local(NOW + 60), "452 Full"]
    assert "attempts=" not in listed.stdout

    assert invoke("queue", "count", *box).stdout == "2\n"
    assert invoke("queue", "count", "--config", config(project)).stdout == "1\n"
    from_env = invoke("queue", "count", "--config", config(project), MAILROUTER_QUEUE_BOX="outbox")
    assert from_env.stdout == "2\n"

    shown = invoke("queue", "show", *box, first)
    assert shown.exit_code == 0, shown.output
    info, _, raw = shown.stdout_bytes.partition(b"\n\n")
    assert info.decode().splitlines()[-2:] == [
        f"Recipient: x@example.com: attempts 3, next {local(NOW + 240)}, "
        "last reply 451 4.3.0 Try later",
        f"Recipient: y@example.com: attempts 3, next {local(NOW + 240)}, "
        "last reply 421 4.4.2 Timed out",
    ]
    assert raw == message.data

    assert invoke("queue", "remove", *box, first).stdout == f"removed {first}\n"
    assert invoke("queue", "count", *box).stdout == "1\n"
    assert_one_line_error(invoke("queue", "remove", *box, first), repr(first), "in the outbox")
    assert_one_line_error(invoke("queue", "show", *box, first), repr(first), "in the outbox")
    undeliverable = invoke("queue", "remove", "--config", config(project), second)
    assert_one_line_error(undeliverable, repr(second), "in the undeliverable queue")

    declined = invoke("queue", "clear", *box, input="n\n")
    assert declined.exit_code == 1 and "1 messages in the outbox" in declined.output
    assert invoke("queue", "clear", "--yes", *box).stdout == "removed 1 messages\n"
    assert invoke("queue", "count", *box).stdout == "0\n"
    assert len(queue_of(project)) == 1


def test_queue_box_failed_lists_shows_counts_removes_and_clears(project: Path) -> None:
    box = ["--config", config(project), "--box", "failed"]
    assert invoke("queue", "list", *box).stdout == "the failed maildir is empty\n"
    assert invoke("queue", "clear", "--yes", *box).stdout == "the failed maildir is empty\n"
    message = mail("alice@example.org", ["gone@example.com", "ok@example.com"])
    replies = {
        "gone@example.com": Attempt("failed", "550 5.1.1 No such user"),
        "ok@example.com": Attempt("delivered", "250 OK"),
    }
    key = asyncio.run(store(project, message, replies))
    assert invoke("queue", "list", "--config", config(project), "--box", "outbox").stdout == (
        "the outbox is empty\n"
    )

    listed = invoke("queue", "list", *box)
    assert listed.exit_code == 0, listed.output
    header, row = cells_of(listed.stdout)
    assert header == ["KEY", "DATE", "SENDER", "RECIPIENTS", "REASON"]
    assert row[0] == key
    assert row[2:] == ["alice@example.org", "gone@example.com", "550 5.1.1 No such user"]
    assert invoke("queue", "count", *box).stdout == "1\n"

    shown = invoke("queue", "show", *box, key)
    info, _, raw = shown.stdout_bytes.partition(b"\n\n")
    assert b"Recipient: gone@example.com: 550 5.1.1 No such user" in info
    assert raw == message.data

    assert_one_line_error(invoke("queue", "show", *box, "nope"), "'nope'", "in the failed maildir")
    assert invoke("queue", "remove", *box, key).stdout == f"removed {key}\n"
    assert invoke("queue", "count", *box).stdout == "0\n"
    asyncio.run(store(project, message, replies))
    assert invoke("queue", "clear", "--yes", *box).stdout == "removed 1 messages\n"
    assert invoke("queue", "count", *box).stdout == "0\n"


def test_queue_replay_and_retry_take_no_box(project: Path) -> None:
    for command in ("replay", "retry"):
        result = invoke("queue", command, "--config", config(project), "--box", "outbox")
        assert result.exit_code == 2 and "No such option '--box'" in result.output


def relay_env(port: int) -> dict[str, str]:
    """The settings that point the project's relay at 127.0.0.1:``port``."""
    return {
        "MAILROUTER_RELAY_HOST": "127.0.0.1",
        "MAILROUTER_RELAY_PORT": str(port),
        "MAILROUTER_RELAY_TIMEOUT": "5",
        "MAILROUTER_HOSTNAME": "client.test",
    }


async def retry(project: Path, port: int) -> Result:
    """``mailrouter queue retry`` in a thread, so that a sink keeps serving on this loop."""
    return await asyncio.to_thread(
        invoke, "queue", "retry", "--config", config(project), **relay_env(port)
    )


async def test_queue_retry_delivers_a_deferred_entry_before_it_is_due(project: Path) -> None:
    message = mail("alice@example.org", ["bob@example.com", "carol@example.com"])
    replies = dict.fromkeys(message.recipients, Attempt("deferred", "451 4.3.0 Try later"))
    await store(project, message, replies)  # next attempt: a minute from now
    sink = Sink()
    async with sink_server(sink) as port:
        result = await retry(project, port)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "outbox entries tried: 1; recipients: 2 delivered, 0 deferred again, 0 failed\n"
    )
    [got] = sink.received
    assert (got.sender, got.recipients) == ("alice@example.org", message.recipients)
    assert got.data == message.data
    outbox = outbox_of(project)
    assert outbox.queue is not None and outbox.failed is not None
    assert len(outbox.queue) == 0 and len(outbox.failed) == 0


async def test_queue_retry_defers_again_and_gives_up_after_the_expiry(project: Path) -> None:
    now = time.time()
    fresh = await store(
        project,
        mail(recipients=["bob@example.com"]),
        {"bob@example.com": Attempt("deferred", "451 4.3.0 Try later")},
    )
    # First tried longer ago than the expiry, but not due for half an hour yet.
    policy = RetryPolicy()
    old = Schedule(20, now - policy.expire - 1, 0)
    expired = await store(
        project,
        mail(recipients=["old@example.com"]),
        {"old@example.com": Attempt("deferred", "451 4.3.0 Try later")},
        schedule=old,
        now=now - policy.maximum / 2,
    )
    sink = Sink()
    sink.mail_reply = "451 4.3.0 Still busy"
    async with sink_server(sink) as port:
        result = await retry(project, port)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "outbox entries tried: 2; recipients: 0 delivered, 1 deferred again, 1 failed\n"
    )
    assert sink.received == []
    outbox = outbox_of(project)
    assert outbox.queue is not None and outbox.failed is not None
    [again] = outbox.queue.keys()
    assert again not in (fresh, expired)
    entry = outbox.queue.read(again)
    assert entry.message.recipients == ["bob@example.com"]
    schedule, reply = Schedule.decode(entry.reasons["bob@example.com"], 0)
    assert schedule.attempts == 2 and "Still busy" in reply
    assert schedule.next == pytest.approx(time.time() + policy.delay(2), abs=5)
    [gave_up] = outbox.failed.keys()
    failed = outbox.failed.read(gave_up)
    assert failed.message.recipients == ["old@example.com"]
    assert failed.reasons["old@example.com"].startswith("gave up after 22 attempts: ")


def test_queue_retry_while_a_pass_runs_is_one_line(project: Path) -> None:
    key = asyncio.run(
        store(project, mail(), {"someone@example.com": Attempt("deferred", "451 Later")})
    )
    outbox = outbox_of(project).queue
    assert outbox is not None
    before = outbox.read(key).reasons
    closed = socket.socket()  # bound, never listening: no mail could go anywhere
    closed.bind(("127.0.0.1", 0))
    fd = os.open(Path(outbox.path) / "retry.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = invoke(
            "queue", "retry", "--config", config(project), **relay_env(closed.getsockname()[1])
        )
    finally:
        os.close(fd)
        closed.close()
    assert_one_line_error(result, "in the middle of a retry pass", "try again")
    assert outbox.keys() == [key]
    assert outbox.read(key).reasons == before


def test_queue_retry_with_an_empty_outbox(project: Path) -> None:
    queue_of(project).push(mail())  # the undeliverable queue is not the outbox
    result = invoke("queue", "retry", "--config", config(project), **relay_env(9))
    assert result.exit_code == 0, result.output
    assert result.stdout == "the outbox is empty\n"
    assert len(queue_of(project)) == 1


# -- send and sendmail ---------------------------------------------------------------------


def seen(app: str) -> list[tuple[str, str, bytes]]:
    return sys.modules[app].seen  # type: ignore[no-any-return]


async def in_thread(*args: str, input: bytes | None = None) -> Result:
    """Invoke the CLI in a thread, so that the server keeps serving on this loop."""
    return await asyncio.to_thread(invoke, *args, input=input)


def envelope(port: int | str, sender: str, *rcpts: str) -> list[str]:
    """The ``mailrouter send`` options for mail from ``sender`` to ``rcpts`` via ``port``."""
    return ["--port", str(port), "--from", sender, *(o for r in rcpts for o in ("--to", r))]


async def test_send_composes_a_proper_message(tmp_path: Path, app: str) -> None:
    (tmp_path / "notes.txt").write_text("some notes\n")
    (tmp_path / "pixel.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "blob.weird").write_bytes(bytes(range(256)))
    async with running(tmp_path, app) as server:
        result = await in_thread(
            "send",
            *envelope(
                server.port, "Alice <alice@example.org>", "ann@example.com", "bob@example.com"
            ),
            "--subject",
            "Grüße",
            "--body",
            "Hello there.",
            "--attach",
            str(tmp_path / "notes.txt"),
            "--attach",
            str(tmp_path / "pixel.png"),
            "--attach",
            str(tmp_path / "blob.weird"),
        )
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"250 2\.0\.0 .+\n", result.stdout)
    [(sender, rcpt, data), (_, rcpt2, _)] = seen(app)
    assert (sender, rcpt, rcpt2) == ("alice@example.org", "ann@example.com", "bob@example.com")
    message = message_from_bytes(data, policy=policy.default)
    assert message["Subject"] == "Grüße"
    assert message["To"] == "ann@example.com, bob@example.com"
    assert message["Date"] and message["Message-ID"]
    body = message.get_body()
    assert body is not None and body.get_content().rstrip() == "Hello there."
    parts = {part.get_filename(): part for part in message.iter_attachments()}
    assert parts["notes.txt"].get_content_type() == "text/plain"
    assert parts["pixel.png"].get_content() == b"\x89PNG\r\n\x1a\n"
    assert parts["blob.weird"].get_content_type() == "application/octet-stream"
    assert parts["blob.weird"].get_content() == bytes(range(256))


async def test_send_refusal_is_one_line_and_exit_1(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app) as server:
        port = str(server.port)
        refused = await in_thread("send", *envelope(port, "a@x.org", "refuse@example.com"))
        unroutable = await in_thread("send", *envelope(port, "a@x.org", "nobody@elsewhere.org"))
    assert_one_line_error(refused, "550 5.7.1 Not here")
    assert refused.stdout == ""
    assert unroutable.exit_code == 0  # acknowledged, and queued


async def test_send_rcpt_refusal(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, reject_unroutable=True) as server:
        result = await in_thread(
            "send", *envelope(server.port, "a@x.org", "ann@example.com", "x@elsewhere.org")
        )
    assert_one_line_error(result, "<x@elsewhere.org> refused: 550 5.1.1")
    assert result.stdout.startswith("250 ")
    assert [rcpt for _, rcpt, _ in seen(app)] == ["ann@example.com"]


async def test_send_lmtp_prints_one_reply_per_recipient(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, protocol="lmtp") as server:
        rcpts = ["ann@example.com", "refuse@example.com", "bob@example.com"]
        result = await in_thread("send", "--lmtp", *envelope(server.port, "a@x.org", *rcpts))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["<ann@example.com>", "<bob@example.com>"]
    assert all(" 250 " in line for line in lines)
    assert_one_line_error(result, "<refuse@example.com> refused: 550 5.7.1 Not here")


async def test_sendmail_sends_stdin_as_is(tmp_path: Path, app: str) -> None:
    raw = b"From: Carol <carol@example.org>\nSubject: raw\nX-Custom: kept\n\nLine one.\n.dot\n"
    async with running(tmp_path, app) as server:
        port = str(server.port)
        result = await in_thread(
            "sendmail", "--port", port, "ann@example.com", "bob@example.com", input=raw
        )
        explicit = await in_thread(
            "sendmail", "-f", "bounce@example.org", "--port", port, "ann@example.com", input=raw
        )
        anonymous = await in_thread(
            "sendmail", "--port", port, "ann@example.com", input=b"Subject: x\n\nhi\n"
        )
    assert result.exit_code == 0, result.output
    assert explicit.exit_code == 0, explicit.output
    received = seen(app)
    assert [(s, r) for s, r, _ in received] == [
        ("carol@example.org", "ann@example.com"),
        ("carol@example.org", "bob@example.com"),
        ("bounce@example.org", "ann@example.com"),
    ]
    assert received[0][2] == raw.replace(b"\n", b"\r\n")
    assert_one_line_error(anonymous, "--from")


def test_send_to_a_closed_port_is_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = invoke("send", *envelope(port, "a@x.org", "b@x.org"))
    assert_one_line_error(result, f"127.0.0.1:{port}", "refused")


# -- gen ---------------------------------------------------------------------------------------


def test_gen_creates_a_project_whose_test_passes(project: Path) -> None:
    assert (project / "config" / "handlers" / "hello.py").is_file()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAILROUTER_")},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout


def test_gen_config_documents_every_setting_with_its_default(project: Path) -> None:
    text = (project / "config" / "mailrouter.toml").read_text()
    assert re.search(r"^handlers = \[\]$", text, re.M)
    for name in FIELDS:
        if name not in ("config_dir", "defaults", "handlers"):
            assert re.search(rf"^# {name} = ", text, re.M), name
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)
    values = tomllib.loads(uncommented)
    defaults = Settings()
    for name, value in values.items():
        if name != "defaults":
            expected = getattr(defaults, name)
            assert value == (list(expected) if isinstance(expected, tuple) else expected), name
    assert settings_of(project).defaults == {"host": r"localhost|example\.com"}


def test_gen_routes_one_address_only(project: Path) -> None:
    result = invoke("routes", "--config", config(project))
    patterns = {line.split()[0] for line in result.stdout.splitlines()[1:]}
    assert patterns == {"hello@(host)"}
    for address in ("someone@localhost", "hello@evil.example.net", "hello@localhost.evil"):
        assert invoke("routes", "--config", config(project), "--test", address).exit_code == 1


def test_gen_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert_one_line_error(invoke("gen", str(tmp_path / "taken")), "not empty")
    assert invoke("gen", str(tmp_path / "empty")).exit_code == 0
    (tmp_path / "fresh").mkdir()
    assert invoke("gen", str(tmp_path / "fresh")).exit_code == 0


def test_table_aligns_columns() -> None:
    text = common.table(("A", "LONGER"), [("wide cell", "x"), ("y", "")])
    assert text.splitlines() == ["A          LONGER", "wide cell  x", "y"]


def test_log_lines_cannot_be_forged_by_client_data() -> None:
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(common.OneLineFormatter(common.LOG_FORMAT))
    logger = logging.getLogger("test.forgery")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("sender: %s", "evil@x.org\r\n2026-01-01 00:00:00 INFO mailrouter: forged")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed for %s", "a\nb")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("sender: evil@x.org\\r\\n2026-01-01 00:00:00 INFO mailrouter: forged")
    assert lines[1].endswith("failed for a\\nb")
    assert lines[2] == "Traceback (most recent call last):"


def test_sink_keeps_every_message_and_prints_a_line(tmp_path: Path) -> None:
    import smtplib

    process = subprocess.Popen(
        [sys.executable, "-m", "mailrouter", "sink", "--port", "0", "--maildir", "box"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        port = int(ready.split(" on ")[1].split(",")[0].rsplit(":", 1)[1])
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("dev@x.org", ["a@y.org", "b@y.org"], b"Subject: hi there\r\n\r\nx\r\n")
        summary = process.stdout.readline()
        assert "dev@x.org -> a@y.org, b@y.org: 'hi there'" in summary
        (saved,) = (tmp_path / "box" / "new").iterdir()
        assert saved.name in summary
    finally:
        process.terminate()
        assert process.wait(10) == 0
        if process.stdout is not None:
            process.stdout.close()


def test_every_start_option_has_a_real_help_sentence() -> None:
    from mailrouter.cli.common import CLI_SETTINGS, SETTING_HELP

    assert [name for name in CLI_SETTINGS if name not in SETTING_HELP] == []
    result = invoke("start", "--help")
    assert "The relay_host setting." not in result.output
    assert "Smarthost for outgoing mail" in result.output


def test_a_misspelt_environment_variable_is_named_with_the_closest_setting(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILROUTER_RELAY_HOTS", "smtp.example.com")
    result = invoke("status", "--config", config(project))
    assert (
        "Warning: unknown environment variable MAILROUTER_RELAY_HOTS"
        " (did you mean MAILROUTER_RELAY_HOST?)" in result.stderr
    )
    monkeypatch.delenv("MAILROUTER_RELAY_HOTS")
    monkeypatch.setenv("MAILROUTER_QUEUE_BOX", "outbox")  # an option's variable: known
    assert "Warning" not in invoke("status", "--config", config(project)).stderr
