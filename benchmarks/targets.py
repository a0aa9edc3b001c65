"""The servers that ``smtp_bench.py`` drives: each one a process started and stopped here.

A target prints a ready line with its port, is pinned to CPU 0 (when ``taskset`` exists), and is
checked when it stops: mailrouter must have queued nothing as undeliverable, Salmon and Haraka
must report (on SIGTERM) that their handler ran once for every message sent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SINK = """
import asyncio, sys
from aiosmtpd.smtp import SMTP

class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Sink(), hostname="sink"), "127.0.0.1", 0)
    print("ready", server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

HANDLER = """
from mailrouter import route

@route("bench@(host)")
def START(message, host=None):
    return None
"""

# The same, for DMARC-aligned senders only: anyone else's mail would be queued.
AUTHENTICATED_HANDLER = """
from mailrouter import authenticated, route

@route("bench@(host)")
@authenticated
def START(message, host=None):
    return None
"""

SLOW_HANDLER = """
import time
from mailrouter import route

@route("bench@(host)")
def START(message, host=None):
    time.sleep(0.01)  # 10 ms of blocking I/O
    return START
"""

# About 2.5 ms of pure-Python work per message on this machine: it holds the GIL, so one process
# runs it on one core however many executor threads it has.
CPU_HANDLER = """
from mailrouter import route, route_like

@route("bench@(host)")
def START(message, host=None):
    sum(i * i for i in range(40_000))
    return NEXT

@route_like(START)
def NEXT(message, host=None):
    sum(i * i for i in range(40_000))
    return START
"""

# The same work in a stateless handler: no state store on the path.
CPU_STATELESS = """
from mailrouter import route, stateless

@route("bench@(host)")
@stateless
def COUNT(message, host=None):
    sum(i * i for i in range(40_000))
"""

CONFIG = """
handlers = []
log_level = "WARNING"
{settings}
[defaults]
host = 'example\\.com'
"""

SALMON_HANDLER = """
from salmon.routing import route, stateless

handled = [0]

@route("bench@(host)")
@stateless
def START(message, host=None):
    handled[0] += 1
"""

# The captures' defaults must be set before the handler module is imported (routes compile then).
SALMON_BOOT = """
import importlib, logging, os, signal, sys
sys.path.insert(0, os.getcwd())
logging.basicConfig(level=logging.ERROR)
from salmon._vendor import asyncore
from salmon.routing import Router
from salmon.server import SMTPReceiver

Router.defaults(host=r"example\\.com")
Router.load(["salmon_bench"])
Router.RELOAD = False
handler = importlib.import_module("salmon_bench")

def stop(signum, frame):
    print("handled", handler.handled[0], flush=True)
    os._exit(0)

signal.signal(signal.SIGTERM, stop)
receiver = SMTPReceiver("127.0.0.1", 0)
receiver.socket.listen(128)  # Salmon listens with a backlog of 5: 16 connections overflow it
print("ready", receiver.socket.getsockname()[1], flush=True)
asyncore.loop(timeout=0.1, use_poll=True)
"""

# rDNS is answered locally: Haraka would otherwise ask the nameserver for every connection.
HARAKA_PLUGIN = """
'use strict'
const fs = require('node:fs')
let handled = 0

exports.hook_init_master = function (next, server) {
    fs.writeSync(1, `ready ${server.listeners[0].address().port}\\n`)
    process.on('SIGTERM', () => {
        fs.writeSync(1, `handled ${handled}\\n`)
        process.exit(0)
    })
    next()
}
exports.hook_lookup_rdns = function (next) {
    next(OK, 'localhost')
}
exports.hook_rcpt = function (next, connection, params) {
    next(params[0].address.toLowerCase() === 'bench@example.com' ? OK : DENY)
}
exports.hook_queue = function (next) {
    handled += 1
    next(OK)
}
"""

HARAKA_CONFIG = {
    "smtp.ini": "listen=127.0.0.1:0\nnodes=0\n",
    "log.ini": "[main]\nlevel=error\n",
    "plugins": "bench\n",
    "me": "bench.example\n",
}


@dataclass
class Options:
    """How target processes are started (set from the command line)."""

    pin: bool = bool(shutil.which("taskset"))
    profile: list[str] = field(default_factory=list)  # ["-m", "cProfile", "-o", FILE]
    extra: list[str] = field(default_factory=list)  # more `mailrouter start` options


OPTIONS = Options()


def pinned(cpu: int) -> list[str]:
    """The command prefix that pins a process to ``cpu``."""
    return ["taskset", "-c", str(cpu)] if OPTIONS.pin else []


@dataclass
class Spec:
    """A target: its command, folder, and the check run on its output once it stopped."""

    name: str
    command: list[str]
    cwd: Path
    check: Callable[[Server], None] = lambda server: None
    ready: str = r"(?:ready |127\.0\.0\.1:)(\d+)"


class Server:
    """A running target: its port, pid and stdout lines, and how many messages it was sent."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.lines: list[str] = []
        self.sent = 0
        self.port = 0
        self.started = time.perf_counter()
        self.ready_at = 0.0
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            pinned(0) + spec.command,
            cwd=spec.cwd,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.pid = self.process.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        pattern = re.compile(self.spec.ready)
        for line in self.process.stdout:
            self.lines.append(line)
            match = None if self.port else pattern.search(line)
            if match:
                self.port, self.ready_at = int(match.group(1)), time.perf_counter()
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait for the ready line; exit with the target's output if it does not come."""
        if not self._ready.wait(timeout) or not self.port:
            self.stop()
            raise SystemExit(f"{self.spec.name} did not start:\n{''.join(self.lines[-20:])}")

    def stop(self) -> None:
        """Terminate the process and collect the rest of its output."""
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(30)
        self._reader.join(10)


@contextmanager
def running(spec: Spec) -> Iterator[Server]:
    """Start ``spec``'s process, yield it once ready, stop it, then run the spec's check."""
    server = Server(spec)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
    spec.check(server)


def sink(folder: Path) -> Spec:
    """The bare aiosmtpd server: the baseline every other target is compared with."""
    return Spec("aiosmtpd sink", [sys.executable, "-c", SINK], folder)


def mailrouter(
    folder: Path, name: str = "mailrouter", handler: str = HANDLER, **settings: object
) -> Spec:
    """A mailrouter project in ``folder/name`` with one handler module and extra settings;
    sender authentication is off unless they say otherwise (no DNS beyond the loopback)."""
    settings.setdefault("auth_policy", "off")
    project = folder / re.sub(r"\W+", "-", name)
    (project / "config" / "handlers").mkdir(parents=True, exist_ok=True)
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in settings.items())
    config = textwrap.dedent(CONFIG).format(settings=lines)
    (project / "config" / "mailrouter.toml").write_text(config)
    (project / "config" / "handlers" / "bench.py").write_text(textwrap.dedent(handler))
    return Spec(name, mailrouter_command(), project, check=no_undeliverable)


def mailrouter_command() -> list[str]:
    """``mailrouter start`` in the foreground on a free port, with the command line's options."""
    command = [sys.executable, *OPTIONS.profile, "-m", "mailrouter", "start", "--foreground"]
    command += ["--port", "0", *OPTIONS.extra]
    return command + (["--allow-root"] if os.geteuid() == 0 else [])


def no_undeliverable(server: Server) -> None:
    """mailrouter's check: a queued message means its handler did not run."""
    queued = server.spec.cwd / "run" / "undeliverable" / "new"
    if queued.is_dir() and any(queued.iterdir()):
        first = next(queued.iterdir()).read_bytes().split(b"\r\n\r\n")[0].decode(errors="replace")
        raise SystemExit(
            f"{server.spec.name} queued the benchmark's mail: its handler did not run\n{first}"
        )


def salmon(folder: Path, python: str) -> Spec:
    """Salmon's SMTPReceiver with a do-nothing handler, run by another virtualenv's python."""
    project = folder / "salmon"
    project.mkdir(exist_ok=True)
    (project / "salmon_bench.py").write_text(textwrap.dedent(SALMON_HANDLER))
    return Spec("salmon", [python, "-c", SALMON_BOOT], project, check=all_handled)


def haraka(folder: Path, install: Path) -> Spec:
    """One Haraka process with an accept-and-discard plugin; ``install`` holds node_modules."""
    package = install / "node_modules" / "Haraka"
    node = shutil.which("node")
    if node is None or not package.is_dir():
        raise SystemExit(f"haraka needs node and {package}")
    project = folder / "haraka"
    (project / "config").mkdir(parents=True, exist_ok=True)
    (project / "plugins").mkdir(exist_ok=True)
    shutil.copy(package / "config" / "connection.ini", project / "config")
    for name, text in HARAKA_CONFIG.items():
        (project / "config" / name).write_text(text)
    (project / "plugins" / "bench.js").write_text(textwrap.dedent(HARAKA_PLUGIN))
    command = [node, str(package / "bin" / "haraka"), "-c", str(project)]
    return Spec("haraka", command, project, check=all_handled)


def all_handled(server: Server) -> None:
    """Salmon's and Haraka's check: the handler ran once for every message sent."""
    counts = [line.split()[1] for line in server.lines if line.startswith("handled ")]
    handled = int(counts[-1]) if counts else -1
    if handled != server.sent:
        raise SystemExit(f"{server.spec.name} handled {handled} of {server.sent} messages")
