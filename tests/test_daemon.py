"""The real ``mailrouter`` command in subprocesses: start, status, stop, pid files, signals."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import READY, Project, environment, wait_for

from mailrouter.config import Settings
from mailrouter.errors import MailRouterError
from mailrouter.runtime import daemon

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture
def project(make_project: Callable[..., Project]) -> Project:
    """A project made by ``mailrouter gen``."""
    return make_project("project")


def smtp_send(port: int, rcpt: str) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail("a@example.org", [rcpt], MESSAGE)


def test_start_status_send_stop(project: Project) -> None:
    port, pid = project.start()
    assert daemon.pid_alive(pid)
    assert project.pid_file.read_text() == f"{pid}\n"

    status = project.run("status")
    assert status.returncode == 0
    assert status.stdout == f"mailrouter running on 127.0.0.1:{port} (pid {pid})\n"

    assert smtp_send(port, "hello@localhost") == {}
    log = project.folder / "logs" / "mailrouter.log"
    wait_for(lambda: "hello from a@example.org" in log.read_text())
    assert re.search(
        r"^\d{4}-\d\d-\d\d [\d:,]+ INFO +mailrouter\.runtime\.server: ", log.read_text(), re.M
    )

    stopped = project.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == f"mailrouter stopped (pid {pid})\n"
    assert not daemon.pid_alive(pid)
    assert not project.pid_file.exists()
    assert not Path(f"{project.pid_file}.address").exists()

    status = project.run("status")
    assert (status.returncode, status.stdout) == (1, "mailrouter is not running\n")
    again = project.run("stop")
    assert (again.returncode, again.stderr) == (1, "Error: mailrouter is not running\n")


def test_json_logs_in_the_log_file(project: Project) -> None:
    port, _ = project.start("--log-format", "json")
    assert smtp_send(port, "hello@localhost") == {}
    assert project.run("stop").returncode == 0
    lines = (project.folder / "logs" / "mailrouter.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["message"].startswith("mailrouter ready on 127.0.0.1:")
    (delivery,) = [r for r in records if r["logger"] == "mailrouter.routing.result"]
    assert delivery["level"] == "INFO" and delivery["outcome"] == "accepted"
    assert delivery["recipients"] == ["hello@localhost"]
    assert delivery["handlers"] == ["handlers.hello.START"]


@pytest.mark.parametrize(("choice", "loop"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_the_event_loop_is_uvloop_when_installed(project: Project, choice: str, loop: str) -> None:
    port, _ = project.start("--event-loop", choice)
    assert smtp_send(port, "hello@localhost") == {}
    assert project.run("stop").returncode == 0
    ready = (project.folder / "logs" / "mailrouter.log").read_text().splitlines()[0]
    assert ready.endswith(f" routes, {loop})")


def test_a_second_start_is_refused(project: Project) -> None:
    _, pid = project.start()
    second = project.run("start", "--port", "0")
    assert second.returncode == 1
    assert second.stderr == f"Error: mailrouter is already running (pid {pid})\n"
    foreground = project.run("start", "--foreground", "--port", "0")
    assert foreground.returncode == 1 and "already running" in foreground.stderr
    assert project.pid_file.read_text() == f"{pid}\n"


def test_a_stale_pid_file_is_replaced(project: Project) -> None:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as gone:
        gone.wait(timeout=30)
    project.pid_file.parent.mkdir(parents=True, exist_ok=True)
    project.pid_file.write_text(f"{gone.pid}\n")
    assert project.run("status").returncode == 1
    port, pid = project.start()
    assert pid != gone.pid
    assert project.pid_file.read_text() == f"{pid}\n"
    assert smtp_send(port, "hello@localhost") == {}


def test_startup_failures_are_reported_by_the_starting_command(project: Project) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = project.run("start", "--port", str(port))
    assert busy.returncode == 1
    assert busy.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in busy.stderr.lower() and busy.stderr.count("\n") == 1
    assert not project.pid_file.exists()

    (project.folder / "config" / "handlers" / "broken.py").write_text("import no_such_module\n")
    broken = project.run("start", "--port", "0")
    assert broken.returncode == 1
    assert broken.stderr.startswith("Error: cannot import handler module 'handlers.broken'")
    assert broken.stderr.count("\n") == 1 and "Traceback" not in broken.stderr
    assert not project.pid_file.exists()


def test_foreground_exits_0_on_sigterm(project: Project) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "mailrouter", "start", "--foreground", "--port", "0"],
        cwd=project.folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    ) as server:
        try:
            assert server.stdout is not None
            match = READY.fullmatch(server.stdout.readline().strip())
            assert match, server.stderr.read() if server.stderr else ""
            assert int(match.group(3)) == server.pid
            assert project.pid_file.read_text() == f"{server.pid}\n"
            assert smtp_send(int(match.group(2)), "hello@localhost") == {}
            server.send_signal(signal.SIGTERM)
            _, errors = server.communicate(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()
    assert server.returncode == 0, errors
    assert "Traceback" not in errors
    assert "INFO    mailrouter.runtime.server: mailrouter stopped" in errors
    assert not project.pid_file.exists()


def test_stop_waits_then_kills_with_force(project: Project) -> None:
    """A server that ignores SIGTERM: stop gives up without --force, kills with it."""
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", script]) as stubborn:
        try:
            wait_for(lambda: _ignores_sigterm(stubborn.pid))
            settings = project.settings
            daemon.write_pid_file(settings, "127.0.0.1:1")
            project.pid_file.write_text(f"{stubborn.pid}\n")
            polite = project.run("stop", "--timeout", "0.3")
            assert polite.returncode == 1
            assert "still running after 0.3s; use --force" in polite.stderr
            assert stubborn.poll() is None and project.pid_file.exists()
            forced = project.run("stop", "--timeout", "0.3", "--force")
            assert forced.returncode == 0, forced.stderr
            assert stubborn.wait(timeout=30) == -signal.SIGKILL
            assert not project.pid_file.exists()
        finally:
            if stubborn.poll() is None:
                stubborn.kill()


def _ignores_sigterm(pid: int) -> bool:
    found = re.search(r"^SigIgn:\s*([0-9a-f]+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    return found is not None and bool(int(found.group(1), 16) & (1 << (signal.SIGTERM - 1)))


def test_python_dash_m_mailrouter_cli_works_too() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mailrouter.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "mailrouter, version" in result.stdout


# -- helpers in-process ----------------------------------------------------------------------


def test_read_pid_and_pid_alive(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    assert daemon.read_pid(path) is None
    path.write_text("garbage\n")
    assert daemon.read_pid(path) is None
    path.write_text(f"{os.getpid()}\n")
    assert daemon.read_pid(path) == os.getpid()
    assert daemon.pid_alive(os.getpid())
    with subprocess.Popen([sys.executable, "-c", "pass"]) as child:
        # Exited but not yet reaped: a zombie is not alive.
        wait_for(lambda: not daemon.pid_alive(child.pid))
    assert not daemon.pid_alive(child.pid)


def test_pid_file_is_written_atomically_and_removed_only_by_its_owner(tmp_path: Path) -> None:
    settings = Settings(config_dir=str(tmp_path / "config"))
    with daemon.pid_file(settings) as ready:
        ready("127.0.0.1:25")
        assert daemon.running_pid(settings) == os.getpid()
        assert daemon.read_address(settings) == "127.0.0.1:25"
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
            "mailrouter.pid",
            "mailrouter.pid.address",
        ]
    assert not (tmp_path / "run" / "mailrouter.pid").exists()
    # Someone else's pid file is left alone.
    daemon.pid_path(settings).write_text("1\n")
    with daemon.pid_file(settings):
        pass
    assert daemon.read_pid(daemon.pid_path(settings)) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_drop_privileges_switches_user_and_group(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    code = (
        "import os, sys\n"
        "from mailrouter.config import Settings\n"
        "from mailrouter.runtime.daemon import drop_privileges\n"
        "drop_privileges(Settings(user='nobody', group='nogroup', config_dir=sys.argv[1]))\n"
        "print(os.getuid(), os.getgid(), os.getgroups())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "config")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    assert result.stdout.split(maxsplit=2)[:2] == [str(nobody), str(nogroup)]
    assert (tmp_path / "run").stat().st_uid == nobody


def test_drop_privileges_unknown_names_are_clear_errors() -> None:
    with pytest.raises(MailRouterError, match="unknown user 'no-such-user'"):
        daemon.drop_privileges(Settings(user="no-such-user"))
    with pytest.raises(MailRouterError, match="unknown group 'no-such-group'"):
        daemon.drop_privileges(Settings(group="no-such-group"))


def test_drop_privileges_refuses_to_stay_root_unless_allowed() -> None:
    daemon.drop_privileges(Settings(allow_root=True))  # nothing to do
    if os.geteuid() == 0:
        with pytest.raises(MailRouterError, match="refusing to run as root"):
            daemon.drop_privileges(Settings())
    else:
        daemon.drop_privileges(Settings())


@pytest.mark.skipif(os.geteuid() != 0, reason="only root is refused")
def test_start_as_root_without_allow_root_is_refused(project: Project) -> None:
    result = project.run("start", "--port", "0", "--no-allow-root")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: refusing to run as root")
    assert not project.pid_file.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_daemon_runs_as_the_configured_user(make_project: Callable[..., Project]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="mailrouter-", dir="/tmp"))
    try:
        folder.chmod(0o755)  # the dropped user must reach its files
        project = make_project(folder / "project")
        try:
            port, pid = project.start("--user", "nobody")
            uids = re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
            assert uids and int(uids.group(1)) == pwd.getpwnam("nobody").pw_uid
            assert smtp_send(port, "nobody@localhost") == {}  # queued by the unprivileged server
            stopped = project.run("stop")
            assert stopped.returncode == 0, stopped.stderr
            assert not project.pid_file.exists()
            assert project.run("queue", "count").stdout == "1\n"
        finally:
            project.kill_all()
    finally:
        shutil.rmtree(folder)
