"""The journal: its value objects, then one contract suite run against SQLite and PostgreSQL.

PostgreSQL is the real server of test_stores (MAILROUTER_TEST_POSTGRES): its tests skip when it
is down, or fail under ``CI=true``. Each test works on its own file or tables, dropped after.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import psycopg
import pytest
from test_stores import SERVERS, Proxy, require, unique

from mailrouter.errors import StoreError
from mailrouter.journal import (
    AmbiguousIdError,
    Arrival,
    Journal,
    JournalError,
    Outcome,
    RecipientStatus,
    delivery_id,
    message_status,
    open_journal,
)
from mailrouter.journal import base as journal_base
from mailrouter.journal.records import main_headers

WAIT = 30.0
KINDS = ["sqlite", "postgres"]
DATA = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\n"
    b"Subject: =?utf-8?q?h=C3=A9llo?= there\r\nDate: Thu, 3 Dec 2026 12:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n\r\nHi.\r\n"
)


def message(n: int = 0) -> bytes:
    """A distinct message."""
    return DATA + f"{n}\r\n".encode()


def arrival(
    recipients: list[str], n: int = 0, sender: str = "alice@example.org", **extra: object
) -> Arrival:
    return Arrival(sender, recipients, message(n), **extra)  # type: ignore[arg-type]


def drop_tables(table: str) -> None:
    with psycopg.connect(SERVERS["postgres"], autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{table}", "{table}_recipients"')


class Place:
    """Where one test's journal lives: a SQLite file or a pair of PostgreSQL tables."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.path = tmp / "journal.db"
        self.table = unique()

    def url(self, *, server: str | None = None, **options: object) -> str:
        if self.kind == "sqlite":
            query = urlencode(options)
            return f"sqlite://{self.path}" + (f"?{query}" if query else "")
        parts = urlsplit(SERVERS["postgres"])
        if server is not None:
            user = parts.netloc.rpartition("@")[0]
            parts = parts._replace(netloc=f"{user}@{server}" if user else server)
        return f"{parts.geturl()}?{urlencode({'table': self.table, **options})}"

    def open(self, server: str | None = None, **options: object) -> Journal:
        journal = open_journal(self.url(server=server, **options))
        assert journal is not None
        return journal


@pytest.fixture(params=KINDS)
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    require(request.param)
    where = Place(request.param, tmp_path)
    yield where
    if where.kind == "postgres":
        drop_tables(where.table)


@pytest.fixture
def journal(place: Place) -> Iterator[Journal]:
    with place.open() as opened:
        yield opened


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[Place]:
    require("postgres")
    where = Place("postgres", tmp_path)
    yield where
    drop_tables(where.table)


# -- values -------------------------------------------------------------------------------------


def test_delivery_id_is_the_same_message_from_the_same_sender() -> None:
    ident = delivery_id("alice@example.org", DATA)
    assert len(ident) == 32 and int(ident, 16) >= 0
    assert delivery_id("Alice@Example.ORG", DATA) == ident  # the sender compares normalised
    assert delivery_id("<alice@example.org>", DATA) == ident
    assert delivery_id("bob@example.org", DATA) != ident
    assert delivery_id("alice@example.org", DATA + b"x") != ident
    assert delivery_id("", DATA) == delivery_id("<>", DATA) != ident
    assert arrival(["x@y.org"]).delivery_id == delivery_id("alice@example.org", message(0))
    assert delivery_id("\udcff@x.org", DATA)  # undecodable envelope bytes hash too


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], "received"),
        ([None], "received"),
        (["delivered"], "delivered"),
        (["delivered", "delivered"], "delivered"),
        (["queued"], "queued"),
        (["delivered", "queued"], "queued"),
        (["refused"], "refused"),
        (["delivered", "refused"], "partial"),
        (["queued", "refused"], "partial"),
        (["delivered", None], "received"),
        (["delivered", "pending"], "pending"),
        (["pending", None], "pending"),
        (["deferred", "pending", "delivered"], "deferred"),
        (["refused", "deferred"], "deferred"),
    ],
)
def test_message_status_derives_from_the_recipients(
    statuses: list[RecipientStatus | None], expected: str
) -> None:
    assert message_status(statuses) == expected


def test_main_headers_are_decoded_and_bounded() -> None:
    message_id, headers = main_headers(DATA)
    assert message_id == "<1@example.org>"
    assert headers == {
        "Subject": "héllo there",
        "From": "Alice <alice@example.org>",
        "To": "bob@example.com",
        "Date": "Thu, 3 Dec 2026 12:00:00 +0000",
    }
    raw = "Subject: caf\u00e9\r\n  folded\x07\r\nTo: \xff\r\n\r\nSubject: body\r\n".encode(
        "latin-1"
    )
    assert main_headers(raw.replace(b"caf\xe9", "café".encode())) == (
        "",
        {"Subject": "café folded", "To": "\ufffd"},
    )
    assert main_headers(b"") == ("", {})
    assert main_headers(b"no headers at all") == ("", {})
    assert main_headers(b"Subject: =?bogus?x?y?=\n\n") == ("", {"Subject": "=?bogus?x?y?="})
    assert len(main_headers(b"Subject: " + b"x" * 5000 + b"\r\n\r\n")[1]["Subject"]) == 998


def test_outcome_refuses_an_unknown_status() -> None:
    with pytest.raises(ValueError, match="unknown recipient status 'lost'"):
        Outcome("lost")  # type: ignore[arg-type]
    assert Outcome("queued", queue_key="k").done and not Outcome("deferred").done


def test_journal_error_is_a_store_error() -> None:
    assert issubclass(JournalError, StoreError)  # the server answers 451 while it lasts


# -- URLs ---------------------------------------------------------------------------------------


def test_no_url_is_no_journal() -> None:
    assert open_journal("") is None
    assert open_journal("  ") is None


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("mysql://db/journal", "unknown journal URL 'mysql://db/journal'"),
        ("run/journal.db", "unknown journal URL 'run/journal.db'"),
        ("sqlite://", "names no file"),
        ("sqlite:///var/", "names no file"),
        ("sqlite:///tmp/j.db?colour=red", "unknown option in 'colour=red'"),
        ("sqlite:///tmp/j.db?busy_timeout=soon", "busy_timeout must be positive seconds"),
        ("sqlite:///tmp/j.db?table=a-b", "'a-b' is not a [schema.]table name"),
        ("postgresql://u:secret@127.0.0.1/db?timeout=-1", "timeout must be positive seconds"),
        ("postgresql://u:secret@127.0.0.1/db?pool_size=0", "pool_size must be a positive integer"),
        ("postgres://u:secret@127.0.0.1/db?table=x;drop", "is not a [schema.]table name"),
        ("postgresql://u:secret@127.0.0.1/db?colour=red", 'invalid URI query parameter: "colour"'),
        ("mongodb://u:secret@127.0.0.1/db", "unknown journal URL 'mongodb://u:***@127.0.0.1/db'"),
    ],
)
def test_bad_urls_are_clear_errors(url: str, error: str) -> None:
    with pytest.raises(JournalError, match=re.escape(error)) as info:
        open_journal(url)
    assert "secret" not in str(info.value)


def test_a_relative_sqlite_path_is_relative_to_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    journal = open_journal("sqlite://run/journal.db")
    assert journal is not None
    with journal:
        journal.begin(arrival(["bob@example.com"]))
    assert (tmp_path / "run" / "journal.db").is_file()


def test_an_unreachable_postgres_is_an_error_at_first_use_not_at_open() -> None:
    journal = open_journal("postgresql://postgres@127.0.0.1:1/test?timeout=0.5")
    assert journal is not None
    with journal, pytest.raises(JournalError, match=r"127\.0\.0\.1:1.*cannot record a reception"):
        journal.begin(arrival(["bob@example.com"]))


# -- the contract -------------------------------------------------------------------------------


def test_begin_record_finish_get(journal: Journal) -> None:
    first = arrival(
        ["Bob@Example.com", "carol@example.com", "bob@example.com"],
        peer="192.0.2.1:4000",
        helo="mx.example.org",
        received_at=1000.0,
    )
    attempt = journal.begin(first)
    assert (attempt.delivery_id, attempt.number, dict(attempt.done)) == (first.delivery_id, 1, {})
    assert not attempt.retry
    journal.record(attempt.delivery_id, "bob@example.com", Outcome("delivered", "250 ok", ("a.b",)))
    journal.record(attempt.delivery_id, "CAROL@example.com", Outcome("refused", "550 no"))
    journal.finish(attempt.delivery_id, "250 ok", 0.25)

    entry = journal.get(attempt.delivery_id)
    assert entry is not None and journal.get(attempt.delivery_id[:5].upper()) == entry
    assert entry.recipients == ("Bob@Example.com", "carol@example.com")  # as first given
    assert (entry.status, entry.attempts, entry.reply, entry.duration) == (
        "partial",
        1,
        "250 ok",
        0.25,
    )
    assert (entry.message_id, entry.subject, entry.sender) == (
        "<1@example.org>",
        "héllo there",
        "alice@example.org",
    )
    assert (entry.peer, entry.helo, entry.size) == (
        "192.0.2.1:4000",
        "mx.example.org",
        len(first.data),
    )
    assert (entry.sha256, entry.received_at, entry.last_attempt_at) == (
        first.sha256,
        1000.0,
        1000.0,
    )
    assert entry.finished_at is not None
    bob, carol = entry.outcomes
    assert bob.outcome == Outcome("delivered", "250 ok", ("a.b",)) and bob.done
    assert carol.status == "refused" and not carol.done and carol.at is not None

    document = entry.to_json()
    assert document["status"] == "partial" and document["received_at"] == "1970-01-01T00:16:40.000Z"
    assert document["outcomes"][0] == {
        "recipient": "Bob@Example.com",
        "status": "delivered",
        "handlers": ["a.b"],
        "queue_key": "",
        "reason": "",
        "reply": "250 ok",
        "at": document["outcomes"][0]["at"],
    }
    assert {"id", "message_id", "sender", "recipients", "headers", "sha256", "size"} <= set(
        document
    )


def test_a_retry_gets_the_done_recipients(journal: Journal) -> None:
    attempt = journal.begin(arrival(["a@x.org", "b@x.org", "c@x.org", "d@x.org"]))
    ident = attempt.delivery_id
    journal.record(ident, "a@x.org", Outcome("delivered", "250 ok", ("m.f", "m.g")))
    journal.record(
        ident, "b@x.org", Outcome("queued", "250 queued", queue_key="K1", reason="no route")
    )
    journal.record(ident, "c@x.org", Outcome("deferred", "451 later"))
    journal.finish(ident, "451 later", 0.5)
    assert journal.get(ident).status == "deferred"  # type: ignore[union-attr]

    again = journal.begin(arrival(["C@X.org", "e@x.org", "B@x.org"]))  # fewer, one new
    assert (again.delivery_id, again.number, again.retry) == (ident, 2, True)
    assert set(again.done) == {"a@x.org", "b@x.org"} and dict(again.pending) == {}
    assert again.done["b@x.org"].outcome == Outcome("queued", "250 queued", (), "K1", "no route")
    assert again.is_done("A@X.ORG") and again.is_done("<b@x.org>") and not again.is_done("c@x.org")
    entry = journal.get(ident)
    assert entry is not None
    assert entry.recipients == ("a@x.org", "b@x.org", "c@x.org", "d@x.org", "e@x.org")
    assert (entry.attempts, entry.reply, entry.duration, entry.finished_at) == (2, "", None, None)
    journal.record(ident, "c@x.org", Outcome("delivered", "250 ok"))
    journal.record(ident, "e@x.org", Outcome("delivered", "250 ok"))
    journal.record(ident, "d@x.org", Outcome("delivered", "250 ok"))
    assert journal.get(ident).status == "queued"  # type: ignore[union-attr]
    assert len(journal.begin(arrival(["c@x.org"])).done) == 5


def test_a_mark_for_a_recipient_not_named_yet_is_kept_last(journal: Journal) -> None:
    ident = journal.begin(arrival(["a@x.org"])).delivery_id
    journal.record(ident, "late@x.org", Outcome("pending", "250 spooled"))
    retry = journal.begin(arrival(["z@x.org"]))
    assert (dict(retry.done), list(retry.pending)) == ({}, ["late@x.org"])
    assert retry.pending["late@x.org"].outcome == Outcome("pending", "250 spooled")
    entry = journal.get(ident)
    assert entry is not None and entry.recipients == ("a@x.org", "z@x.org", "late@x.org")
    assert entry.status == "pending"


def test_unknown_entries(journal: Journal) -> None:
    with pytest.raises(JournalError, match="no entry 'feed' to record in"):
        journal.record("feed", "a@x.org", Outcome("delivered"))
    with pytest.raises(JournalError, match="no entry 'feed' to finish"):
        journal.finish("feed", "250 ok", 0.1)
    assert journal.get("feed") is None
    assert journal.get("") is None and journal.get("not hex!") is None
    assert journal.entries() == []


def test_an_ambiguous_prefix_is_an_error(journal: Journal) -> None:
    ids: dict[str, str] = {}
    n = 0
    while True:  # 17 ids always share a first digit
        ident = journal.begin(arrival(["a@x.org"], n)).delivery_id
        if ident[0] in ids:
            break
        ids[ident[0]] = ident
        n += 1
    with pytest.raises(AmbiguousIdError, match=f"'{ident[0]}' is the start of several"):
        journal.get(ident[0])
    assert journal.get(ident) is not None


def test_entries_filter_newest_first(journal: Journal) -> None:
    def received(n: int, recipients: list[str], sender: str, at: float) -> str:
        return journal.begin(arrival(recipients, n, sender, received_at=at)).delivery_id

    old = received(1, ["a@x.org"], "joe@x.org", 100.0)
    mid = received(2, ["a@x.org", "b@x.org"], "ann@x.org", 200.0)
    new = received(3, ["b@x.org"], "<>", 300.0)
    journal.record(old, "a@x.org", Outcome("delivered"))
    journal.record(mid, "a@x.org", Outcome("delivered"))
    journal.record(mid, "b@x.org", Outcome("refused", "550 no"))

    def ids(**filters: object) -> list[str]:
        return [entry.id for entry in journal.entries(**filters)]  # type: ignore[arg-type]

    assert ids() == [new, mid, old]
    assert ids(limit=2) == [new, mid] and ids(limit=None) == [new, mid, old]
    assert ids(status="delivered") == [old]
    assert ids(status="partial") == [mid]
    assert ids(status="received") == [new]
    assert ids(status="queued") == []
    assert ids(sender="JOE@x.org") == [old] and ids(sender="") == [new]
    assert ids(recipient="B@X.ORG") == [new, mid]
    assert ids(recipient="b@x.org", status="partial") == [mid]
    assert ids(since=200.0) == [new, mid] and ids(until=200.0) == [old]
    assert ids(since=150.0, until=250.0, sender="ann@x.org") == [mid]
    with pytest.raises(ValueError, match="unknown message status 'lost'"):
        journal.entries(status="lost")  # type: ignore[arg-type]


def test_purge_removes_what_was_idle_since(place: Place, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_base, "PURGE_BATCH", 2)  # several batches
    with place.open() as journal:
        stale = [
            journal.begin(arrival(["a@x.org"], n, received_at=100.0)).delivery_id for n in range(5)
        ]
        retried = journal.begin(arrival(["a@x.org"], 10, received_at=100.0)).delivery_id
        journal.begin(arrival(["a@x.org"], 10, received_at=500.0))
        marked = journal.begin(arrival(["a@x.org"], 11, received_at=100.0)).delivery_id
        journal.record(marked, "a@x.org", Outcome("delivered"), at=500.0)
        fresh = journal.begin(arrival(["a@x.org"], 12, received_at=500.0)).delivery_id
        for ident in stale[:2]:
            journal.record(ident, "a@x.org", Outcome("delivered"), at=150.0)

        assert journal.purge(before=400.0) == 5
        assert all(journal.get(ident) is None for ident in stale)
        assert {entry.id for entry in journal.entries()} == {retried, marked, fresh}
        assert journal.purge(before=400.0) == 0
        assert journal.purge(before=time.time()) == 3 and journal.entries() == []


def test_texts_databases_cannot_hold_round_trip(journal: Journal) -> None:
    sender, rcpt = "j\udcf6rg@x.org", "nul\x00@x.org"
    attempt = journal.begin(Arrival(sender, [rcpt], b"Subject: \xff\x00\r\n\r\n", helo="\udcff"))
    journal.record(attempt.delivery_id, rcpt, Outcome("refused", "550 <nul\x00@x.org>"))
    again = journal.begin(Arrival(sender, [rcpt], b"Subject: \xff\x00\r\n\r\n"))
    assert again.number == 2
    entry = journal.get(attempt.delivery_id)
    assert entry is not None
    assert (entry.sender, entry.recipients, entry.subject) == (sender, (rcpt,), "\ufffd")
    assert entry.outcomes[0].outcome == Outcome("refused", "550 <nul\x00@x.org>")
    assert [e.id for e in journal.entries(sender=sender, recipient=rcpt)] == [entry.id]


def test_two_journals_on_one_store_see_each_others_marks(place: Place) -> None:
    with place.open() as one, place.open() as two:
        attempt = one.begin(arrival(["a@x.org", "b@x.org"]))
        one.record(attempt.delivery_id, "a@x.org", Outcome("delivered", handlers=("m.f",)))
        retry = two.begin(arrival(["a@x.org", "b@x.org"]))
        assert (retry.number, set(retry.done)) == (2, {"a@x.org"})
        two.record(attempt.delivery_id, "b@x.org", Outcome("queued", queue_key="K"))
        assert one.get(attempt.delivery_id).status == "queued"  # type: ignore[union-attr]


def test_threads_begin_and_record_at_once(place: Place) -> None:
    threads, each = 8, 25
    with place.open() as journal:
        start = threading.Barrier(threads)
        numbers: list[int] = []
        failures: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                start.wait(WAIT)
                for n in range(each):
                    same = journal.begin(arrival(["shared@x.org"], -1))
                    numbers.append(same.number)
                    journal.record(same.delivery_id, f"w{worker}-{n}@x.org", Outcome("delivered"))
                    own = journal.begin(arrival([f"r{n}@x.org"], worker * 1000 + n))
                    journal.record(own.delivery_id, f"r{n}@x.org", Outcome("delivered"))
            except BaseException as exc:
                failures.append(exc)

        pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(WAIT)
        assert failures == []
        assert sorted(numbers) == list(range(1, threads * each + 1))  # each attempt counted once
        shared = journal.get(delivery_id("alice@example.org", message(-1)))
        assert shared is not None and len(shared.recipients) == 1 + threads * each
        assert len(journal.entries(status="delivered", limit=None)) == threads * each


def test_concurrent_first_uses_create_the_tables_once(postgres: Place) -> None:
    journals = [postgres.open() for _ in range(4)]
    start = threading.Barrier(len(journals))
    failures: list[BaseException] = []

    def first_use(journal: Journal) -> None:
        try:
            start.wait(WAIT)
            journal.begin(arrival(["a@x.org"]))
        except BaseException as exc:
            failures.append(exc)

    pool = [threading.Thread(target=first_use, args=(j,)) for j in journals]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(WAIT)
    for journal in journals:
        journal.close()
    assert failures == []


def test_a_table_option_names_the_tables(postgres: Place) -> None:
    with postgres.open() as journal:
        journal.begin(arrival(["a@x.org"]))
    with psycopg.connect(SERVERS["postgres"]) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"{postgres.table}%",)
        ).fetchall()
    assert sorted(row[0] for row in rows) == [postgres.table, f"{postgres.table}_recipients"]
    with open_journal(postgres.url(table=f"public.{postgres.table}")) as same:  # type: ignore[union-attr]
        assert len(same.entries()) == 1


CHILD = """
import os, signal, sys
from mailrouter.journal import Arrival, Outcome, open_journal
journal = open_journal(sys.argv[1])
attempt = journal.begin(Arrival("alice@example.org", ["a@x.org", "b@x.org"], b"Subject: x"))
journal.record(attempt.delivery_id, "a@x.org", Outcome("delivered", handlers=("m.f",)))
os.kill(os.getpid(), signal.SIGKILL)  # dies before b, before finish, before close
"""


def test_a_mark_survives_its_process_being_killed(place: Place) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, place.url()], capture_output=True, timeout=WAIT, check=False
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    with place.open() as journal:
        retry = journal.begin(Arrival("alice@example.org", ["a@x.org", "b@x.org"], b"Subject: x"))
        assert (retry.number, set(retry.done)) == (2, {"a@x.org"})


def test_a_locked_sqlite_file_is_an_error_then_works(tmp_path: Path) -> None:
    place = Place("sqlite", tmp_path)
    with place.open(busy_timeout=0.05) as journal:
        ident = journal.begin(arrival(["a@x.org"])).delivery_id
        with closing(sqlite3.connect(place.path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another process writing, for too long
            with pytest.raises(JournalError, match="cannot record an outcome: database is locked"):
                journal.record(ident, "a@x.org", Outcome("delivered"))
            assert journal.get(ident) is not None  # readers are not held up (WAL)
            other.execute("ROLLBACK")
        journal.record(ident, "a@x.org", Outcome("delivered"))
        assert journal.get(ident).status == "delivered"  # type: ignore[union-attr]


def test_a_closed_journal_refuses_calls(journal: Journal) -> None:
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="is closed"):
        journal.entries()


@pytest.fixture
def proxy(postgres: Place) -> Iterator[Proxy]:
    forwarder = Proxy(SERVERS["postgres"])
    forwarder.start()
    try:
        yield forwarder
    finally:
        forwarder.stop()


def test_postgres_down_is_a_journal_error_then_it_works_again(
    postgres: Place, proxy: Proxy
) -> None:
    with postgres.open(server=proxy.address, timeout=0.5) as journal:
        ident = journal.begin(arrival(["a@x.org", "b@x.org"])).delivery_id
        journal.record(ident, "a@x.org", Outcome("delivered"))
        proxy.stop()
        for call in (
            lambda: journal.begin(arrival(["a@x.org", "b@x.org"])),
            lambda: journal.record(ident, "b@x.org", Outcome("delivered")),
            lambda: journal.finish(ident, "250 ok", 0.1),
            lambda: journal.entries(),
            lambda: journal.get(ident),
        ):
            with pytest.raises(JournalError, match="cannot"):
                call()
        proxy.start()
        deadline = time.monotonic() + WAIT
        while True:  # the first calls may fail while the pool reconnects
            try:
                retry = journal.begin(arrival(["a@x.org", "b@x.org"]))
                break
            except JournalError:
                assert time.monotonic() < deadline, "the journal did not reconnect"
                time.sleep(0.05)
        assert set(retry.done) == {"a@x.org"}
        journal.record(ident, "b@x.org", Outcome("delivered"))
        assert journal.get(ident).status == "delivered"  # type: ignore[union-attr]


def test_the_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    place = Place("sqlite", tmp_path)
    with place.open() as journal:
        journal.entries()
    with closing(sqlite3.connect(place.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert os.path.getsize(place.path) > 0
