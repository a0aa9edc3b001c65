"""Scale out: worker processes on one port, and two instances sharing one state store."""

from __future__ import annotations

import os
import signal
import smtplib
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from email.utils import make_msgid
from pathlib import Path

import pytest
from helpers import Project, run_threads, wait_for

from mailrouter.state import open_store

COUNTER = """
import os, sys
from mailrouter import route

PIDS = {pids!r}
module = sys.modules[__name__]

def numbered(n):
    def handler(message, host=None):
        with open(PIDS, "a") as out:
            out.write(f"{{os.getpid()}}\\n")
        return getattr(module, f"S{{n + 1}}")
    handler.__name__ = handler.__qualname__ = "START" if n == 0 else f"S{{n}}"
    return handler

for n in range({states}):
    setattr(module, "START" if n == 0 else f"S{{n}}", route("count@(host)")(numbered(n)))
setattr(module, f"S{states}", route("count@(host)")(numbered({states})))
"""

CONFIG = """
handlers = []
state_url = {url!r}
[defaults]
host = 'example\\.com'
"""


MakeProject = Callable[..., Project]


def counting(make_project: MakeProject, folder: str, url: str, pids: Path) -> Project:
    """A project whose handlers count each sender's messages in states (and log the pid)."""
    return make_project(
        folder, CONFIG.format(url=url), counter=COUNTER.format(pids=str(pids), states=400)
    )


def two_workers(
    make_project: MakeProject, tmp_path: Path, *options: str
) -> tuple[Project, Path, int, int]:
    """A counting project on SQLite started with two workers (and ``options``): the project,
    the file of the pids that handled mail, and the port and pid of the supervisor."""
    pids = tmp_path / "pids.txt"
    pids.touch()
    project = counting(make_project, "proj", f"sqlite:///{tmp_path}/state.db", pids)
    port, supervisor = project.start("--workers", "2", *options)
    return project, pids, port, supervisor


def send(port: int, sender: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        # a Message-ID of its own: the same bytes again would be a retry, delivered once
        message = f"Subject: count\r\nMessage-ID: {make_msgid()}\r\n\r\n+1\r\n"
        client.sendmail(sender, ["count@example.com"], message.encode())


def store_urls(tmp_path: Path) -> list[str]:
    unique = uuid.uuid4().hex[:12]
    return [
        f"sqlite:///{tmp_path}/shared.db",
        f"redis://127.0.0.1:6379/0?prefix=mailrouter-test-{unique}:",
        f"postgresql://postgres@127.0.0.1/test?table=state_{unique}",
    ]


@pytest.mark.parametrize("kind", ["sqlite", "redis", "postgresql"])
def test_two_instances_share_one_conversation_state(
    tmp_path: Path, make_project: MakeProject, kind: str
) -> None:
    url = next(u for u in store_urls(tmp_path) if u.startswith(kind))
    pids = tmp_path / "pids.txt"
    instances = [counting(make_project, f"instance{i}", url, pids) for i in range(2)]
    ports = [project.start()[0] for project in instances]
    senders = [f"sender{i}@x.org" for i in range(5)]
    sent: Counter[str] = Counter()
    guard = threading.Lock()

    def client(sender: str, port: int, count: int) -> None:
        for _ in range(count):
            send(port, sender)
            with guard:
                sent[sender] += 1

    try:
        threads = [
            threading.Thread(target=client, args=(sender, port, 30))
            for sender in senders
            for port in ports  # each sender's messages land on both instances at once
        ]
        run_threads(threads, 120)
        assert sum(sent.values()) == 300
        store = open_store(url, readonly=True)
        try:
            for sender in senders:
                assert store.get("handlers.counter", sender) == f"S{sent[sender]}"
        finally:
            store.close()
        assert len(set(pids.read_text().split())) == 2  # both instances handled mail
        for project in instances:
            assert project.run("stop").returncode == 0
    finally:
        for project in instances:  # before the store is cleared: nothing may write to it after
            project.kill_all()
        if kind != "sqlite":
            writer = open_store(url)
            writer.clear()
            writer.close()


def test_workers_share_the_port_and_a_dead_worker_is_replaced(
    tmp_path: Path, make_project: MakeProject
) -> None:
    project, pids, port, supervisor = two_workers(make_project, tmp_path)
    try:
        for i in range(40):
            send(port, f"s{i}@x.org")
        workers = set(pids.read_text().split())
        assert len(workers) == 2  # the kernel spread the connections over both
        victim = int(sorted(workers)[0])
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            try:
                send(port, "after@x.org")
            except (OSError, smtplib.SMTPException):
                return False  # a connection queued at the killed worker's socket is reset
            return len(set(pids.read_text().split()) - workers) > 0

        wait_for(replaced, timeout=30)
        assert project.run("status").returncode == 0
        assert project.run("stop").returncode == 0
        wait_for(lambda: not any(_alive(int(pid)) for pid in set(pids.read_text().split())))
        assert not _alive(supervisor)
    finally:
        project.kill_all()
        for pid in set(pids.read_text().split()):
            if _alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_refuse_a_store_that_is_not_shared(
    tmp_path: Path, make_project: MakeProject
) -> None:
    project = counting(make_project, "proj", "shelve://run/state.db", tmp_path / "pids.txt")
    result = project.run("start", "--port", "0", "--workers", "2")
    assert result.returncode != 0
    assert "safe across processes" in result.stderr and "Traceback" not in result.stderr


def test_workers_in_spool_mode_each_keep_their_own_spool(
    tmp_path: Path, make_project: MakeProject
) -> None:
    project, pids, port, _ = two_workers(make_project, tmp_path, "--mode", "spool")
    for i in range(40):
        send(port, f"s{i}@x.org")
    wait_for(lambda: len(pids.read_text().split()) == 40)  # every message routed
    assert len(set(pids.read_text().split())) == 2
    spools = sorted(p.name for p in (project.folder / "run" / "spool").iterdir())
    assert spools == ["worker-0", "worker-1"]
    assert project.run("stop").returncode == 0
