"""Tests for the shared state stores (sqlite, redis, postgres) against real local servers.

The contract suite in test_state.py runs against them too, through ``temp_store``. Redis and
PostgreSQL are expected on 127.0.0.1 (override with TEST_REDIS_URL / TEST_POSTGRES_URL); when one
is missing its tests skip, or fail under ``CI=true``. Every test works on its own key prefix or
table and removes it afterwards, and touches only its own connections.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import select
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from email.utils import make_msgid
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import psycopg
import pytest
import redis
from helpers import mail, run_threads, running, until, wait_for
from services import SERVERS, Proxy, require, unique

from mailrouter.errors import StoreError
from mailrouter.state import (
    ERROR,
    START,
    ErrorReason,
    MemoryStorage,
    ShelveStorage,
    StateStorage,
    list_states,
    listable,
    open_store,
    read_reason,
    record_error,
)
from mailrouter.state.postgres import PostgresStorage
from mailrouter.state.redis import RedisStorage
from mailrouter.state.sqlite import SqliteStorage

WAIT = 10.0
KINDS = ["sqlite", "redis", "postgres"]
SERVER_KINDS = ["redis", "postgres"]


# -- the servers --------------------------------------------------------------------------------


def drop(kind: str, name: str) -> None:
    """Remove the throwaway Redis keys ``name:*`` or PostgreSQL table ``name``."""
    if kind == "redis":
        with closing(redis.Redis.from_url(SERVERS[kind])) as client:
            for key in client.scan_iter(match=f"{name}:*"):
                client.delete(key)
    elif kind == "postgres":
        with psycopg.connect(SERVERS[kind], autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{name}"')


class TempRedis(RedisStorage):
    """A Redis store whose keys are removed when it is closed."""

    def close(self) -> None:
        super().close()
        drop("redis", self.prefix.removesuffix(":"))


class TempPostgres(PostgresStorage):
    """A PostgreSQL store whose table is dropped when it is closed."""

    def close(self) -> None:
        super().close()
        drop("postgres", self.table)


def temp_store(kind: str, tmp: Path) -> StateStorage:
    """A shared store of ``kind`` on a throwaway file, key prefix or table (for the contract)."""
    require(kind)
    if kind == "sqlite":
        return SqliteStorage(tmp / "shared.db")
    if kind == "redis":
        return TempRedis.from_url(f"{SERVERS[kind]}?prefix={unique()}:")
    return TempPostgres.from_url(f"{SERVERS[kind]}?table={unique()}")


class Shared:
    """One throwaway shared store location; ``url()`` names it, with extra options."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.name = unique()
        self.path = tmp / "shared.db"

    def url(self, server: str | None = None, **options: object) -> str:
        if self.kind == "sqlite":
            return f"sqlite://{self.path}?{urlencode(options)}"
        base = SERVERS[self.kind]
        if server is not None:
            parts = urlsplit(base)
            user = parts.netloc.rpartition("@")[0]
            base = parts._replace(netloc=f"{user}@{server}" if user else server).geturl()
        ours = {"prefix": f"{self.name}:"} if self.kind == "redis" else {"table": self.name}
        return f"{base}?{urlencode({**ours, **options})}"

    def open(self, **options: object) -> StateStorage:
        return open_store(self.url(**options))

    def lease(self, seconds: float) -> dict[str, object]:
        """The option for a lock lease of ``seconds`` (redis only: sqlite's and postgres's
        locks die with their process or connection)."""
        return {"lock_timeout": seconds} if self.kind == "redis" else {}


def location(kind: str, tmp: Path) -> Iterator[Shared]:
    require(kind)
    shared = Shared(kind, tmp)
    yield shared
    drop(kind, shared.name)


# Every store a contract suite runs against; the shared ones on a throwaway file, prefix or
# table (their servers missing: skipped, or failed under CI=true).
STORES: dict[str, Callable[[Path], StateStorage]] = {
    "memory": lambda tmp: MemoryStorage(),
    "shelve": lambda tmp: ShelveStorage(tmp / "state.db"),
    "sqlite": lambda tmp: temp_store("sqlite", tmp),
    "redis": lambda tmp: temp_store("redis", tmp),
    "postgres": lambda tmp: temp_store("postgres", tmp),
}


@pytest.fixture(params=sorted(STORES), name="store")
def every_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStorage]:
    """Each of ``STORES``, opened on ``tmp_path``, closed after."""
    opened = STORES[request.param](tmp_path)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(params=KINDS)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shared]:
    yield from location(request.param, tmp_path)


@pytest.fixture(params=SERVER_KINDS)
def server_shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shared]:
    yield from location(request.param, tmp_path)


@pytest.fixture
def redis_shared(tmp_path: Path) -> Iterator[Shared]:
    yield from location("redis", tmp_path)


@pytest.fixture
def postgres_shared(tmp_path: Path) -> Iterator[Shared]:
    yield from location("postgres", tmp_path)


# -- child processes ----------------------------------------------------------------------------

COUNTER = """
import sys, time
from mailrouter.state import START, open_store
store = open_store(sys.argv[1])
try:
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(int(sys.argv[2])):
        with store.lock("k", "joe@x.org"):
            state = store.get("k", "joe@x.org")
            current = 0 if state == START else int(state.removeprefix("N"))
            time.sleep(0.0002)  # invites a lost update if the lock does not hold
            store.set("k", "joe@x.org", f"N{current + 1}")
finally:
    store.close()
"""

HOLDER = """
import sys, time
from mailrouter.state import open_store
store = open_store(sys.argv[1])
guard = store.lock("k", "joe@x.org")  # kept: a collected generator would release it
guard.__enter__()
print("locked", flush=True)
time.sleep(600)
"""

MARKER = """
import os, sys, time
from mailrouter.state import open_store
store = open_store(sys.argv[1])
log = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
try:
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(int(sys.argv[3])):
        with store.lock("k", "joe@x.org"):
            os.write(log, f"enter {os.getpid()}\\n".encode())
            time.sleep(0.0005)  # another holder would write here
            os.write(log, f"exit {os.getpid()}\\n".encode())
finally:
    store.close()
"""

TRY = """
import sys
from mailrouter.errors import StoreError
from mailrouter.state import open_store
store = open_store(sys.argv[1])
try:
    with store.lock(sys.argv[2], sys.argv[3]):
        print("locked")
except StoreError as exc:
    print(exc)
finally:
    store.close()
"""


OPEN_AT = """
import sys, time
from mailrouter.state import open_store
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
open_store(sys.argv[1]).close()
"""


def spawn(script: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-W", "error", "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
    )


def wait_line(child: subprocess.Popen[bytes], expected: bytes) -> None:
    """Wait until ``child`` prints the line ``expected`` (and nothing else before it)."""
    assert child.stdout is not None
    got, deadline = b"", time.monotonic() + 60
    while not got.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {expected!r} line from the child"
        if select.select([child.stdout], [], [], remaining)[0]:
            chunk = os.read(child.stdout.fileno(), 1)
            assert chunk, f"the child exited (code {child.wait(WAIT)}) before {expected!r}"
            got += chunk
    assert got == expected + b"\n"


def run_together(procs: list[subprocess.Popen[bytes]]) -> None:
    """Let ``procs`` (each printing "ready", then reading a line) go at once; all must succeed."""
    try:
        for child in procs:
            wait_line(child, b"ready")
        for child in procs:  # all start together, so they contend
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.close()
        for child in procs:
            assert child.wait(60) == 0
    finally:
        for child in procs:
            reap(child)


def reap(child: subprocess.Popen[bytes]) -> None:
    """Kill ``child`` if it still runs, wait for it, and close its pipes."""
    if child.poll() is None:
        child.kill()
        child.wait(WAIT)
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            pipe.close()


def try_lock(url: str, key: str = "k", sender: str = "joe@x.org") -> str:
    """What another process gets when it takes the lock of (key, sender): "locked" or the error."""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", TRY, url, key, sender],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_cross_process_increments_are_exact(shared: Shared) -> None:
    children, rounds = 3, 60
    url = shared.url()
    run_together([spawn(COUNTER, url, str(rounds)) for _ in range(children)])
    with closing(open_store(url)) as store:
        assert store.get("k", "joe@x.org") == f"N{children * rounds}"


def test_lock_of_killed_process_is_freed(shared: Shared) -> None:
    child = spawn(HOLDER, shared.url(**shared.lease(1)))
    try:
        wait_line(child, b"locked")
        with (
            closing(shared.open(lock_wait=0.2)) as impatient,
            pytest.raises(StoreError, match=r"gave up after 0\.2 s"),
            impatient.lock("k", "joe@x.org"),
        ):
            pass
        child.send_signal(signal.SIGKILL)
        assert child.wait(WAIT) == -signal.SIGKILL
        started = time.monotonic()
        with closing(shared.open(lock_wait=WAIT)) as other:
            with other.lock("k", "joe@x.org"):
                other.set("k", "joe@x.org", "TAKEN")
            assert other.get("k", "joe@x.org") == "TAKEN"
        assert time.monotonic() - started < 5
    finally:
        reap(child)


# -- locks in one process -----------------------------------------------------------------------


def test_held_lock_outlives_its_lease(shared: Shared) -> None:
    """A lease is renewed while held: a handler may run longer than lock_timeout."""
    with (
        closing(shared.open(**shared.lease(0.2))) as holder,
        closing(shared.open(lock_wait=0.05)) as other,
    ):
        with holder.lock("k", "s@x.org"):
            until = time.monotonic() + 0.8
            while time.monotonic() < until:
                with pytest.raises(StoreError, match="gave up"):
                    other.lock("k", "s@x.org").__enter__()
        with other.lock("k", "s@x.org"):
            pass


def test_two_stores_many_threads_many_senders(shared: Shared) -> None:
    """Threads of two stores (as two processes) on several senders: every count is exact."""
    stores = [shared.open(), shared.open()]
    senders, rounds = [f"s{i}@x.org" for i in range(4)], 25
    errors: list[BaseException] = []

    def work(store: StateStorage, sender: str) -> None:
        try:
            for _ in range(rounds):
                with store.lock("k", sender):
                    state = store.get("k", sender)
                    current = 0 if state == START else int(state.removeprefix("N"))
                    store.set("k", sender, f"N{current + 1}")
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(store, sender))
        for store in stores
        for sender in senders
        for _ in range(2)
    ]
    try:
        run_threads(threads, 60)
        assert not errors
        assert [stores[1].get("k", sender) for sender in senders] == [f"N{4 * rounds}"] * 4
    finally:
        for store in stores:
            store.close()


def test_lock_is_per_pair_across_stores(shared: Shared) -> None:
    with (
        closing(shared.open()) as first,
        closing(shared.open(lock_wait=0.1)) as second,
        first.lock("k", "a@x.org"),
        second.lock("k", "b@x.org"),
        second.lock("k2", "a@x.org"),
    ):
        pass


def test_close_interrupts_a_lock_wait(shared: Shared) -> None:
    with closing(shared.open()) as holder:
        waiter = shared.open(lock_wait=WAIT)
        errors: list[BaseException] = []

        def wait_for_lock() -> None:
            try:
                with waiter.lock("k", "s@x.org"):
                    pass
            except BaseException as exc:
                errors.append(exc)

        with holder.lock("k", "s@x.org"):
            thread = threading.Thread(target=wait_for_lock)
            thread.start()
            time.sleep(0.2)  # no store tells when it waits: time to start (closing first is fine)
            started = time.monotonic()
            waiter.close()
            thread.join(WAIT)
        assert not thread.is_alive()
        assert time.monotonic() - started < 3
        assert len(errors) == 1 and isinstance(errors[0], StoreError), errors


def test_closed_store_refuses_everything(shared: Shared) -> None:
    store = shared.open()
    store.close()
    store.close()
    for call in (
        lambda: store.get("k", "s"),
        lambda: store.set("k", "s", "X"),
        store.clear,
        lambda: store.lock("k", "s").__enter__(),
        lambda: listable(store).items(),
    ):
        with pytest.raises(StoreError, match="closed"):
            call()


def test_clear_keeps_other_stores(shared: Shared, tmp_path: Path) -> None:
    other = Shared(shared.kind, tmp_path / "other")
    try:
        with closing(shared.open()) as mine, closing(other.open()) as theirs:
            mine.set("k", "s", "MINE")
            theirs.set("k", "s", "THEIRS")
            mine.clear()
            assert mine.get("k", "s") == START
            assert theirs.get("k", "s") == "THEIRS"
    finally:
        drop(other.kind, other.name)


def test_states_persist_across_reopen(shared: Shared) -> None:
    with closing(shared.open()) as first:
        first.set("k", "jöe@x.org", "POSTING")
        first.set("k", "bad\udcffbyte@x.org", "\x1bESC\x00NUL")
    with closing(shared.open()) as second:
        assert second.get("k", "jöe@x.org") == "POSTING"
        assert second.get("k", "bad\udcffbyte@x.org") == "\x1bESC\x00NUL"


# -- read-only ----------------------------------------------------------------------------------


def test_readonly_reads_and_refuses_writes(shared: Shared) -> None:
    with closing(shared.open()) as writer:
        writer.set("k", "s", "ONE")
        with closing(open_store(shared.url(), readonly=True)) as reader:
            assert reader.get("k", "s") == "ONE"
            writer.set("k", "s", "TWO")
            assert reader.get("k", "s") == "TWO"
            assert list(listable(reader).items()) == [("k", "s", "TWO")]
            for call in (
                lambda: reader.set("k", "s", "X"),
                reader.clear,
                lambda: reader.lock("k", "s").__enter__(),
            ):
                with pytest.raises(StoreError, match="read-only"):
                    call()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_readonly_creates_nothing(kind: str, tmp_path: Path) -> None:
    require(kind)
    location = Shared(kind, tmp_path / "none")
    with closing(open_store(location.url(), readonly=True)) as reader:
        assert reader.get("k", "s") == START
        assert list(listable(reader).items()) == []
        assert not location.path.parent.exists()
        if kind == "sqlite":  # a writer that comes later is seen
            with closing(open_store(location.url())) as writer:
                writer.set("k", "s", "LATER")
            assert reader.get("k", "s") == "LATER"
            assert list(listable(reader).items()) == [("k", "s", "LATER")]
    if kind == "postgres":
        with psycopg.connect(SERVERS[kind]) as conn:
            found = conn.execute("SELECT to_regclass(%s)", (location.name,)).fetchone()
        assert found == (None,)


# -- connection loss ----------------------------------------------------------------------------


def kill_connections(kind: str, name: str) -> int:
    """Make the server drop every connection named ``name`` (only ours: others share it)."""
    if kind == "redis":
        with closing(redis.Redis.from_url(SERVERS[kind])) as admin:
            ids = [client["id"] for client in admin.client_list() if client["name"] == name]
            for ident in ids:
                admin.client_kill_filter(_id=ident)
        return len(ids)
    with psycopg.connect(SERVERS[kind], autocommit=True) as admin:
        pids = [
            pid
            for (pid,) in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
            )
        ]
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
        alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)"
        wait_for(lambda: admin.execute(alive, (pids,)).fetchone() == (0,), WAIT, interval=0.01)
    return len(pids)


def test_reconnects_after_server_drops_connections(server_shared: Shared) -> None:
    kind, name = server_shared.kind, server_shared.name
    naming = {"client_name": name} if kind == "redis" else {"application_name": name}
    with closing(server_shared.open(**naming)) as store:
        store.set("k", "s", "BEFORE")
        with store.lock("k", "s"):
            assert kill_connections(kind, name) >= 1  # with postgres, the lock's one too
        assert store.get("k", "s") == "BEFORE"  # a dead connection is replaced transparently
        assert kill_connections(kind, name) >= 1
        store.set("k", "s", "AFTER")
        assert kill_connections(kind, name) >= 1
        with store.lock("k", "s"):
            assert store.get("k", "s") == "AFTER"


@pytest.fixture
def proxy(server_shared: Shared) -> Iterator[Proxy]:
    """A forwarder to the store's server that the test can stop and start again."""
    proxy = Proxy(SERVERS[server_shared.kind])
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def through(shared: Shared, proxy: Proxy) -> str:
    """The store's URL through ``proxy``, with timeouts short enough for a test."""
    short = (
        {"socket_timeout": 2, "socket_connect_timeout": 2}
        if shared.kind == "redis"
        else {"timeout": 0.5, "lock_wait": 0.5}
    )
    return shared.url(proxy.address, **short)


def test_server_down_is_a_store_error_then_recovers(server_shared: Shared, proxy: Proxy) -> None:
    with closing(open_store(through(server_shared, proxy))) as store:
        store.set("k", "s", "KEPT")
        proxy.stop()
        for call in (
            lambda: store.get("k", "s"),
            lambda: store.set("k", "s", "X"),
            lambda: store.lock("k", "s").__enter__(),
        ):
            with pytest.raises(StoreError):
                call()
        proxy.start()
        started = time.monotonic()

        def kept() -> bool:
            try:
                with store.lock("k", "s"):
                    assert store.get("k", "s") == "KEPT"
            except StoreError:
                return False  # the first calls may still fail while it reconnects
            return True

        wait_for(kept, 30, interval=0.1, message="the store did not reconnect")
        reconnected = time.monotonic() - started
        store.set("k", "s", "BACK")
        with store.lock("k", "s"):
            assert store.get("k", "s") == "BACK"
    assert reconnected < 10


COUNTING = """
from mailrouter import route, route_like

@route("count@(host)")
def START(message, host=None):
    return NEXT

@route_like(START)
def NEXT(message, host=None):
    return START
"""


def _smtp_reply(port: int) -> tuple[int, bytes]:
    """Send one message to ``count@example.com``; the reply to its DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
        client.ehlo()
        client.mail("joe@x.org")
        client.rcpt("count@example.com")
        # a new message each time: the same bytes again would be a retry, delivered once
        return client.data(f"Subject: count\r\nMessage-ID: {make_msgid()}\r\n\r\nx\r\n".encode())


async def test_smtp_answers_451_while_the_store_is_down_then_250(
    server_shared: Shared, proxy: Proxy, tmp_path: Path, make_module: Callable[..., str]
) -> None:
    """Over SMTP: the store's server goes away, the MTA is told to retry; it comes back, mail
    is accepted again on the same running server, with the state kept."""
    app = make_module(COUNTING)
    async with running(tmp_path, app, state_url=through(server_shared, proxy)) as server:
        assert (await asyncio.to_thread(_smtp_reply, server.port))[0] == 250
        with closing(server_shared.open()) as store:
            assert store.get(app, "joe@x.org") == "NEXT"
        proxy.stop()
        code, text = await asyncio.to_thread(_smtp_reply, server.port)
        assert (code, text[:6]) == (451, b"4.3.0 ")
        proxy.start()

        async def accepted() -> bool:
            reply = await asyncio.to_thread(_smtp_reply, server.port)
            assert reply[0] in (250, 451), reply  # deferred until the server reconnects
            return reply[0] == 250

        await until(accepted, 30, interval=0.1, message="the server did not reconnect to the store")
        assert not list((tmp_path / "run" / "undeliverable" / "new").glob("*"))
    with closing(server_shared.open()) as store:
        # two messages accepted, two transitions (START -> NEXT -> START); a 451 moved nothing
        assert store.get(app, "joe@x.org") == START


def test_unreachable_server_fails_open(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    for url in (
        f"redis://127.0.0.1:{port}/0?socket_connect_timeout=1",
        f"postgresql://postgres@127.0.0.1:{port}/test?timeout=1",
    ):
        with pytest.raises(StoreError, match=f"127.0.0.1:{port}"):
            open_store(url)


# -- store specifics ----------------------------------------------------------------------------


def posix_locks(path: Path) -> list[tuple[str, int, str, str]]:
    """The POSIX record locks on ``path`` (Linux's /proc/locks): (type, pid, start, end)."""
    info = path.stat()
    ident = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    lines = Path("/proc/locks").read_text().splitlines()
    return [
        (fields[3], int(fields[4]), fields[6], fields[7])
        for fields in map(str.split, lines)
        if fields[1] == "POSIX" and fields[5] == ident
    ]


def test_sqlite_file_layout(tmp_path: Path) -> None:
    """One table; a held lock is a write lock on the byte of ``<db>.lock`` hashed from the pair."""
    path = tmp_path / "deep" / "state.db"
    with closing(open_store(f"sqlite://{path}")) as store:
        store.set("k", "jöe@x.org", "POSTING")
        store.set("k", "bad\udcffbyte", "S")
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            tables = conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
            assert tables.fetchall() == [("mailrouter_state",)]
            rows = conn.execute("SELECT key, sender, state FROM mailrouter_state").fetchall()
            assert sorted(rows, reverse=True) == [
                ("k", "jöe@x.org", "POSTING"),
                ("k", '\x1b"bad\\udcffbyte"', "S"),
            ]
        lock_path = tmp_path / "deep" / "state.db.lock"
        digest = hashlib.blake2b(json.dumps(["k", "jöe@x.org"]).encode(), digest_size=8).digest()
        byte = str(int.from_bytes(digest, "big") >> 2)
        assert posix_locks(lock_path) == []
        with store.lock("k", "jöe@x.org"):
            assert posix_locks(lock_path) == [("WRITE", os.getpid(), byte, byte)]
        assert posix_locks(lock_path) == []


def test_sqlite_reads_do_not_wait_for_a_write_of_the_same_store(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path / "state.db", busy_timeout=30)
    store.set("k", "joe@x.org", "POSTING")
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write: this store's next one waits
    writing = threading.Thread(target=store.set, args=("k", "ann@x.org", "POSTING"))
    writing.start()
    try:
        wait_for(lambda: store._guard.locked(), message="the write never started")
        assert store.get("k", "joe@x.org") == "POSTING"  # read while the write waits
        assert writing.is_alive()
    finally:
        other.execute("ROLLBACK")
        writing.join()
        other.close()
    assert store.get("k", "ann@x.org") == "POSTING"
    store.close()


def test_sqlite_concurrent_first_open(tmp_path: Path) -> None:
    """Workers starting together on a new file all set it up (WAL mode, tables): none fails."""
    for attempt in range(3):
        path = tmp_path / f"state{attempt}.db"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_AT, f"sqlite://{path}", str(time.time() + 0.4)],
                stderr=subprocess.PIPE,
            )
            for _ in range(6)
        ]
        for child in procs:
            _, err = child.communicate(timeout=60)
            assert child.returncode == 0, err.decode()


def test_sqlite_holders_in_two_processes_never_overlap(tmp_path: Path) -> None:
    """Processes contending for one pair log entering and leaving it: never interleaved."""
    url, log, rounds = f"sqlite://{tmp_path / 'state.db'}", tmp_path / "log", 150
    procs = [spawn(MARKER, url, str(log), str(rounds)) for _ in range(2)]
    run_together(procs)
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * 2 * rounds
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert (enter.split()[0], leave.split()[0], enter.split()[1]) == (
            "enter",
            "exit",
            leave.split()[1],
        )
    assert {line.split()[1] for line in lines} == {str(child.pid) for child in procs}


def test_sqlite_lock_is_per_pair_across_processes(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'state.db'}"
    child = spawn(HOLDER, url)
    try:
        wait_line(child, b"locked")
        assert try_lock(f"{url}?lock_wait=5", "k", "ann@x.org") == "locked"
        assert try_lock(f"{url}?lock_wait=5", "k2", "joe@x.org") == "locked"
        started = time.monotonic()
        assert "gave up after 0.3 s" in try_lock(f"{url}?lock_wait=0.3")
        assert time.monotonic() - started >= 0.3
        child.send_signal(signal.SIGKILL)
        assert child.wait(WAIT) == -signal.SIGKILL
        assert try_lock(f"{url}?lock_wait=5") == "locked"  # no lease to wait out
    finally:
        reap(child)


def test_sqlite_closing_one_store_keeps_the_locks_of_another(tmp_path: Path) -> None:
    """Stores of one process share the lock file's descriptor: closing one drops no lock."""
    url = f"sqlite://{tmp_path / 'state.db'}"
    with closing(open_store(url)) as holder, holder.lock("k", "joe@x.org"):
        open_store(url).close()
        assert "gave up" in try_lock(f"{url}?lock_wait=0.2")
    assert try_lock(url) == "locked"


def test_sqlite_colliding_pairs_take_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two pairs hashed to one byte exclude each other: a process's lock would not."""
    monkeypatch.setattr("mailrouter.state.sqlite._slot", lambda key, sender: 7)
    with closing(open_store(f"sqlite://{tmp_path / 'state.db'}?lock_wait=0.2")) as store:
        with store.lock("k", "ann@x.org"), pytest.raises(StoreError, match="gave up"):
            store.lock("k", "bob@x.org").__enter__()
        with store.lock("k", "bob@x.org"):
            pass


def test_sqlite_failed_unlock_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lockf = fcntl.lockf

    def failing(fd: int, cmd: int, *args: int) -> None:
        if cmd == fcntl.LOCK_UN:
            raise OSError(5, "injected")
        lockf(fd, cmd, *args)

    with closing(open_store(f"sqlite://{tmp_path / 'state.db'}")) as store:
        with store.lock("k", "s@x.org"):
            monkeypatch.setattr(fcntl, "lockf", failing)
        monkeypatch.undo()
        assert "cannot release the lock of 's@x.org' under 'k': [Errno 5] injected" in caplog.text


def test_redis_key_layout(redis_shared: Shared) -> None:
    with (
        closing(redis_shared.open()) as store,
        closing(redis.Redis.from_url(SERVERS["redis"])) as r,
    ):
        store.set("lists", "jöe@x.org", "POSTING")
        prefix = redis_shared.name
        assert r.hgetall(f"{prefix}:state") == {'["lists", "jöe@x.org"]'.encode(): b"POSTING"}
        with store.lock("lists", "jöe@x.org"):
            key = f'{prefix}:lock:["lists", "jöe@x.org"]'
            assert 0 < int(r.pttl(key)) <= 30_000
            assert bytes(r.get(key)).startswith(f"{socket.gethostname()}:".encode())
        assert r.exists(key) == 0
        store.clear()
        assert r.exists(f"{prefix}:state") == 0


def test_redis_lists_a_big_hash_a_page_at_a_time(redis_shared: Shared) -> None:
    with (
        closing(redis_shared.open()) as store,
        closing(redis.Redis.from_url(SERVERS["redis"])) as r,
    ):
        store.set("k", "first@x.org", "ONE")
        fields = {json.dumps(["k", f"s{i}@x.org"]): f"S{i}" for i in range(2500)}
        r.hset(f"{redis_shared.name}:state", mapping=fields)  # as in test_redis_key_layout

        def hscans() -> int:
            return int(r.info("commandstats").get("cmdstat_hscan", {}).get("calls", 0))

        before = hscans()
        listed = list(listable(store).items())
        assert hscans() - before >= 2  # more than one page (other clients only add calls)
        assert len(listed) == len(set(listed)) == 2501
        assert set(listed) == {("k", "first@x.org", "ONE")} | {
            ("k", f"s{i}@x.org", f"S{i}") for i in range(2500)
        }


def test_redis_release_spares_a_lock_taken_over(redis_shared: Shared) -> None:
    """A holder whose lease ran out must not delete the lock its successor now holds."""
    with (
        closing(redis_shared.open()) as store,
        closing(redis.Redis.from_url(SERVERS["redis"])) as r,
    ):
        key = f'{redis_shared.name}:lock:["k", "s"]'
        with store.lock("k", "s"):
            r.set(key, "successor", px=60_000)  # as if ours expired and another took it
        assert r.get(key) == b"successor"


def test_postgres_schema(postgres_shared: Shared) -> None:
    with closing(postgres_shared.open()) as store, psycopg.connect(SERVERS["postgres"]) as conn:
        store.set("k", "jöe@x.org", "POSTING")
        store.set("k", "nul\x00@x.org", "S")
        rows = conn.execute(f'SELECT key, sender, state FROM "{postgres_shared.name}"').fetchall()
        assert sorted(rows, reverse=True) == [
            ("k", "jöe@x.org", "POSTING"),
            ("k", '\x1b"nul\\u0000@x.org"', "S"),
        ]
        columns = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = %s ORDER BY ordinal_position",
            (postgres_shared.name,),
        ).fetchall()
        assert columns == [
            ("key", "text"),
            ("sender", "text"),
            ("state", "text"),
            ("updated", "timestamp with time zone"),
        ]
        store.set("k", "jöe@x.org", START)
        assert conn.execute(f'SELECT count(*) FROM "{postgres_shared.name}"').fetchone() == (1,)


def test_postgres_concurrent_first_open(postgres_shared: Shared) -> None:
    """Workers starting together all create the table: none may fail."""
    opened: list[StateStorage] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_one() -> None:
        start.wait(WAIT)
        try:
            opened.append(postgres_shared.open())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    run_threads(threads, WAIT)
    for store in opened:
        store.close()
    assert not errors


# -- with the router ----------------------------------------------------------------------------

EXCLUSIVE = """
import asyncio, time
from mailrouter import route

calls, overlaps, inside = [], [], []

def enter():
    if inside:
        overlaps.append(len(inside))
    inside.append(1)

def leave():
    inside.pop()
    calls.append(1)

if {is_async}:
    @route("{name}@(host)")
    async def START(message, host=None):
        enter()
        await asyncio.sleep(0.002)  # the lock is held across awaits, then released on the loop
        leave()
else:
    @route("{name}@(host)")
    def START(message, host=None):
        enter()
        time.sleep(0.002)  # held a while, so that an overlap would show
        leave()
"""


async def test_routers_sharing_a_store(shared: Shared, make_module: Callable[..., str]) -> None:
    """Two routers (as two worker processes would) on one store never overlap one sender."""

    from mailrouter import Router

    apps = [
        make_module(EXCLUSIVE.format(name=name, is_async=name == "async"))
        for name in ("async", "sync")
    ]
    stores = [shared.open(), shared.open()]
    routers = [Router(defaults={"host": r"example\.com"}, store=store) for store in stores]
    try:
        for router in routers:
            router.load(apps)
        messages = [
            mail(sender="joe@x.org", recipients=[f"{name}@example.com"])
            for name in ("async", "sync")
            for _ in range(10)
        ]
        await asyncio.gather(*(routers[i % 2].deliver(m) for i, m in enumerate(messages)))
    finally:
        for router in routers:
            router.close()
    for app in apps:
        assert len(sys.modules[app].calls) == 10
        assert sys.modules[app].overlaps == []


# -- open_store ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("sqlite", SqliteStorage), ("redis", RedisStorage), ("postgres", PostgresStorage)],
)
def test_open_store_schemes(kind: str, cls: type[StateStorage], tmp_path: Path) -> None:
    require(kind)
    location = Shared(kind, tmp_path)
    try:
        with closing(open_store(location.url())) as store:
            assert isinstance(store, cls)
            assert getattr(store, "cross_process", False) is True
    finally:
        drop(kind, location.name)


def test_open_store_aliases(tmp_path: Path) -> None:
    require("postgres")
    name = unique()
    try:
        url = SERVERS["postgres"].replace("postgresql://", "postgres://", 1)
        with closing(open_store(f"{url}?table={name}")) as store:
            assert isinstance(store, PostgresStorage)
    finally:
        drop("postgres", name)


@pytest.mark.parametrize("relative", ["data/state.db", "state.db"])
def test_open_sqlite_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with closing(open_store(f"sqlite://{relative}")) as store:
        store.set("k", "s", "X")
    assert (tmp_path / relative).is_file()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite://", "names no file"),
        ("sqlite:///", "names no file"),
        ("sqlite:///tmp/x.db?lock_wait=0", "lock_wait must be positive"),
        ("sqlite:///tmp/x.db?busy_timeout=inf", "busy_timeout must be positive"),
        ("sqlite:///tmp/x.db?lock_timeout=30", "unknown option"),
        ("sqlite:///tmp/x.db?colour=blue", "unknown option"),
        ("redis://127.0.0.1:6379/0?lock_timeout=-1", "lock_timeout must be positive"),
        ("redis://127.0.0.1:6379/0?db=zero", "db"),
        ("redis://127.0.0.1:6379/0?prefix=", "prefix must not be empty"),
        ("postgresql://postgres@127.0.0.1/test?table=x;drop", "not a plain"),
        ("postgresql://postgres@127.0.0.1/test?pool_size=0", "pool_size must be a positive"),
        ("postgresql://postgres@127.0.0.1/test?nonsense=1", "nonsense"),
    ],
)
def test_open_store_bad_urls(url: str, match: str) -> None:
    with pytest.raises(StoreError, match=match):
        open_store(url)


def test_password_is_not_shown() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with pytest.raises(StoreError) as info:
        open_store(f"redis://user:s3cret@127.0.0.1:{port}/0?socket_connect_timeout=1")
    assert "s3cret" not in str(info.value)
    assert "user:***@" in str(info.value)


@pytest.mark.parametrize(
    ("scheme", "module", "extra"),
    [("redis", "redis", "redis"), ("postgresql", "psycopg", "postgres")],
)
def test_missing_extra_is_named(
    monkeypatch: pytest.MonkeyPatch, scheme: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delitem(sys.modules, f"mailrouter.state.{extra}", raising=False)
    with pytest.raises(StoreError, match=rf"mailrouter\[{extra}\]"):
        open_store(f"{scheme}://127.0.0.1/0")


CUSTOM = """
from mailrouter.state import MemoryStorage

class Store(MemoryStorage):
    cross_process = True

    def __init__(self, colour="none", readonly=False):
        super().__init__()
        self.colour, self.readonly = colour, readonly

def plain():
    return MemoryStorage()

class Broken:
    def __init__(self):
        raise RuntimeError("no luck")

class Half:
    closed = False
    def get(self, key, sender): return "START"
    def close(self): Half.closed = True

class Bare:  # the StateStorage methods and nothing more: no items()
    def __init__(self):
        inner = MemoryStorage()
        self.get, self.set, self.clear = inner.get, inner.set, inner.clear
        self.lock, self.close = inner.lock, inner.close

NOT_CALLABLE = 42
"""


def test_open_custom_store(make_module: Callable[..., str]) -> None:
    name = make_module(CUSTOM)
    with closing(open_store(f"{name}:Store")) as store:
        assert type(store).__name__ == "Store"
        assert (store.colour, store.readonly) == ("none", False)
        store.set("k", "s", "X")
        assert store.get("k", "s") == "X"
    with closing(open_store(f"{name}:Store?colour=blue", readonly=True)) as store:
        assert (store.colour, store.readonly) == ("blue", True)
    with closing(open_store(f"{name}:plain", readonly=True)) as store:
        assert store.get("k", "s") == START


def test_a_custom_store_without_items_opens_and_keeps_reasons_but_cannot_list(
    make_module: Callable[..., str],
) -> None:
    name = make_module(CUSTOM)
    with closing(open_store(f"{name}:Bare")) as store:
        reason = ErrorReason("app.START", "ValueError: boom", "2026-12-03T15:00:00Z")
        record_error(store, "app", "s@x.org", reason)
        assert store.get("app", "s@x.org") == ERROR
        assert read_reason(store, "app", "s@x.org") == reason
        with pytest.raises(
            StoreError, match=r"state store <.*Bare.*> cannot list its states: it has no items\(\)"
        ):
            list_states(store)


@pytest.mark.parametrize(
    ("attr", "match"),
    [
        ("Missing", "has no 'Missing'"),
        ("NOT_CALLABLE", "names a int, not a factory"),
        ("Broken", "RuntimeError: no luck"),
        ("Half", "'Half', which is not a StateStorage: it has no set, clear, lock method"),
        ("plain?x=1", "TypeError"),
    ],
)
def test_open_custom_store_errors(make_module: Callable[..., str], attr: str, match: str) -> None:
    name = make_module(CUSTOM)
    spec = f"{name}:{attr}"
    with pytest.raises(StoreError, match=match) as info:
        open_store(spec)
    assert repr(spec) in str(info.value)
    if attr == "Half":
        assert sys.modules[name].Half.closed  # what it made was closed


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_such_module_xyz:Store", "ModuleNotFoundError"),
        ("bad-name:Store", "neither a URL nor an import string"),
        ("module:", "unknown state store URL"),
        ("C:\\state.db", "neither a URL nor an import string"),
    ],
)
def test_open_bad_import_strings(spec: str, match: str) -> None:
    with pytest.raises(StoreError, match=match) as info:
        open_store(spec)
    assert repr(spec) in str(info.value)
