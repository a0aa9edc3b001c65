"""SMTP load benchmark: mailrouter against a bare aiosmtpd sink, side by side.

Starts each server as its own process (pinned to CPU 0 when ``taskset`` exists), drives it from
this process (pinned to CPU 1) with C concurrent connections each sending M messages of S bytes
(EHLO first, as every MTA does), alternates the targets round by round, and prints msg/s,
p50/p99 latency, server CPU per message and the ratio. Loopback only; stops by itself.

    python benchmarks/smtp_bench.py [--connections 16] [--per-connection 10] [--size 2048]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"  # the only target this tool ever connects to

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

CONFIG = """
handlers = []
log_level = "WARNING"
[defaults]
host = 'example\\.com'
"""


@dataclass
class Result:
    messages: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


PIN = bool(shutil.which("taskset"))
PROFILE: list[str] = []  # ["-m", "cProfile", "-o", FILE] to profile mailrouter


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if PIN else []


@contextmanager
def target(name: str, folder: Path, extra: list[str]) -> Iterator[tuple[int, int]]:
    """Start a server process; yield (port, pid)."""
    if name == "aiosmtpd sink":
        command = [sys.executable, "-c", SINK]
        cwd = folder
    else:
        project = folder / "project"
        (project / "config" / "handlers").mkdir(parents=True, exist_ok=True)
        (project / "config" / "mailrouter.toml").write_text(textwrap.dedent(CONFIG))
        (project / "config" / "handlers" / "bench.py").write_text(textwrap.dedent(HANDLER))
        command = [
            sys.executable,
            *PROFILE,
            "-m",
            "mailrouter",
            "start",
            "--foreground",
            "--port",
            "0",
        ]
        command += ["--allow-root"] if os.geteuid() == 0 else []
        command += extra
        cwd = project
    process = subprocess.Popen(
        pinned(0) + command, cwd=cwd, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(?:ready |127\.0\.0\.1:)(\d+)", line)
        if not match:
            raise SystemExit(f"{name} did not start: {line!r}")
        yield int(match.group(1)), process.pid
    finally:
        process.terminate()
        process.wait(30)
    queued = folder / "project" / "run" / "undeliverable" / "new"
    if name != "aiosmtpd sink" and queued.is_dir() and any(queued.iterdir()):
        raise SystemExit("mailrouter queued the benchmark's mail: its handler did not run")


async def connection(port: int, messages: int, data: bytes, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                if line[:1] not in b"23":
                    raise RuntimeError(f"unexpected reply {line!r}")
                return line

    await reply()
    writer.write(b"EHLO bench.example\r\n")
    await reply()
    for i in range(messages):
        start = time.perf_counter()
        writer.write(b"MAIL FROM:<sender%d@x.org>\r\n" % (i % 16))
        await reply()
        writer.write(b"RCPT TO:<bench@example.com>\r\n")
        await reply()
        writer.write(b"DATA\r\n")
        await reply()
        writer.write(data)
        await reply()
        latencies.append(time.perf_counter() - start)
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()
    await writer.wait_closed()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def load(port: int, pid: int, connections: int, per: int, total: int, data: bytes) -> Result:
    latencies: list[float] = []
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    for _ in range(total // (connections * per)):
        await asyncio.gather(*(connection(port, per, data, latencies) for _ in range(connections)))
    seconds = time.perf_counter() - start
    return Result(len(latencies), seconds, latencies, cpu_seconds(pid) - cpu)


def message(size: int) -> bytes:
    head = b"From: a@x.org\r\nTo: bench@example.com\r\nSubject: bench\r\n"
    head += b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    body = (b"x" * 76 + b"\r\n") * max(1, (size - len(head)) // 78)
    return head + body + b".\r\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--per-connection", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--messages", type=int, default=4800, help="per target and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="mailrouter worker processes")
    parser.add_argument("--state-url", default="", help="mailrouter's state store")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    parser.add_argument("--profile", metavar="FILE", help="run mailrouter under cProfile")
    args = parser.parse_args()
    global PIN
    PIN = PIN and not args.no_pin
    if args.profile:
        PROFILE[:] = ["-m", "cProfile", "-o", str(Path(args.profile).resolve())]
    if PIN:
        os.sched_setaffinity(0, {1})
    extra = ["--workers", str(args.workers)]
    extra += ["--state-url", args.state_url] if args.state_url else []
    data = message(args.size)
    names = ["aiosmtpd sink", "mailrouter"]
    results: dict[str, list[Result]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for name in names:
                with target(name, Path(folder), extra) as (port, pid):
                    asyncio.run(load(port, pid, 4, 5, 40, data))  # warm up
                    results[name].append(
                        asyncio.run(
                            load(
                                port,
                                pid,
                                args.connections,
                                args.per_connection,
                                args.messages,
                                data,
                            )
                        )
                    )
    print(f"{args.connections} connections x {args.per_connection} msgs, {len(data)} bytes")
    print(f"{'server':16} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/msg':>11}")
    best = {}
    for name in names:
        result = max(results[name], key=lambda r: r.rate)
        best[name] = result.rate
        lat = sorted(result.latencies)
        p50, p99 = statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99)] * 1e3
        cpu = result.cpu_seconds / result.messages * 1e6
        print(f"{name:16} {result.rate:8,.0f} {p50:8.2f} {p99:8.2f} {cpu:11.0f}")
    print(f"ratio mailrouter / sink: {best['mailrouter'] / best['aiosmtpd sink']:.2f}")


if __name__ == "__main__":
    main()
