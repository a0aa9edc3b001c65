"""SMTP load benchmark: mailrouter against a bare aiosmtpd sink (and Salmon, Haraka), side by side.

Starts each server as its own process (pinned to CPU 0 when ``taskset`` exists), drives it from
this process (pinned to CPU 1) with C connections in flight at all times, each sending M messages
of S bytes before the next takes its place (EHLO first, as every MTA does; session c sends message
i from sender (c + i) % N; ``--senders 16,1``: N = 16, then N = 1), warms each target up with
``--warmup`` messages (3,000: Haraka's JIT needs thousands) before each measured round,
alternates the targets round by round, and prints msg/s, p50/p99 latency, server CPU per message
and the ratio to the sink. Loopback only; stops by itself. The servers are in ``targets.py``.

    python benchmarks/smtp_bench.py [--connections 16] [--per-connection 10] [--size 2048]

Scenarios (``--scenario``):

- ``throughput`` (default): every target with a handler that does nothing.
- ``journal``: mailrouter with ``journal_url = ""`` and with the default journal, side by side.
  Goal: the journal costs at most 10% at 10 messages per connection.
- ``slow``: a stateful mailrouter handler that blocks 10 ms, run with ``lock_scope = "key"``,
  ``lock_scope = "global"``, ``mode = "spool"`` and spool mode with the global lock;
  accepted/s, and routed/s until the spool is drained. Goal: key / global >= 10.
- ``memory``: 32 connections each send one 10 MiB message; the server's peak RSS (VmHWM).
  Goal: peak <= 3 x the bytes in flight + 60 MiB.
- ``workers``: a handler that spends about 2.5 ms of pure-Python CPU per message (holding the
  GIL, as a spam score or a template would), stateless and stateful on ``sqlite://``, with
  ``workers = 1`` and ``workers = 2``, 4 executor threads and ``gil_switch_interval = 0.001``;
  nothing pinned, so the workers have both cores. Goal: 2 / 1 >= 1.7.
- ``startup``: ``mailrouter start`` on a copy of the repo's config/ and handlers_example/, to
  its ready line, 5 times. Goal: < 1 s.
- ``auth``: mailrouter with ``auth_policy = "off"`` and ``"annotate"``, the messages DKIM-signed
  (RSA 2048) by x.org, whose SPF, key and DMARC record a DNS server on 127.0.0.1 (in this
  process, dnslib's) serves; the cache is warm after the warm-up. The annotate target's handler
  is ``@authenticated``: a message that did not pass DMARC would be queued, and the run fails.
  Goal: annotate costs at most 30% at 10 messages per connection.
- ``console``: mailrouter with the web console off, on without copies of the messages
  (``console_messages = ""``), on and idle (it keeps each message's bytes), on with a browser's
  polling (the messages list every 2 s, the chart every 10 s), and
  on with the list fetched back to back; the poller is a process of its own on the client's CPU.

Optional competitors for ``throughput``, installed outside the repo and its venv (Haraka 3.3
needs Node.js >= 20; its plugin answers rDNS locally, so no DNS query leaves the machine):

    python3 -m venv /tmp/salmon-venv && /tmp/salmon-venv/bin/pip install salmon-mail==3.3
    mkdir -p /tmp/haraka-bench && cd /tmp/haraka-bench && npm install Haraka
    python benchmarks/smtp_bench.py --salmon /tmp/salmon-venv/bin/python --haraka /tmp/haraka-bench
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import targets
from targets import Server, Spec

HOST = "127.0.0.1"  # the only target this tool ever connects to
REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
SENDERS = 16  # distinct envelope senders; --senders
RUN = os.urandom(6).hex().encode()  # with SEQUENCE: every message of every run is new
SEQUENCE = itertools.count()


@dataclass
class Result:
    messages: int
    seconds: float  # until the last reply
    latencies: list[float]
    cpu_seconds: float
    routed_seconds: float  # until the server finished the work behind its replies

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def routed_rate(self) -> float:
        return self.messages / self.routed_seconds

    def percentile(self, fraction: float) -> float:
        """A latency percentile in milliseconds."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1e3

    @property
    def cpu_per_message(self) -> float:
        """Server CPU microseconds per message."""
        return self.cpu_seconds / self.messages * 1e6


async def connection(
    port: int, index: int, messages: int, data: bytes, latencies: list[float]
) -> None:
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
        writer.write(b"MAIL FROM:<sender%d@x.org>\r\n" % ((index + i) % SENDERS))
        await reply()
        writer.write(b"RCPT TO:<bench@example.com>\r\n")
        await reply()
        writer.write(b"DATA\r\n")
        await reply()
        # a header of its own: the same bytes from the same sender again would be a retry
        writer.write(b"X-Bench: %s.%d\r\n" % (RUN, next(SEQUENCE)) + data)
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


async def send(
    ports: list[int], connections: int, per: int, total: int, data: bytes
) -> list[float]:
    """Send ``total`` messages over ``connections`` sessions kept in flight at once (each a
    new connection after ``per`` messages, as an MTA's parallel deliveries do), spread over
    ``ports`` in turn; the latencies."""
    latencies: list[float] = []
    sessions = iter(range(total // per))

    async def slot() -> None:
        for number in sessions:
            await connection(ports[number % len(ports)], number, per, data, latencies)

    await asyncio.gather(*(slot() for _ in range(connections)))
    return latencies


def run_client(
    ports: list[int], connections: int, per: int, total: int, data: bytes
) -> list[float]:
    """``send`` on uvloop when it is installed: the load generator's CPU is the servers' loss."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(send(ports, connections, per, total, data))
    return uvloop.run(send(ports, connections, per, total, data))


def load(
    server: Server,
    connections: int,
    per: int,
    total: int,
    data: bytes,
    settle: Callable[[], None] = lambda: None,
) -> Result:
    """Drive ``server``, then wait for ``settle`` (the work still under way) to return."""
    cpu = cpu_seconds(server.pid)
    start = time.perf_counter()
    latencies = run_client([server.port], connections, per, total, data)
    seconds = time.perf_counter() - start
    settle()
    routed = time.perf_counter() - start
    server.sent += len(latencies)
    return Result(len(latencies), seconds, latencies, cpu_seconds(server.pid) - cpu, routed)


def message(size: int) -> bytes:
    head = b"From: a@x.org\r\nTo: bench@example.com\r\nSubject: bench\r\n"
    head += b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    body = (b"x" * 76 + b"\r\n") * max(1, (size - len(head)) // 78)
    return head + body + b".\r\n"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def run_rounds(
    specs: list[Spec],
    args: argparse.Namespace,
    data: bytes,
    settle: dict[str, Callable[[], None]] | None = None,
) -> dict[str, Result]:
    """Each target once per round, alternating; the best round of each."""
    runs = rounds(specs, args, data, settle)
    return {name: max(results, key=lambda r: r.rate) for name, results in runs.items()}


def rounds(
    specs: list[Spec],
    args: argparse.Namespace,
    data: bytes,
    settle: dict[str, Callable[[], None]] | None = None,
) -> dict[str, list[Result]]:
    """Each target once per round, alternating, warmed up with ``--warmup`` messages of the
    same load before it is measured; every round's result of each."""
    results: dict[str, list[Result]] = {spec.name: [] for spec in specs}
    warmup = max(args.warmup // args.per_connection, 1) * args.per_connection
    for _ in range(args.rounds):
        for spec in specs:
            done = (settle or {}).get(spec.name, lambda: None)
            with targets.running(spec) as server:
                load(server, args.connections, args.per_connection, warmup, data, done)
                result = load(
                    server, args.connections, args.per_connection, args.messages, data, done
                )
                results[spec.name].append(result)
    return results


def throughput(args: argparse.Namespace, folder: Path) -> None:
    """The sink, mailrouter and the optional competitors with do-nothing handlers, for each
    sender count of ``--senders``: the best round's figures, then mailrouter's ratio to each
    target (of the best rounds, and the lowest and highest of the rounds side by side)."""
    global SENDERS
    specs = [targets.sink(folder), targets.mailrouter(folder)]
    if args.salmon:
        specs.append(targets.salmon(folder, args.salmon))
    if args.haraka:
        specs.append(targets.haraka(folder, Path(args.haraka)))
    data = message(args.size)
    for senders in args.sender_counts:
        SENDERS = senders
        runs = rounds(specs, args, data)
        best = {name: max(results, key=lambda r: r.rate) for name, results in runs.items()}
        print(
            f"{args.connections} connections x {args.per_connection} msgs, {len(data)} bytes,"
            f" {senders} sender(s), warm-up {args.warmup} msgs, best of {args.rounds} rounds"
        )
        header = ("server", "msg/s", "p50 ms", "p99 ms", "CPU us/msg", "x sink")
        print("{:16} {:>8} {:>8} {:>8} {:>11} {:>7}".format(*header))
        sink = best["aiosmtpd sink"].rate
        for name, r in best.items():
            print(
                f"{name:16} {r.rate:8,.0f} {r.percentile(0.5):8.2f} {r.percentile(0.99):8.2f} "
                f"{r.cpu_per_message:11.0f} {r.rate / sink:7.2f}"
            )
        for name, theirs in runs.items():
            if name != "mailrouter":
                ratios = [a.rate / b.rate for a, b in zip(runs["mailrouter"], theirs, strict=True)]
                print(
                    f"mailrouter / {name}: {best['mailrouter'].rate / best[name].rate:.2f}"
                    f" (rounds {min(ratios):.2f}-{max(ratios):.2f})"
                )
        print()


def spool_drained(project: Path) -> Callable[[], None]:
    """A wait until mailrouter's spool (new/ and cur/, every worker's) is empty."""

    def wait() -> None:
        deadline = time.monotonic() + 300
        spool = project / "run" / "spool"
        while any(spool.glob("**/new/*")) or any(spool.glob("**/cur/*")):
            if time.monotonic() > deadline:
                raise SystemExit("the spool was not drained within 300 s")
            time.sleep(0.005)

    return wait


def slow(args: argparse.Namespace, folder: Path) -> None:
    """A 10 ms blocking stateful handler: per-key locks against one global lock, and spool."""
    handler = targets.SLOW_HANDLER
    specs = [
        targets.mailrouter(folder, "lock_scope=key", handler, lock_scope="key"),
        targets.mailrouter(folder, "lock_scope=global", handler, lock_scope="global"),
        targets.mailrouter(folder, "mode=spool", handler, mode="spool"),
        targets.mailrouter(
            folder, "mode=spool, global", handler, mode="spool", lock_scope="global"
        ),
    ]
    drained = {spec.name: spool_drained(spec.cwd) for spec in specs[2:]}
    best = run_rounds(specs, args, message(args.size), drained)
    print(f"handler: 10 ms blocking, stateful; 16 senders; {args.connections} connections")
    print(f"{'mailrouter':18} {'accepted/s':>10} {'routed/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, r in best.items():
        print(
            f"{name:18} {r.rate:10,.0f} {r.routed_rate:9,.0f} "
            f"{r.percentile(0.5):8.2f} {r.percentile(0.99):8.2f}"
        )
    ratio = best["lock_scope=key"].rate / best["lock_scope=global"].rate
    print(f"ratio key / global: {ratio:.1f} (goal >= 10: {verdict(ratio >= 10)})")


def workers(args: argparse.Namespace, folder: Path) -> None:
    """A CPU-bound handler on one worker process, then on two: stateless, and stateful on one
    shared SQLite file."""
    targets.OPTIONS.pin = False
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    kinds = {"stateless": targets.CPU_STATELESS, "stateful": targets.CPU_HANDLER}
    specs = [
        targets.mailrouter(
            folder,
            f"{kind} workers={count}",
            handler,
            workers=count,
            executor_threads=4,
            gil_switch_interval=0.001,
            state_url=f"sqlite:///{folder}/{kind}-{count}.db",
        )
        for kind, handler in kinds.items()
        for count in (1, 2)
    ]
    best = run_rounds(specs, args, message(args.size))
    store = args.state_url or "sqlite://"
    print(
        f"handler: ~2.5 ms of CPU; {store}; {args.connections} connections, {SENDERS} senders;"
        " gil_switch_interval = 0.001"
    )
    print(f"{'mailrouter':20} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, r in best.items():
        print(f"{name:20} {r.rate:8,.0f} {r.percentile(0.5):8.2f} {r.percentile(0.99):8.2f}")
    for kind in kinds:
        ratio = best[f"{kind} workers=2"].rate / best[f"{kind} workers=1"].rate
        print(f"{kind}: speed-up 1 -> 2 workers {ratio:.2f} (goal >= 1.7: {verdict(ratio >= 1.7)})")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = (line.split() for line in lines if line.startswith(("VmRSS:", "VmHWM:")))
    return {parts[0].rstrip(":"): int(parts[1]) for parts in fields}


def memory(args: argparse.Namespace, folder: Path) -> None:
    """32 concurrent 10 MiB messages: the server's baseline and peak RSS, against the bound."""
    connections, size = 32, 10 * MIB
    data = message(size)
    in_flight = connections * len(data) / MIB
    bound = 3 * in_flight + 60
    print(f"{connections} connections x 1 message of {len(data) / MIB:.1f} MiB")
    print(f"{'server':16} {'baseline MiB':>12} {'peak MiB':>9} {'seconds':>8}")
    for spec in (targets.sink(folder), targets.mailrouter(folder)):
        peaks, baselines, seconds = [], [], []
        for _ in range(args.rounds):
            with targets.running(spec) as server:
                baselines.append(memory_kib(server.pid)["VmRSS"] / 1024)
                seconds.append(load(server, connections, 1, connections, data).seconds)
                peaks.append(memory_kib(server.pid)["VmHWM"] / 1024)
        print(f"{spec.name:16} {min(baselines):12.0f} {max(peaks):9.0f} {min(seconds):8.2f}")
    met = verdict(max(peaks) <= bound)  # the last spec's: mailrouter's
    print(f"in flight {in_flight:.0f} MiB; mailrouter's goal: peak <= {bound:.0f} MiB ({met})")


def startup(args: argparse.Namespace, folder: Path) -> None:
    """Time from launching ``mailrouter start`` on the repo's example config to its ready line."""
    project = folder / "startup"
    junk = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "config", project / "config", ignore=junk)
    shutil.copytree(REPO / "handlers_example", project / "handlers_example", ignore=junk)
    spec = Spec("mailrouter", targets.mailrouter_command(), project)
    times = []
    for _ in range(5):
        with targets.running(spec) as server:
            times.append(server.ready_at - server.started)
    best, median = min(times), statistics.median(times)
    print(f"mailrouter start (repo config/, handlers_example): {len(times)} runs")
    print(f"min {best:.3f} s, median {median:.3f} s (goal < 1 s: {verdict(median < 1)})")


def journal(args: argparse.Namespace, folder: Path) -> None:
    """mailrouter with the journal off and on (the default SQLite file), in one run."""
    specs = [
        targets.mailrouter(folder, "journal off", journal_url=""),
        targets.mailrouter(folder, "journal on"),
    ]
    data = message(args.size)
    best = run_rounds(specs, args, data)
    print(
        f"{args.connections} connections x {args.per_connection} msgs, {len(data)} bytes,"
        f" {SENDERS} senders"
    )
    print(f"{'mailrouter':16} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/msg':>11}")
    for name, r in best.items():
        print(
            f"{name:16} {r.rate:8,.0f} {r.percentile(0.5):8.2f} {r.percentile(0.99):8.2f}"
            f" {r.cpu_per_message:11.0f}"
        )
    cost = 1 - best["journal on"].rate / best["journal off"].rate
    print(f"the journal costs {cost:.1%} (goal <= 10% at 10 msgs per connection)")


def auth(args: argparse.Namespace, folder: Path) -> None:
    """mailrouter with sender authentication off and on, against a loopback DNS server: with
    DKIM-signed messages, then with unsigned ones (DMARC passes by SPF)."""
    sys.path.insert(0, str(REPO / "tests"))
    from dnszone import Zone
    from dnszone import serving as serving_dns

    from mailrouter.outbound.signing import Signer, dns_record, generate_key

    key = generate_key("rsa", 2048)
    zone = Zone()
    zone.spf("x.org", "v=spf1 ip4:127.0.0.1 -all")
    zone.dmarc("x.org", "v=DMARC1; p=reject")
    zone.dkim_key("bench", "x.org", dns_record(key))
    plain = message(args.size)
    signed = Signer.from_pem("x.org", "bench", key).sign(plain.removesuffix(b".\r\n")) + b".\r\n"
    print(f"{args.connections} connections x {args.per_connection} msgs, {SENDERS} senders")
    print(f"{'mailrouter':32} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/msg':>11}")
    with serving_dns(zone):
        specs = [
            targets.mailrouter(folder, "auth off"),
            targets.mailrouter(
                folder,
                "auth annotate",
                handler=targets.AUTHENTICATED_HANDLER,
                auth_policy="annotate",
                dns_nameservers=[zone.address],
            ),
        ]
        for kind, data in (("DKIM-signed (RSA)", signed), ("unsigned", plain)):
            best = run_rounds(specs, args, data)
            for name, r in best.items():
                print(
                    f"{name + ', ' + kind:32} {r.rate:8,.0f} {r.percentile(0.5):8.2f}"
                    f" {r.percentile(0.99):8.2f} {r.cpu_per_message:11.0f}"
                )
            cost = 1 - best["auth annotate"].rate / best["auth off"].rate
            print(f"annotate costs {cost:.1%} with {kind} mail (goal <= 30% at 10 per connection)")
    print(f"{len(zone.questions)} DNS questions in all: the cache answered the rest")


CONSOLE_TOKEN = "bench-console-token"
# A browser's polling, as a process: log in, then fetch the list every INTERVAL s (0: back to
# back) and the chart every 10 s; stops after 15 minutes whatever happens.
POLLER = """
import re, sys, time
import httpx
url, interval = sys.argv[1], float(sys.argv[2])
with httpx.Client(base_url=url, timeout=30) as client:
    csrf = re.search('name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    data = {"csrf": csrf, "token": sys.argv[3], "next": "/messages"}
    client.post("/login", data=data, headers={"origin": url})
    end, chart = time.monotonic() + 900, 0.0
    while time.monotonic() < end:
        client.get("/messages/rows").raise_for_status()
        if time.monotonic() - chart >= 10:
            client.get("/activity/chart").raise_for_status()
            chart = time.monotonic()
        time.sleep(interval)
"""


def console(args: argparse.Namespace, folder: Path) -> None:
    """mailrouter with the console off, on and idle, on and polled, on and polled hard."""
    ports = {name: free_port() for name in ("bare", "idle", "polled", "hammered")}
    on = {"console_token": CONSOLE_TOKEN}
    specs = [
        (targets.mailrouter(folder, "console off"), None),
        (
            targets.mailrouter(
                folder, "console no copies", console_port=ports["bare"], console_messages="", **on
            ),
            None,
        ),
        (targets.mailrouter(folder, "console idle", console_port=ports["idle"], **on), None),
        (targets.mailrouter(folder, "console polled", console_port=ports["polled"], **on), 2.0),
        (targets.mailrouter(folder, "console hammered", console_port=ports["hammered"], **on), 0.0),
    ]
    data = message(args.size)
    runs: dict[str, list[Result]] = {spec.name: [] for spec, _ in specs}
    for _ in range(args.rounds):
        for (spec, interval), port in zip(specs, [0, *ports.values()], strict=True):
            with targets.running(spec) as server:
                load(server, args.connections, args.per_connection, args.warmup, data)
                poller = None
                if interval is not None:
                    url, wait = f"http://{HOST}:{port}", str(interval)
                    command = [sys.executable, "-c", POLLER, url, wait, CONSOLE_TOKEN]
                    poller = subprocess.Popen(targets.pinned(1) + command)
                try:
                    result = load(
                        server, args.connections, args.per_connection, args.messages, data
                    )
                finally:
                    if poller is not None:
                        poller.terminate()
                        poller.wait(30)
                runs[spec.name].append(result)
    print(
        f"{args.connections} connections x {args.per_connection} msgs, {len(data)} bytes,"
        f" {args.rounds} rounds (each: msg/s and server CPU us/msg)"
    )
    for name, results in runs.items():
        rates = [r.rate for r in results]
        cells = ", ".join(f"{r.rate:,.0f} ({r.cpu_per_message:.0f})" for r in results)
        print(f"{name:16} median {statistics.median(rates):7,.0f} msg/s  rounds: {cells}")


def free_port() -> int:
    """A TCP port free now on the loopback address."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


SCENARIOS = {
    "auth": auth,
    "console": console,
    "throughput": throughput,
    "journal": journal,
    "slow": slow,
    "workers": workers,
    "memory": memory,
    "startup": startup,
}
DEFAULT_MESSAGES = {
    "auth": 4800,
    "console": 4800,
    "throughput": 4800,
    "journal": 4800,
    "slow": 800,
    "workers": 2400,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=SCENARIOS, default="throughput")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--per-connection", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument(
        "--senders",
        default="16,1",
        help="distinct envelope senders: throughput runs each count of a list, others the first",
    )
    parser.add_argument(
        "--warmup", type=int, default=3000, help="messages each target gets before it is measured"
    )
    parser.add_argument(
        "--messages", type=int, help="per target and round (4800; slow: 800; workers: 2400)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, help="mailrouter worker processes (1)")
    parser.add_argument("--state-url", default="", help="mailrouter's state store")
    parser.add_argument("--journal-url", help="mailrouter's journal ('' turns it off)")
    parser.add_argument("--salmon", metavar="PYTHON", help="a python with salmon-mail installed")
    parser.add_argument("--haraka", metavar="DIR", help="a folder with node_modules/Haraka")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    parser.add_argument("--profile", metavar="FILE", help="run mailrouter under cProfile")
    args = parser.parse_args()
    if args.messages is None:
        args.messages = DEFAULT_MESSAGES.get(args.scenario, 0)
    try:
        args.sender_counts = [int(count) for count in args.senders.split(",")]
    except ValueError:
        parser.error(f"--senders: not a number or a list of numbers: {args.senders!r}")
    if min(args.sender_counts) < 1:
        parser.error("--senders: at least 1")
    return args


def main() -> None:
    global SENDERS
    args = parse_args()
    SENDERS = args.sender_counts[0]
    options = targets.OPTIONS
    options.pin = options.pin and not args.no_pin
    if args.profile:
        options.profile = ["-m", "cProfile", "-o", str(Path(args.profile).resolve())]
    options.extra = ["--workers", str(args.workers)] if args.workers else []
    options.extra += ["--state-url", args.state_url] if args.state_url else []
    options.extra += ["--journal-url", args.journal_url] if args.journal_url is not None else []
    if options.pin:
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as folder:
        SCENARIOS[args.scenario](args, Path(folder))


if __name__ == "__main__":
    main()
