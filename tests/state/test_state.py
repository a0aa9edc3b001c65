"""Tests for mailrouter.state: one contract suite for every store, then store-specific behaviour."""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from test_stores import STORES, every_store  # noqa: F401 (the store fixture)

from mailrouter.errors import StoreError
from mailrouter.state import (
    ERROR,
    START,
    ErrorReason,
    MemoryStorage,
    ShelveStorage,
    StateEntry,
    StateStorage,
    change_state,
    list_states,
    listable,
    open_store,
    read_reason,
    record_error,
)
from mailrouter.state.base import KeyedLocks

WAIT = 10.0  # generous deadline for anything that should happen promptly


def run_thread(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    """Start ``target`` in a daemon thread; exceptions it raises are collected in the list."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, errors


# -- the contract -------------------------------------------------------------------------------


def test_default_is_start(store: StateStorage) -> None:
    assert store.get("app.handlers", "joe@example.org") == START


def test_set_and_get(store: StateStorage) -> None:
    store.set("app.handlers", "joe@example.org", "CONFIRMING")
    assert store.get("app.handlers", "joe@example.org") == "CONFIRMING"
    store.set("app.handlers", "joe@example.org", ERROR)
    assert store.get("app.handlers", "joe@example.org") == ERROR


def test_set_start_removes(store: StateStorage) -> None:
    store.set("k", "joe@example.org", "POSTING")
    store.set("k", "joe@example.org", START)
    assert store.get("k", "joe@example.org") == START
    store.set("k", "joe@example.org", START)  # removing what is absent is fine
    assert store.get("k", "joe@example.org") == START


def test_keys_and_senders_are_independent(store: StateStorage) -> None:
    store.set("k1", "a@x.org", "A1")
    store.set("k1", "b@x.org", "B1")
    store.set("k2", "a@x.org", "A2")
    assert store.get("k1", "a@x.org") == "A1"
    assert store.get("k1", "b@x.org") == "B1"
    assert store.get("k2", "a@x.org") == "A2"
    assert store.get("k2", "b@x.org") == START
    store.set("k1", "a@x.org", START)
    assert store.get("k1", "b@x.org") == "B1"
    assert store.get("k2", "a@x.org") == "A2"


def test_ambiguous_looking_keys_stay_apart(store: StateStorage) -> None:
    store.set("a:b", "c", "ONE")
    store.set("a", "b:c", "TWO")
    store.set('a", "b', "c", "THREE")
    assert store.get("a:b", "c") == "ONE"
    assert store.get("a", "b:c") == "TWO"
    assert store.get('a", "b', "c") == "THREE"


def test_clear(store: StateStorage) -> None:
    for i in range(5):
        store.set("k", f"s{i}@x.org", f"S{i}")
    store.clear()
    assert all(store.get("k", f"s{i}@x.org") == START for i in range(5))
    store.set("k", "s0@x.org", "AGAIN")
    assert store.get("k", "s0@x.org") == "AGAIN"


@pytest.mark.parametrize(
    ("key", "sender", "state"),
    [
        ("lists:ünïcode", "jöe@exämple.org", "CÖNFIRMING"),
        ("📮.handlers", "🙂@例え.jp", "✅"),
        ("k", "bad\udcffbyte@x.org", "S"),  # a surrogate-escaped byte from a non-UTF-8 envelope
        ("", "", ""),
    ],
)
def test_unicode_keys_and_senders(store: StateStorage, key: str, sender: str, state: str) -> None:
    store.set(key, sender, state)
    assert store.get(key, sender) == state
    assert store.get(key, sender + "x") == START


def test_lock_serialises_same_sender(store: StateStorage) -> None:
    threads, per_thread = 6, 8

    def work() -> None:
        for _ in range(per_thread):
            with store.lock("k", "joe@x.org"):
                state = store.get("k", "joe@x.org")
                current = 0 if state == START else int(state.removeprefix("N"))
                time.sleep(0.0005)  # invites a lost update if the lock does not hold
                store.set("k", "joe@x.org", f"N{current + 1}")

    workers = [run_thread(work) for _ in range(threads)]
    for thread, errors in workers:
        thread.join(WAIT)
        assert not thread.is_alive()
        assert not errors
    assert store.get("k", "joe@x.org") == f"N{threads * per_thread}"


@pytest.mark.parametrize("other", [("k", "s2@x.org"), ("k2", "s1@x.org")])
def test_lock_does_not_block_other_pairs(store: StateStorage, other: tuple[str, str]) -> None:
    held, release, got_other = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        with store.lock("k", "s1@x.org"):
            held.set()
            release.wait(WAIT)

    def other_pair() -> None:
        with store.lock(*other):
            got_other.set()

    a, a_errors = run_thread(holder)
    try:
        assert held.wait(WAIT)
        b, b_errors = run_thread(other_pair)
        assert got_other.wait(WAIT), "a different (key, sender) waited for the held lock"
        b.join(WAIT)
        assert not b_errors
    finally:
        release.set()
        a.join(WAIT)
    assert not a_errors


def test_lock_released_from_another_thread(store: StateStorage) -> None:
    guard = store.lock("k", "s@x.org")
    entered, _ = run_thread(guard.__enter__)
    entered.join(WAIT)

    def release() -> None:
        guard.__exit__(None, None, None)

    releaser, errors = run_thread(release)
    releaser.join(WAIT)
    assert not errors

    reacquired = threading.Event()

    def again() -> None:
        with store.lock("k", "s@x.org"):
            reacquired.set()

    thread, errors = run_thread(again)
    assert reacquired.wait(WAIT)
    thread.join(WAIT)
    assert not errors


def listed(store: StateStorage) -> list[tuple[str, str, str]]:
    """What ``items()`` gives, sorted."""
    return sorted(listable(store).items())


def test_items_lists_every_stored_state(store: StateStorage) -> None:
    assert listed(store) == []
    store.set("k1", "b@x.org", "B1")
    store.set("k1", "a@x.org", "A1")
    store.set("k2", "a@x.org", "A2")
    store.set("k2", "b@x.org", "GONE")
    store.set("k2", "b@x.org", START)  # START is never stored, so never listed
    store.set("k1", "a@x.org", ERROR)
    assert listed(store) == [
        ("k1", "a@x.org", ERROR),
        ("k1", "b@x.org", "B1"),
        ("k2", "a@x.org", "A2"),
    ]
    assert listed(store) == listed(store)  # listing changes nothing
    store.clear()
    assert listed(store) == []


def test_items_gives_keys_senders_and_states_back_as_stored(store: StateStorage) -> None:
    stored = [
        ("lists:ünïcode", "jöe@exämple.org", "CÖNFIRMING"),
        ("📮.handlers", "🙂@例え.jp", "✅"),
        ("k", "bad\udcffbyte@x.org", "S\udcff"),  # surrogate-escaped bytes of a non-UTF-8 envelope
        ("\x1bk", "nul\x00@x.org", "\x1b[0m"),  # what the SQL stores escape
        ("a:b", "c", "ONE"),
        ("a", "b:c", "TWO"),
        ('a", "b', "c", "THREE"),
        ("", "", ""),
    ]
    for key, sender, state in stored:
        store.set(key, sender, state)
    assert listed(store) == sorted(stored)
    assert all(store.get(key, sender) == state for key, sender, state in listed(store))


def test_error_reasons_are_kept_listed_and_dropped(store: StateStorage) -> None:
    reason = ErrorReason.of("app.ÉTAT", KeyError("jöe\udcff@x.org"))
    record_error(store, "app", "jöe@x.org", reason)
    record_error(store, "app", "ann@x.org", reason)
    store.set("other", "jöe@x.org", "POSTING")
    assert read_reason(store, "app", "jöe@x.org") == reason
    assert list_states(store, state=ERROR) == [
        StateEntry("app", "ann@x.org", ERROR, reason),
        StateEntry("app", "jöe@x.org", ERROR, reason),
    ]
    change_state(store, "app", "jöe@x.org", START)
    change_state(store, "app", "ann@x.org", "CONFIRMING")
    assert listed(store) == [("app", "ann@x.org", "CONFIRMING"), ("other", "jöe@x.org", "POSTING")]


def test_store_as_context_manager(tmp_path: Path) -> None:
    for factory in STORES.values():
        with factory(tmp_path) as opened:
            opened.set("k", "s", "X")
            assert opened.get("k", "s") == "X"


# -- the keyed locks ----------------------------------------------------------------------------


def test_keyed_locks_forget_released_entries() -> None:
    locks = KeyedLocks()
    for i in range(100):
        with locks.hold("k", f"s{i}"):
            assert len(locks._entries) == 1
    assert locks._entries == {}


def test_keyed_locks_keep_entry_while_someone_waits() -> None:
    locks = KeyedLocks()
    waiting = locks.hold("k", "s")
    with locks.hold("k", "s"):
        thread, errors = run_thread(lambda: waiting.__enter__())
        deadline = time.monotonic() + WAIT
        while locks._entries[("k", "s")].users < 2:  # the waiter has registered
            assert time.monotonic() < deadline
            time.sleep(0.001)
    thread.join(WAIT)
    assert not errors
    assert ("k", "s") in locks._entries  # the waiter now holds it
    waiting.__exit__(None, None, None)
    assert locks._entries == {}


# -- ShelveStorage ------------------------------------------------------------------------------


def rows(path: Path) -> int:
    """How many entries the SQLite file holds, read with the plain sqlite3 module."""
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM Dict").fetchone()[0])


def test_shelve_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with ShelveStorage(path) as first:
        first.set("k", "jöe@x.org", "POSTING")
        first.set("k", "ann@x.org", "BOUNCING")
    with ShelveStorage(path) as second:
        assert second.get("k", "jöe@x.org") == "POSTING"
        assert second.get("k", "ann@x.org") == "BOUNCING"


def test_shelve_file_is_plain_sqlite_and_start_deletes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with ShelveStorage(path) as opened:
        opened.set("k", "a", "X")
        opened.set("k", "b", "Y")
        assert rows(path) == 2
        opened.set("k", "a", START)
        assert rows(path) == 1
        opened.clear()
        assert rows(path) == 0


def test_shelve_creates_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "state.db"
    with ShelveStorage(path) as opened:
        opened.set("k", "s", "X")
    assert path.is_file()


def test_shelve_refuses_second_open_in_process(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with ShelveStorage(path):
        with pytest.raises(StoreError) as info:
            ShelveStorage(path)
        assert str(path) in str(info.value)
        assert str(os.getpid()) in str(info.value)
    with ShelveStorage(path):  # released on close
        pass


def test_shelve_refuses_second_open_from_subprocess(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    script = (
        "import sys\n"
        "from mailrouter.state import ShelveStorage\n"
        "from mailrouter.errors import StoreError\n"
        "try:\n"
        "    ShelveStorage(sys.argv[1]).close()\n"
        "except StoreError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    with ShelveStorage(path):
        result = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 3, result.stderr
    assert str(path) in result.stdout
    assert str(os.getpid()) in result.stdout


def test_shelve_readonly_reads_while_writer_holds(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with ShelveStorage(path) as writer:
        writer.set("k", "s@x.org", "ONE")
        with ShelveStorage(path, readonly=True) as reader:
            assert reader.get("k", "s@x.org") == "ONE"
            writer.set("k", "s@x.org", "TWO")
            writer.set("k", "t@x.org", "THREE")
            assert reader.get("k", "s@x.org") == "TWO"
            assert reader.get("k", "t@x.org") == "THREE"
            assert listed(reader) == [("k", "s@x.org", "TWO"), ("k", "t@x.org", "THREE")]
            with pytest.raises(StoreError, match="read-only"):
                reader.set("k", "s@x.org", "X")
            with pytest.raises(StoreError, match="read-only"):
                reader.clear()
        assert writer.get("k", "s@x.org") == "TWO"


def test_shelve_readonly_after_writer_closed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with ShelveStorage(path) as writer:
        writer.set("k", "s", "KEPT")
    with ShelveStorage(path, readonly=True) as reader:
        assert reader.get("k", "s") == "KEPT"


def test_shelve_readonly_missing_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "nothing" / "state.db"
    with ShelveStorage(path, readonly=True) as reader:
        assert reader.get("k", "s") == START
        assert listed(reader) == []
        with pytest.raises(StoreError):
            reader.set("k", "s", "X")
    assert not path.parent.exists()


@pytest.mark.parametrize("readonly", [False, True])
def test_shelve_corrupt_file_is_refused(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database, just garbage \x00\xff" * 100)
    with pytest.raises(StoreError) as info:
        ShelveStorage(path, readonly=readonly)
    assert str(path) in str(info.value)
    if not readonly:
        with ShelveStorage(tmp_path / "other.db"):  # nothing leaked from the failed open
            pass
        path.unlink()
        with ShelveStorage(path):  # the failed open released its lock
            pass


def test_shelve_unopenable_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.mkdir()  # a directory where the file should be: unreadable even as root
    with pytest.raises(StoreError, match=r"state\.db"):
        ShelveStorage(path)


def test_shelve_close_is_idempotent_and_final(tmp_path: Path) -> None:
    opened = ShelveStorage(tmp_path / "state.db")
    opened.close()
    opened.close()
    with pytest.raises(StoreError, match="closed"):
        opened.get("k", "s")
    with pytest.raises(StoreError, match="closed"):
        opened.set("k", "s", "X")
    with pytest.raises(StoreError, match="closed"):
        opened.clear()
    with pytest.raises(StoreError, match="closed"):
        listed(opened)


CHILD = """
import sys
from mailrouter.state import ShelveStorage
store = ShelveStorage(sys.argv[1])
i = 0
while True:
    store.set("k", f"sender{i}", f"S{i}")
    print(i, flush=True)
    i += 1
"""


def test_shelve_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    lines: queue.Queue[str | None] = queue.Queue()
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as child:
        assert child.stdout is not None
        stdout = child.stdout

        def pump() -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        printed: list[int] = []
        deadline = time.monotonic() + 60
        try:
            while len(printed) < 200:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                assert line is not None, "the child exited early"
                printed.append(int(line))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(WAIT)
        reader.join(WAIT)
        while (line := lines.get_nowait()) is not None:  # lines printed before the kill landed
            printed.append(int(line))
    assert child.returncode == -signal.SIGKILL
    with ShelveStorage(path) as reopened:  # the dead child's flock is gone with it
        missing = [i for i in printed if reopened.get("k", f"sender{i}") != f"S{i}"]
    assert printed == list(range(len(printed)))
    assert missing == []


# -- open_store ---------------------------------------------------------------------------------


def test_open_memory() -> None:
    with closing(open_store("memory://")) as opened:
        assert isinstance(opened, MemoryStorage)


def test_open_shelve_absolute(tmp_path: Path) -> None:
    path = tmp_path / "abs" / "state.db"
    with closing(open_store(f"shelve://{path}")) as opened:
        assert isinstance(opened, ShelveStorage)
        assert opened.path == path
        opened.set("k", "s", "X")
    with closing(open_store(f"shelve://{path}", readonly=True)) as reader:
        assert isinstance(reader, ShelveStorage) and reader.readonly
        assert reader.get("k", "s") == "X"


@pytest.mark.parametrize("relative", ["data/state.db", "state.db"])
def test_open_shelve_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with closing(open_store(f"shelve://{relative}")) as opened:
        opened.set("k", "s", "X")
    assert (tmp_path / relative).is_file()


@pytest.mark.parametrize("url", ["shelve://", "shelve:///", "shelve:"])
def test_open_shelve_without_path(url: str) -> None:
    with pytest.raises(StoreError, match="names no file"):
        open_store(url)


@pytest.mark.parametrize("url", ["mongodb://localhost/0", "state.db", "/var/lib/state.db"])
def test_open_unknown_scheme_lists_known(url: str) -> None:
    with pytest.raises(StoreError) as info:
        open_store(url)
    assert "memory://" in str(info.value)
    assert "shelve://" in str(info.value)
