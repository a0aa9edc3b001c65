"""The real ``mailrouter`` command in subprocesses: start, status, stop, pid files, signals."""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import READY, Project, environment, wait_for

from mailrouter.config import Settings
from mailrouter.errors import MailRouterError
from mailrouter.runtime import daemon, pidlock

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
    assert pidlock.pid_alive(pid)
    assert project.pid_file.read_text() == f"{pid}\n"

    status = project.run("status")
    assert status.returncode == 0
    assert status.stdout.startswith(f"mailrouter running on 127.0.0.1:{port} (pid {pid})\n")

    assert smtp_send(port, "hello@localhost") == {}
    log = project.folder / "logs" / "mailrouter.log"
    wait_for(lambda: "hello from a@example.org" in log.read_text())
    assert re.search(
        r"^\d{4}-\d\d-\d\d [\d:,]+ INFO +mailrouter\.runtime\.serve: ", log.read_text(), re.M
    )

    stopped = project.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == f"mailrouter stopped (pid {pid})\n"
    assert not pidlock.pid_alive(pid)
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
    assert "INFO    mailrouter.runtime.serve: mailrouter stopped" in errors
    assert not project.pid_file.exists()


# -- the lock, not the pid, says whether this server runs ------------------------------------

#: Takes the server lock of the project in argv[1] the way the server does, prints "locked",
#: then sleeps. argv[2]: "starting" (no pid file yet), "stubborn" (a pid file, SIGTERM
#: ignored), "release" (a pid file; on SIGTERM it lets go of the lock and lives on).
HOLDER = """
import signal, sys, time
from mailrouter.config import load_settings
from mailrouter.runtime import daemon, pidlock

class Release(Exception):
    pass

def release(signum, frame):
    raise Release

mode = sys.argv[2]
signal.signal(signal.SIGTERM, release if mode == "release" else signal.SIG_IGN)
try:
    with pidlock.pid_file(load_settings(sys.argv[1])) as ready:
        if mode != "starting":
            ready("127.0.0.1:1")
        print("locked", flush=True)
        time.sleep(300)
except Release:
    time.sleep(300)
"""


@contextlib.contextmanager
def _lock_holder(project: Project, mode: str) -> Iterator[subprocess.Popen[str]]:
    """A process of ours holding ``project``'s server lock (see ``HOLDER``); killed after."""
    config = str(project.folder / "config")
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, config, mode], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            yield holder
        finally:
            holder.kill()


@contextlib.contextmanager
def _stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that has nothing to do with mailrouter: ``sleep 300``."""
    with subprocess.Popen(["sleep", "300"]) as sleeper:
        try:
            yield sleeper
        finally:
            sleeper.kill()


def test_stop_waits_then_kills_with_force(project: Project) -> None:
    """A server that ignores SIGTERM: stop gives up without --force, kills with it."""
    with _lock_holder(project, "stubborn") as stubborn:
        polite = project.run("stop", "--timeout", "0.3")
        assert polite.returncode == 1
        assert "still running after 0.3s; use --force" in polite.stderr
        assert stubborn.poll() is None and project.pid_file.exists()
        forced = project.run("stop", "--timeout", "0.3", "--force")
        assert forced.returncode == 0, forced.stderr
        assert forced.stdout == f"mailrouter stopped (pid {stubborn.pid})\n"
        assert stubborn.wait(timeout=30) == -signal.SIGKILL
        assert not project.pid_file.exists()


def test_force_kills_only_while_the_lock_is_held(project: Project) -> None:
    """A process that let go of the lock on SIGTERM but lives on is no longer proven: spared."""
    with _lock_holder(project, "release") as released:
        forced = project.run("stop", "--timeout", "0.5", "--force")
        assert forced.returncode == 1
        assert forced.stderr == (
            f"Error: pid {released.pid} is still running after 0.5s but no longer holds the "
            "server lock; not killing it\n"
        )
        assert released.poll() is None


def test_a_pid_file_naming_a_live_stranger_is_stale(project: Project) -> None:
    with _stranger() as sleeper:
        project.pid_file.parent.mkdir(parents=True, exist_ok=True)
        project.pid_file.write_text(f"{sleeper.pid}\n")
        stale = (
            f"mailrouter is not running (stale pid file {project.pid_file}: "
            f"pid {sleeper.pid} does not hold the lock)\n"
        )
        status = project.run("status")
        assert (status.returncode, status.stdout) == (1, stale)
        stop = project.run("stop", "--force", "--timeout", "0")
        assert (stop.returncode, stop.stderr) == (1, f"Error: {stale}")
        assert sleeper.poll() is None
        assert project.pid_file.read_text() == f"{sleeper.pid}\n"  # not ours: left alone

        port, pid = project.start()
        assert project.pid_file.read_text() == f"{pid}\n"
        assert smtp_send(port, "hello@localhost") == {}
        status = project.run("status")
        assert status.stdout.startswith(f"mailrouter running on 127.0.0.1:{port} (pid {pid})\n")
        stopped = project.run("stop")
        assert stopped.stdout == f"mailrouter stopped (pid {pid})\n", stopped.stderr
        assert not pidlock.pid_alive(pid) and not project.pid_file.exists()
        assert sleeper.poll() is None  # by now, a signal sent to it would have been delivered


def test_a_stale_pid_file_naming_pid_1_does_not_stop_a_start(project: Project) -> None:
    """The container case: the server was pid 1, killed; pid 1 is alive again (not it)."""
    project.pid_file.parent.mkdir(parents=True, exist_ok=True)
    project.pid_file.write_text("1\n")
    assert project.run("status").returncode == 1
    _, pid = project.start()
    assert project.pid_file.read_text() == f"{pid}\n"
    assert project.run("stop").returncode == 0


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a pid namespace needs root and unshare",
)
def test_pid_1_of_a_container_starts_again_after_kill_9(project: Project) -> None:
    """The Docker case: the server is pid 1 of its pid namespace, and run/ outlives it."""
    command = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "mailrouter"]
    command += ["start", "--foreground", "--port", "0"]
    servers: list[subprocess.Popen[str]] = []

    def start_as_pid_1() -> tuple[int, int]:
        """Start a server as pid 1 of a new pid namespace; its port, and its pid out here."""
        server = subprocess.Popen(
            command, cwd=project.folder, stdout=subprocess.PIPE, text=True, env=environment()
        )
        servers.append(server)
        assert server.stdout is not None
        match = READY.fullmatch(server.stdout.readline().strip())
        assert match and match.group(3) == "1", match
        holder = pidlock.lock_holder(project.settings)  # the kernel names it with our pid
        assert holder is not None and holder.pid is not None and holder.pid != 1
        return int(match.group(2)), holder.pid

    try:
        port, pid = start_as_pid_1()
        assert project.pid_file.read_text() == "1\n"
        status = project.run("status")
        assert status.stdout.startswith(f"mailrouter running on 127.0.0.1:{port} (pid {pid})\n")
        os.kill(pid, signal.SIGKILL)
        servers[0].wait(timeout=30)
        assert project.pid_file.read_text() == "1\n"  # and pid 1 is alive, but not this server
        assert "pid 1 does not hold the lock" in project.run("status").stdout

        port, pid = start_as_pid_1()
        assert smtp_send(port, "hello@localhost") == {}
        stopped = project.run("stop")  # from outside its namespace, by the pid the lock gives
        assert stopped.stdout == f"mailrouter stopped (pid {pid})\n", stopped.stderr
        assert servers[1].wait(timeout=30) == 0
        assert not project.pid_file.exists()
    finally:
        holder = pidlock.lock_holder(project.settings)
        if holder is not None and holder.pid is not None:
            os.kill(holder.pid, signal.SIGKILL)
        for server in servers:
            server.kill()
            server.communicate()


def test_start_again_after_kill_9(project: Project) -> None:
    _, pid = project.start()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pidlock.pid_alive(pid))
    assert project.pid_file.read_text() == f"{pid}\n"  # left behind, and its lock dropped
    status = project.run("status")
    assert status.returncode == 1 and "stale pid file" in status.stdout
    port, again = project.start()
    assert smtp_send(port, "hello@localhost") == {}
    status = project.run("status").stdout
    assert status.startswith(f"mailrouter running on 127.0.0.1:{port} (pid {again})\n")
    assert project.run("stop").returncode == 0


def test_concurrent_starts_one_wins(project: Project) -> None:
    command = [sys.executable, "-m", "mailrouter", "start", "--port", "0"]
    starts = [
        subprocess.Popen(
            command,
            cwd=project.folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        for _ in range(3)
    ]
    results = [(start.wait(60), *start.communicate()) for start in starts]
    winners = [match for _, out, _ in results if (match := READY.fullmatch(out.strip()))]
    project.started.update(int(match.group(3)) for match in winners)
    assert len(winners) == 1, results
    pid = int(winners[0].group(3))
    losers = sorted((code, err) for code, out, err in results if not READY.search(out))
    assert losers == [(1, f"Error: mailrouter is already running (pid {pid})\n")] * 2
    assert project.pid_file.read_text() == f"{pid}\n"
    assert project.run("stop").returncode == 0


def test_the_lock_decides_while_the_server_starts(project: Project) -> None:
    """Locked but no pid file yet: starting, and a second start is refused all the same."""
    with _lock_holder(project, "starting") as holder:
        assert not project.pid_file.exists()
        status = project.run("status")
        assert (status.returncode, status.stdout) == (
            0,
            f"mailrouter is starting (pid {holder.pid})\n",
        )
        for args in (["start", "--port", "0"], ["start", "--foreground", "--port", "0"]):
            second = project.run(*args)
            assert (second.returncode, second.stderr) == (
                1,
                f"Error: mailrouter is already running (pid {holder.pid})\n",
            )
        assert not project.pid_file.exists()


def test_workers_left_by_a_killed_supervisor_still_count(
    make_project: Callable[..., Project], tmp_path: Path
) -> None:
    """The forked workers share the lock: while one lives, no second server starts; but only
    the supervisor is proven, so nothing is signalled."""
    project = make_project("project")
    state = f"sqlite:///{tmp_path}/state.db"
    _, supervisor = project.start("--workers", "2", "--state-url", state)
    workers = _children(supervisor)
    assert len(workers) == 2
    try:
        os.kill(supervisor, signal.SIGKILL)
        wait_for(lambda: not pidlock.pid_alive(supervisor))
        status = project.run("status")
        assert status.returncode == 0
        assert status.stdout.startswith("mailrouter is running, but the process holding ")
        assert f"cannot be identified (pid file: {supervisor})\n" in status.stdout
        refused = project.run("start", "--port", "0")
        assert refused.returncode == 1 and "is locked by a process" in refused.stderr
        stop = project.run("stop", "--force", "--timeout", "0")
        assert stop.returncode == 1 and "not signalling anything" in stop.stderr
        assert all(pidlock.pid_alive(worker) for worker in workers)
    finally:
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
    wait_for(lambda: not any(pidlock.pid_alive(worker) for worker in workers))
    project.start()
    assert project.run("stop").returncode == 0


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s children, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                children.append(int(entry.name))
    return children


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
    assert pidlock.read_pid(path) is None
    path.write_text("garbage\n")
    assert pidlock.read_pid(path) is None
    path.write_text(f"{os.getpid()}\n")
    assert pidlock.read_pid(path) == os.getpid()
    assert pidlock.pid_alive(os.getpid())
    with subprocess.Popen([sys.executable, "-c", "pass"]) as child:
        # Exited but not yet reaped: a zombie is not alive.
        wait_for(lambda: not pidlock.pid_alive(child.pid))
    assert not pidlock.pid_alive(child.pid)


def test_pid_file_is_written_atomically_and_removed_only_by_its_owner(tmp_path: Path) -> None:
    settings = Settings(config_dir=str(tmp_path / "config"))
    assert pidlock.lock_holder(settings) is None
    with pidlock.pid_file(settings) as ready:
        ready("127.0.0.1:25")
        assert pidlock.read_pid(pidlock.pid_path(settings)) == os.getpid()
        assert pidlock.read_address(settings) == "127.0.0.1:25"
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
            "mailrouter.pid",
            "mailrouter.pid.address",
            "mailrouter.pid.lock",
        ]
        pidlock.pid_path(settings).write_text("1\n")  # someone else's, now: left alone
    assert pidlock.read_pid(pidlock.pid_path(settings)) == 1
    # Under the lock, a pid file found is stale: removed at once.
    with pidlock.pid_file(settings):
        assert not pidlock.pid_path(settings).exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["mailrouter.pid.lock"]


def test_the_lock_is_taken_once_and_dropped_on_exit(tmp_path: Path) -> None:
    settings = Settings(config_dir=str(tmp_path / "config"))
    # In this process the holder cannot be named (its own POSIX lock does not conflict with
    # it), but the flock says it is held all the same.
    taken = r"already running: .* cannot be identified"
    held = pidlock.server_lock(settings)
    with held, pytest.raises(MailRouterError, match=taken), pidlock.server_lock(settings):
        pass
    with pidlock.server_lock(settings):
        pass
    assert pidlock.lock_holder(settings) is None


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
    assert "--user NAME" in result.stderr and "--allow-root" in result.stderr  # what to type
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
            control = project.folder / "run" / "control.sock"
            assert control.stat().st_uid == pwd.getpwnam("nobody").pw_uid
            assert project.run("status").stdout.count("\n") > 1  # it answers on the socket
            assert smtp_send(port, "nobody@localhost") == {}  # queued by the unprivileged server
            stopped = project.run("stop")
            assert stopped.returncode == 0, stopped.stderr
            assert not project.pid_file.exists()
            assert project.run("queue", "count").stdout == "1\n"
        finally:
            project.kill_all()
    finally:
        shutil.rmtree(folder)
