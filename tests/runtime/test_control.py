"""The control socket, with the real ``mailrouter`` command against a real daemon: status,
reload, stop, senders' states, and the queue commands done by the running server."""

from __future__ import annotations

import asyncio
import json
import os
import smtplib
import socket
import stat
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Project, Sink, sink_server, wait_for

from mailrouter.runtime import control

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"

MACHINE = textwrap.dedent(
    """
    from mailrouter import route, stateless

    @route("list@(host)")
    def START(message, host=None):
        if message["Subject"] == "boom":
            raise ValueError("the list broke")
        return POSTING

    @route("list@(host)")
    def POSTING(message, host=None):
        print("posting from", message.sender, flush=True)
        return POSTING

    @route("log@(host)")
    @stateless
    def LOG(message, host=None):
        raise RuntimeError("a stateless failure")
    """
)


def send(port: int, rcpt: str, subject: str = "hi", sender: str = "a@example.org") -> None:
    data = f"From: {sender}\r\nSubject: {subject}\r\n\r\nHello.\r\n".encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.sendmail(sender, [rcpt], data) == {}


def control_path(project: Project) -> Path:
    return project.folder / "run" / "control.sock"


@pytest.fixture
def project(make_project: Callable[..., Project]) -> Project:
    """A generated project with a small state machine as its only extra handler module."""
    return make_project("project", None, lists=MACHINE)


def test_status_reports_the_running_server(project: Project) -> None:
    port, pid = project.start()
    send(port, "hello@localhost")
    path = control_path(project)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_uid == os.getuid()

    shown = project.run("status")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"mailrouter running on 127.0.0.1:{port} (pid {pid})"
    assert lines[1].startswith("version ") and "1 worker, SMTP, direct mode, 3 routes" in lines[1]
    assert "journal: 1 delivered" in shown.stdout
    assert "queues: undeliverable 0, outbox 0, failed 0" in shown.stdout

    report = json.loads(project.run("status", "--json").stdout)
    assert report["running"] is True and report["pid"] == pid
    assert report["address"] == f"127.0.0.1:{port}" and report["workers"] == 1
    assert report["journal"]["delivered"] == 1 and report["queues"]["undeliverable"] == 0
    assert report["uptime"] >= 0 and report["version"]

    assert project.run("stop").returncode == 0
    assert not path.exists()
    stopped = project.run("status", "--json")
    assert (stopped.returncode, json.loads(stopped.stdout)) == (1, {"running": False})


def test_bad_requests_get_an_error_line_and_the_server_serves_on(project: Project) -> None:
    port, _ = project.start()
    path = control_path(project)
    for request in (b"not json\n", b'{"args": {}}\n', b'{"command": "nope"}\n', b"\n"):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(request)
            answer = json.loads(sock.makefile("rb").readline())
        assert answer["ok"] is False and answer["error"], request
    with pytest.raises(control.ControlError, match="unknown command 'nope'"):
        control.request(path, "nope")
    with socket.socket(socket.AF_UNIX) as sock:  # a client that says nothing and leaves
        sock.connect(str(path))
    assert control.request(path, "status")["address"] == f"127.0.0.1:{port}"
    send(port, "hello@localhost")


def test_reload_answers_with_the_count_or_the_error(project: Project) -> None:
    port, _ = project.start()
    handlers = project.folder / "config" / "handlers"
    (handlers / "lists.py").write_text(MACHINE.replace('@route("log@(host)")\n@stateless\n', ""))
    done = project.run("reload")
    assert (done.returncode, done.stdout) == (0, "reloaded: 2 routes\n")

    (handlers / "broken.py").write_text("import no_such_module\n")
    failed = project.run("reload")
    assert failed.returncode == 1
    assert failed.stderr.startswith("Error: reload failed, keeping the old routes: ")
    assert "no_such_module" in failed.stderr
    send(port, "hello@localhost")  # the old table, whole
    assert json.loads(project.run("status", "--json").stdout)["routes"] == 2

    (handlers / "broken.py").unlink()
    stopped = project.run("stop")
    assert stopped.returncode == 0
    not_running = project.run("reload")
    assert (not_running.returncode, not_running.stderr) == (1, "Error: mailrouter is not running\n")


def test_error_states_explain_themselves_and_reset_through_the_server(project: Project) -> None:
    """The default shelve store is held open by the server: the commands go through it."""
    port, _ = project.start()
    send(port, "log@localhost", sender="s@example.org")  # stateless: leaves no state
    assert project.run("state", "list").stdout == "no stored states\n"

    send(port, "list@localhost", "boom", sender="s@example.org")
    listed = project.run("state", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert (entry["key"], entry["sender"], entry["state"]) == (
        "handlers.lists",
        "s@example.org",
        "ERROR",
    )
    assert entry["reason"]["handler"] == "handlers.lists.START"
    assert entry["reason"]["error"] == "ValueError: the list broke"

    shown = project.run("state", "show", "s@example.org")
    assert "handlers.lists.START raised ValueError: the list broke" in shown.stdout
    assert "mailrouter state reset s@example.org" in shown.stdout
    test = project.run("routes", "--test", "list@localhost", "--sender", "s@example.org")
    assert "ValueError: the list broke" in test.stdout

    assert (
        project.run("state", "list", "--state", "POSTING").stdout == "no stored states in POSTING\n"
    )
    reset = project.run("state", "reset", "s@example.org")
    assert reset.stdout == "s@example.org under handlers.lists: ERROR -> START\n"
    assert project.run("state", "show", "s@example.org").stdout.startswith(
        "s@example.org is in START"
    )

    send(port, "list@localhost", sender="s@example.org")
    changed = project.run("state", "set", "s@example.org", "START")
    assert changed.stdout == "s@example.org under handlers.lists: POSTING -> START\n"
    unnamed = project.run("state", "set", "s@example.org", "POSTING")
    assert unnamed.stderr == (
        "Error: name the state key with --key (one of: handlers.hello, handlers.lists)\n"
    )
    wrong = project.run("state", "set", "s@example.org", "NOPE", "--key", "handlers.lists")
    assert wrong.returncode == 1
    assert wrong.stderr == (
        "Error: 'NOPE' is not a state of 'handlers.lists' (known: ERROR, POSTING, START)\n"
    )
    ok = project.run("state", "set", "s@example.org", "POSTING", "--key", "handlers.lists")
    assert ok.returncode == 0, ok.stderr
    assert "POSTING" in project.run("state", "show", "s@example.org").stdout


def test_state_commands_work_on_the_files_when_no_server_runs(project: Project) -> None:
    port, _ = project.start()
    send(port, "list@localhost", sender="s@example.org")
    assert project.run("stop").returncode == 0
    listed = project.run("state", "list")
    assert listed.returncode == 0, listed.stderr
    assert "handlers.lists  s@example.org  POSTING" in listed.stdout
    assert project.run("state", "reset", "s@example.org").returncode == 0
    assert project.run("state", "list").stdout == "no stored states\n"


def test_replay_is_done_by_the_running_server(project: Project) -> None:
    port, _ = project.start()
    send(port, "later@localhost")  # no route: queued
    handlers = project.folder / "config" / "handlers"
    (handlers / "later.py").write_text(
        "from mailrouter import route, stateless\n\n"
        '@route("later@(host)")\n@stateless\ndef LATER(message, host=None):\n'
        '    print("replayed", message.sender, flush=True)\n'
    )
    assert project.run("reload").returncode == 0
    replayed = project.run("queue", "replay")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == "replayed 1 messages: 1 delivered, 0 still undeliverable\n"
    assert project.run("queue", "count").stdout.strip().startswith("0")
    empty = project.run("queue", "replay")
    assert empty.stdout == "the undeliverable queue is empty\n"


async def test_retry_uses_the_running_servers_relay_options(
    make_project: Callable[..., Project],
) -> None:
    """The relay port is given only on the command line: ``queue retry`` must use it."""
    sender = textwrap.dedent(
        """
        from mailrouter import route, stateless
        from mailrouter.outbound import sender
        from mailrouter.outbound.response import MailResponse

        @route("out@(host)")
        @stateless
        def OUT(message, host=None):
            sender.send(MailResponse("far@example.net", "me@example.org", "x", "y"))
        """
    )
    project = make_project("project", None, out=sender)
    sink = Sink()
    sink.data_reply = "451 4.3.0 Not now"
    async with sink_server(sink) as relay_port:
        port, _ = await asyncio.to_thread(
            project.start, "--relay-host", "127.0.0.1", "--relay-port", str(relay_port)
        )
        await asyncio.to_thread(send, port, "out@localhost")
        outbox = project.folder / "run" / "outbox" / "new"
        await asyncio.to_thread(wait_for, lambda: any(outbox.iterdir()))
        sink.data_reply = None
        retried = await asyncio.to_thread(project.run, "queue", "retry")
        assert retried.returncode == 0, retried.stderr
        assert retried.stdout == (
            "outbox entries tried: 1; recipients: 1 delivered, 0 deferred again, 0 failed\n"
        )
    assert [r.recipients for r in sink.received] == [["far@example.net"]]
    assert not any((project.folder / "run" / "failed" / "new").iterdir())


def test_stop_and_status_without_a_control_socket(make_project: Callable[..., Project]) -> None:
    project = make_project("project")
    toml = project.folder / "config" / "mailrouter.toml"
    toml.write_text('control_socket = ""\n' + toml.read_text())
    port, pid = project.start()
    assert not control_path(project).exists()
    assert project.run("status").stdout == f"mailrouter running on 127.0.0.1:{port} (pid {pid})\n"
    sighup = project.run("reload")
    assert (
        sighup.stdout
        == f"sent SIGHUP to mailrouter (pid {pid}); the log says how the reload went\n"
    )
    assert project.run("stop").stdout == f"mailrouter stopped (pid {pid})\n"


def test_a_long_project_path_still_gets_its_control_socket(
    make_project: Callable[..., Project],
) -> None:
    project = make_project(Path("deep" * 10) / ("x" * 60))
    assert len(os.fsencode(control_path(project))) > 108
    _, pid = project.start()
    assert control.request(control_path(project), "status")["pid"] == pid
    assert project.run("stop").returncode == 0
    assert not control_path(project).exists()


def test_workers_share_one_control_socket(make_project: Callable[..., Project]) -> None:
    project = make_project("project")
    port, pid = project.start("--workers", "2", "--state-url", "sqlite://run/state.sqlite")
    report = json.loads(project.run("status", "--json").stdout)
    assert (report["pid"], report["workers"]) == (pid, 2)
    assert project.run("reload").stdout == "reloaded: 1 route\n"
    send(port, "hello@localhost")
    stopped = project.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert project.run("status").returncode == 1


def test_status_is_unhealthy_when_the_control_socket_does_not_answer(
    make_project: Callable[..., Project],
) -> None:
    """What the Docker image's HEALTHCHECK (``mailrouter status``) sees of a stuck server."""
    project = make_project("project")
    port, pid = project.start()
    assert project.run("status").returncode == 0
    control_path(project).unlink()  # the socket gone: the server cannot be asked any more
    unhealthy = project.run("status")
    assert unhealthy.returncode == 4
    assert unhealthy.stdout.splitlines() == [
        f"mailrouter running on 127.0.0.1:{port} (pid {pid})",
        f"the control socket {control_path(project)} does not answer",
    ]
    assert project.run("stop").returncode == 0  # by signal, since the socket does not answer
    assert "HEALTHCHECK" in (Path(__file__).parents[2] / "Dockerfile").read_text()
