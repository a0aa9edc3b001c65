"""The journal: its value objects, then one contract suite run against SQLite and PostgreSQL.

PostgreSQL is the real server of test_stores (TEST_POSTGRES_URL): its tests skip when it
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
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import psycopg
import pytest
from services import SERVERS, Proxy, require, unique

from mailrouter.errors import StoreError
from mailrouter.journal import (
    AmbiguousIdError,
    Arrival,
    Attempt,
    Journal,
    JournalError,
    Outcome,
    RecipientStatus,
    Write,
    delivery_id,
    message_status,
    open_journal,
)
from mailrouter.journal import base as journal_base
from mailrouter.journal.records import FINISH, main_headers

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


def receive(journal: Journal, arrived: Arrival, reply: str = "") -> Attempt:
    """A reception as the server journals one whose recipients got no outcome yet: ``begin``,
    then its one write (``reply=""``: none yet, as a delivery still under way)."""
    attempt = journal.begin(arrived)
    journal.finish(arrived, attempt.number, [], reply, 0.1)
    return attempt


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
    with journal, pytest.raises(JournalError, match=r"127\.0\.0\.1:1.*cannot look up a reception"):
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
    assert journal.get(attempt.delivery_id) is None and journal.entries() == []  # only a read
    journal.record(first, 1, "bob@example.com", Outcome("delivered", "250 ok", ("a.b",)))
    journal.finish(first, 1, [("CAROL@example.com", Outcome("refused", "550 no"))], "250 ok", 0.25)

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
    first = arrival(["a@x.org", "b@x.org", "c@x.org", "d@x.org"], received_at=100.0)
    attempt = journal.begin(first)
    ident = attempt.delivery_id
    journal.record(first, 1, "a@x.org", Outcome("delivered", "250 ok", ("m.f", "m.g")))
    journal.record(
        first, 1, "b@x.org", Outcome("queued", "250 queued", queue_key="K1", reason="no route")
    )
    journal.finish(first, 1, [("c@x.org", Outcome("deferred", "451 later"))], "451 later", 0.5)
    assert journal.get(ident).status == "deferred"  # type: ignore[union-attr]

    second = arrival(["C@X.org", "e@x.org", "B@x.org"], peer="192.0.2.9:1", received_at=200.0)
    again = journal.begin(second)  # fewer, one new
    assert (again.delivery_id, again.number, again.retry) == (ident, 2, True)
    assert set(again.done) == {"a@x.org", "b@x.org"} and dict(again.pending) == {}
    assert again.done["b@x.org"].outcome == Outcome("queued", "250 queued", (), "K1", "no route")
    assert again.is_done("A@X.ORG") and again.is_done("<b@x.org>") and not again.is_done("c@x.org")
    entry = journal.get(ident)
    assert entry is not None and (entry.attempts, entry.reply) == (1, "451 later")  # only read

    journal.record(second, 2, "c@x.org", Outcome("delivered", "250 ok"))  # the retry's first write
    entry = journal.get(ident)
    assert entry is not None
    assert entry.recipients == ("a@x.org", "b@x.org", "c@x.org", "d@x.org", "e@x.org")
    assert (entry.attempts, entry.reply, entry.duration, entry.finished_at) == (2, "", None, None)
    assert (entry.received_at, entry.last_attempt_at, entry.peer) == (100.0, 200.0, "192.0.2.9:1")
    journal.finish(second, 2, [("e@x.org", Outcome("delivered", "250 ok"))], "250 ok", 0.2)
    journal.record(second, 2, "d@x.org", Outcome("delivered", "250 ok"))  # same reception: kept
    entry = journal.get(ident)
    assert entry is not None and (entry.status, entry.attempts, entry.reply) == (
        "queued",
        2,
        "250 ok",
    )
    assert len(journal.begin(arrival(["c@x.org"])).done) == 5


def test_the_first_write_of_a_reception_creates_or_updates_the_entry(journal: Journal) -> None:
    first = arrival(["a@x.org", "b@x.org"], received_at=100.0)
    assert journal.begin(first).number == 1
    journal.record(first, 1, "b@x.org", Outcome("delivered"))  # no begin needed, nor a finish
    entry = journal.get(first.delivery_id)
    assert entry is not None and entry.recipients == ("a@x.org", "b@x.org")  # all named
    assert (entry.attempts, entry.status, entry.finished_at) == (1, "received", None)

    # A process that died before any write: its retry is the first attempt journaled.
    lost = arrival(["a@x.org"], 1)
    assert journal.begin(lost).number == 1 and journal.begin(lost).number == 1
    journal.finish(lost, 1, [("a@x.org", Outcome("delivered"))], "250 ok", 0.1)
    assert journal.get(lost.delivery_id).attempts == 1  # type: ignore[union-attr]

    # A late write of an older reception changes neither the reply nor the reception fields.
    newer = arrival(["a@x.org", "b@x.org"], peer="new", received_at=300.0)
    assert journal.begin(newer).number == 2
    journal.finish(newer, 2, [("a@x.org", Outcome("deferred", "451 later"))], "451 later", 0.2)
    journal.finish(first, 1, [], "250 late", 0.3)
    journal.finish(first, 1, [], "250 later", 0.3, first=False)
    entry = journal.get(first.delivery_id)
    assert entry is not None
    assert (entry.attempts, entry.reply, entry.peer, entry.last_attempt_at) == (
        2,
        "451 later",
        "new",
        300.0,
    )
    # A reply of "" records outcomes only (spool routing): the reception's reply is kept.
    journal.finish(newer, 2, [("a@x.org", Outcome("delivered"))], "", 0.0)
    entry = journal.get(first.delivery_id)
    assert entry is not None and (entry.status, entry.reply) == ("delivered", "451 later")
    assert entry.duration == 0.2 and entry.finished_at is not None


def test_a_done_mark_is_replaced_only_by_another(journal: Journal) -> None:
    arrived = arrival(["a@x.org", "b@x.org"])
    journal.record(arrived, 1, "a@x.org", Outcome("delivered", handlers=("m.f",)))
    journal.record(arrived, 1, "b@x.org", Outcome("deferred", "451 later"))
    late = [("a@x.org", Outcome("pending", "250 spooled")), ("b@x.org", Outcome("pending"))]
    journal.finish(arrived, 1, late, "250 spooled", 0.1)  # a reception's note, after the spool
    a, b = journal.get(arrived.delivery_id).outcomes  # type: ignore[union-attr]
    assert (a.outcome, b.status) == (Outcome("delivered", handlers=("m.f",)), "pending")
    journal.record(arrived, 1, "a@x.org", Outcome("queued", queue_key="K"))
    assert journal.begin(arrived).done["a@x.org"].outcome == Outcome("queued", queue_key="K")


def test_a_mark_for_a_recipient_not_named_yet_is_kept_last(journal: Journal) -> None:
    first = arrival(["a@x.org"])
    journal.record(first, journal.begin(first).number, "late@x.org", Outcome("pending", "250 x"))
    second = arrival(["z@x.org"])
    retry = journal.begin(second)
    assert (dict(retry.done), list(retry.pending)) == ({}, ["late@x.org"])
    assert retry.pending["late@x.org"].outcome == Outcome("pending", "250 x")
    journal.finish(second, retry.number, [], "250 ok", 0.1)
    entry = journal.get(first.delivery_id)
    assert entry is not None and entry.recipients == ("a@x.org", "z@x.org", "late@x.org")
    assert entry.status == "pending"


def test_unknown_entries(journal: Journal) -> None:
    assert journal.begin(arrival(["a@x.org"])) == Attempt(arrival(["a@x.org"]).delivery_id, 1)
    assert journal.get("feed") is None
    assert journal.get("") is None and journal.get("not hex!") is None
    assert journal.entries() == []


def test_an_ambiguous_prefix_is_an_error(journal: Journal) -> None:
    ids: dict[str, str] = {}
    n = 0
    while True:  # 17 ids always share a first digit
        ident = receive(journal, arrival(["a@x.org"], n)).delivery_id
        if ident[0] in ids:
            break
        ids[ident[0]] = ident
        n += 1
    with pytest.raises(AmbiguousIdError, match=f"'{ident[0]}' is the start of several"):
        journal.get(ident[0])
    assert journal.get(ident) is not None


def test_entries_filter_newest_first(journal: Journal) -> None:
    old = arrival(["a@x.org"], 1, "joe@x.org", received_at=100.0)
    mid = arrival(["a@x.org", "b@x.org"], 2, "ann@x.org", received_at=200.0)
    new = arrival(["b@x.org"], 3, "<>", received_at=300.0)
    journal.finish(old, 1, [("a@x.org", Outcome("delivered"))], "250 ok", 0.1)
    journal.record(mid, 1, "a@x.org", Outcome("delivered"))
    journal.record(mid, 1, "b@x.org", Outcome("refused", "550 no"))
    receive(journal, new)
    old, mid, new = old.delivery_id, mid.delivery_id, new.delivery_id  # type: ignore[assignment]

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
        stale = [receive(journal, arrival(["a@x.org"], n, received_at=100.0)) for n in range(5)]
        retried = receive(journal, arrival(["a@x.org"], 10, received_at=100.0)).delivery_id
        assert receive(journal, arrival(["a@x.org"], 10, received_at=500.0)).number == 2
        marked = arrival(["a@x.org"], 11, received_at=100.0)
        journal.record(marked, 1, "a@x.org", Outcome("delivered"), at=500.0)
        fresh = receive(journal, arrival(["a@x.org"], 12, received_at=500.0)).delivery_id
        for n in range(2):
            journal.record(arrival(["a@x.org"], n), 1, "a@x.org", Outcome("delivered"), at=150.0)
        finished = arrival(["a@x.org"], 13, received_at=100.0)
        journal.finish(finished, 1, [], "250 ok", 0.1, at=150.0)

        assert journal.purge(before=400.0) == 6
        assert all(journal.get(attempt.delivery_id) is None for attempt in stale)
        kept = {retried, marked.delivery_id, fresh}
        assert {entry.id for entry in journal.entries()} == kept
        assert journal.purge(before=400.0) == 0
        assert journal.purge(before=time.time()) == 3 and journal.entries() == []


def test_texts_databases_cannot_hold_round_trip(journal: Journal) -> None:
    sender, rcpt = "j\udcf6rg@x.org", "nul\x00@x.org"
    first = Arrival(sender, [rcpt], b"Subject: \xff\x00\r\n\r\n", helo="\udcff")
    attempt = journal.begin(first)
    journal.record(first, attempt.number, rcpt, Outcome("refused", "550 <nul\x00@x.org>"))
    again = journal.begin(Arrival(sender, [rcpt], b"Subject: \xff\x00\r\n\r\n"))
    assert again.number == 2
    entry = journal.get(attempt.delivery_id)
    assert entry is not None
    assert (entry.sender, entry.recipients, entry.subject) == (sender, (rcpt,), "\ufffd")
    assert entry.outcomes[0].outcome == Outcome("refused", "550 <nul\x00@x.org>")
    assert [e.id for e in journal.entries(sender=sender, recipient=rcpt)] == [entry.id]


def test_two_journals_on_one_store_see_each_others_marks(place: Place) -> None:
    with place.open() as one, place.open() as two:
        first = arrival(["a@x.org", "b@x.org"])
        attempt = one.begin(first)
        one.record(first, attempt.number, "a@x.org", Outcome("delivered", handlers=("m.f",)))
        retry = two.begin(arrival(["a@x.org", "b@x.org"]))
        assert (retry.number, set(retry.done)) == (2, {"a@x.org"})
        two.finish(first, 2, [("b@x.org", Outcome("queued", queue_key="K"))], "250 ok", 0.1)
        entry = one.get(attempt.delivery_id)
        assert entry is not None and (entry.status, entry.attempts) == ("queued", 2)
        assert set(one.begin(first).done) == {"a@x.org", "b@x.org"}


def test_threads_begin_record_and_finish_at_once(place: Place) -> None:
    threads, each = 8, 25
    with place.open() as journal:
        start = threading.Barrier(threads)
        numbers: dict[int, list[int]] = {worker: [] for worker in range(threads)}
        failures: list[BaseException] = []
        shared = arrival(["shared@x.org"], -1)

        def work(worker: int) -> None:
            try:
                start.wait(WAIT)
                for n in range(each):
                    same = journal.begin(shared)
                    numbers[worker].append(same.number)
                    mark = Outcome("delivered")
                    journal.record(shared, same.number, f"w{worker}-{n}@x.org", mark)
                    own = arrival([f"r{n}@x.org"], worker * 1000 + n)
                    assert journal.begin(own).number == 1
                    journal.finish(own, 1, [(f"r{n}@x.org", mark)], "250 ok", 0.1)
            except BaseException as exc:
                failures.append(exc)

        pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(WAIT)
        assert failures == []
        for seen in numbers.values():  # a thread's own write is seen by its next begin
            assert seen == sorted(set(seen)) and seen[0] >= 1
        entry = journal.get(shared.delivery_id)
        assert entry is not None and entry.attempts == max(map(max, numbers.values()))
        assert len(entry.recipients) == 1 + threads * each  # no mark lost
        assert sum(record.done for record in entry.outcomes) == threads * each
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
        receive(journal, arrival(["a@x.org"]))
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
arrival = Arrival("alice@example.org", ["a@x.org", "b@x.org"], b"Subject: x")
attempt = journal.begin(arrival)
journal.record(arrival, attempt.number, "a@x.org", Outcome("delivered", handlers=("m.f",)))
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
        first = arrival(["a@x.org", "b@x.org"])
        journal.record(first, journal.begin(first).number, "a@x.org", Outcome("delivered"))
        with closing(sqlite3.connect(place.path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another process writing, for too long
            with pytest.raises(JournalError, match="cannot record an outcome: database is locked"):
                journal.record(first, 1, "b@x.org", Outcome("delivered"))
            with pytest.raises(JournalError, match="cannot record a reply: database is locked"):
                journal.finish(first, 1, [], "250 ok", 0.1)
            assert journal.get(first.delivery_id) is not None  # readers are not held up (WAL)
            retry = journal.begin(first)  # nor is begin, which writes nothing
            assert (retry.number, set(retry.done)) == (2, {"a@x.org"})
            other.execute("ROLLBACK")
        journal.finish(first, 2, [("b@x.org", Outcome("delivered"))], "250 ok", 0.1)
        assert journal.get(first.delivery_id).status == "delivered"  # type: ignore[union-attr]


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first two words of each statement SQLite runs from now on (each row of an
    ``executemany`` is one execution)."""
    ran: list[str] = []
    connect = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)  # type: ignore[call-overload]
        conn.set_trace_callback(lambda sql: ran.append(" ".join(sql.split()[:2])))
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    return ran


def test_a_message_is_one_read_and_one_write(tmp_path: Path, statements: list[str]) -> None:
    with Place("sqlite", tmp_path).open() as journal:
        journal.entries()  # the tables
        one = arrival(["a@x.org"])

        def run(call: Callable[[], object]) -> list[str]:
            statements.clear()
            call()
            return list(statements)

        into = ["INSERT INTO"]
        assert run(lambda: journal.begin(one)) == ["SELECT j.attempts,"]  # no transaction
        done = [("a@x.org", Outcome("delivered"))]
        assert run(lambda: journal.finish(one, 1, done, "250 ok", 0.1)) == [
            "BEGIN IMMEDIATE",
            *into * 2,
            "COMMIT",
        ]
        assert run(lambda: journal.begin(one)) == ["SELECT j.attempts,"]  # a retry too
        three = arrival(["a@x.org", "b@x.org", "c@x.org"])
        mark = Outcome("delivered")
        assert run(lambda: journal.record(three, 1, "a@x.org", mark)) == [
            "BEGIN IMMEDIATE",
            *into * 4,  # the entry, then every recipient named, one with its outcome
            "COMMIT",
        ]
        assert run(lambda: journal.record(three, 1, "b@x.org", mark, first=False)) == [
            "BEGIN IMMEDIATE",
            *into,
            "COMMIT",
        ]
        last = [("c@x.org", mark)]
        assert run(lambda: journal.finish(three, 1, last, "250 ok", 0.1, first=False)) == [
            "BEGIN IMMEDIATE",
            'UPDATE "mailrouter_journal"',
            *into,
            "COMMIT",
        ]
        assert journal.get(three.delivery_id).status == "delivered"  # type: ignore[union-attr]
        assert run(lambda: journal.finish(three, 1, [], "", 0.0, first=False)) == []


def refuse_recipient(place: Place, journal: Journal, rcpt: str) -> None:
    """A trigger in the database that makes any write of ``rcpt``'s row fail."""
    table = journal.table + "_recipients"
    if place.kind == "sqlite":
        with closing(sqlite3.connect(place.path)) as conn:
            conn.execute(
                f"CREATE TRIGGER refuse BEFORE INSERT ON \"{table}\" WHEN NEW.rcpt = '{rcpt}'"
                " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        return
    with psycopg.connect(SERVERS["postgres"], autocommit=True) as conn:
        conn.execute(
            f"CREATE FUNCTION {table}_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF NEW.rcpt = '{rcpt}' THEN RAISE EXCEPTION 'refused by the test'; END IF;"
            " RETURN NEW; END $$"
        )
        conn.execute(
            f'CREATE TRIGGER refuse BEFORE INSERT ON "{table}" FOR EACH ROW'
            f" EXECUTE FUNCTION {table}_refuse()"
        )


def test_write_all_makes_every_write_and_a_failing_one_fails_alone(
    place: Place, journal: Journal
) -> None:
    journal.entries()  # the tables
    refuse_recipient(place, journal, "bad@x.org")
    good, bad, other = (
        arrival([rcpt], n) for n, rcpt in enumerate(["a@x.org", "bad@x.org", "b@x.org"])
    )
    writes = [
        Write(FINISH, one, 1, [(one.recipients[0], Outcome("delivered"))], "250 ok", 0.1)
        for one in (good, bad, other)
    ]
    first, failed, last = journal.write_all(writes)
    assert first is None and last is None
    assert isinstance(failed, JournalError) and "refused by the test" in str(failed)
    for written in (good, other):
        assert journal.get(written.delivery_id).status == "delivered"  # type: ignore[union-attr]
    assert journal.get(bad.delivery_id) is None  # its entry went with its rows
    assert journal.write_all([]) == []
    nothing = Write(FINISH, good, 1, [], "", 0.0, first=False)  # nothing left to write
    assert journal.write_all([nothing]) == [None]
    late = arrival(["c@x.org"], 7)
    late_write = Write(FINISH, late, 1, [("c@x.org", Outcome("delivered"))], "250 ok", 0.1)
    assert journal.write_all([nothing, late_write]) == [None, None]
    assert journal.get(late.delivery_id).status == "delivered"  # type: ignore[union-attr]


def test_write_all_is_one_sqlite_transaction(tmp_path: Path, statements: list[str]) -> None:
    with Place("sqlite", tmp_path).open() as journal:
        journal.entries()
        statements.clear()
        done = Outcome("delivered")
        writes = [
            Write(FINISH, arrival(["a@x.org"], n), 1, [("a@x.org", done)], "250", 0.1)
            for n in range(5)
        ]
        assert journal.write_all(writes) == [None] * 5
        assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
        assert statements.count("INSERT INTO") == 10


def test_write_all_is_one_postgres_transaction(postgres: Place) -> None:
    with postgres.open() as journal:
        done = Outcome("delivered")
        writes = [
            Write(FINISH, arrival(["a@x.org"], n), 1, [("a@x.org", done)], "250", 0.1)
            for n in range(5)
        ]
        assert journal.write_all(writes) == [None] * 5
    with psycopg.connect(SERVERS["postgres"], autocommit=True) as conn:
        rows = conn.execute(f'SELECT xmin::text FROM "{postgres.table}"').fetchall()
    assert len(rows) == 5 and len(set(rows)) == 1  # one transaction wrote them all


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
        first = arrival(["a@x.org", "b@x.org"])
        ident = first.delivery_id
        journal.record(first, journal.begin(first).number, "a@x.org", Outcome("delivered"))
        proxy.stop()
        for call in (
            lambda: journal.begin(first),
            lambda: journal.record(first, 2, "b@x.org", Outcome("delivered")),
            lambda: journal.finish(first, 2, [], "250 ok", 0.1),
            lambda: journal.entries(),
            lambda: journal.get(ident),
        ):
            with pytest.raises(JournalError, match="cannot"):
                call()
        done = [("b@x.org", Outcome("delivered"))]
        batch = [
            Write(FINISH, first, 2, done, "250", 0.1),
            Write(FINISH, arrival([]), 1, [], "", 0),
        ]
        assert all(isinstance(error, JournalError) for error in journal.write_all(batch))
        proxy.start()
        deadline = time.monotonic() + WAIT
        while True:  # the first calls may fail while the pool reconnects
            try:
                retry = journal.begin(first)
                break
            except JournalError:
                assert time.monotonic() < deadline, "the journal did not reconnect"
                time.sleep(0.05)
        assert (retry.number, set(retry.done)) == (2, {"a@x.org"})
        journal.finish(first, 2, [("b@x.org", Outcome("delivered"))], "250 ok", 0.1)
        assert journal.get(ident).status == "delivered"  # type: ignore[union-attr]


def test_the_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    place = Place("sqlite", tmp_path)
    with place.open() as journal:
        journal.entries()
    with closing(sqlite3.connect(place.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert os.path.getsize(place.path) > 0
