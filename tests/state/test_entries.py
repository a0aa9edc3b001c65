"""mailrouter.state.entries: ERROR reasons, state changes that drop them, and listing states."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailrouter.state import (
    ERROR,
    START,
    ErrorReason,
    MemoryStorage,
    ShelveStorage,
    StateEntry,
    change_state,
    list_states,
    read_reason,
    record_error,
)
from mailrouter.state.entries import MAX_ERROR, reason_key

REASON = ErrorReason("config.lists.POSTING", "ValueError: boom", "2026-12-03T15:00:00Z")


class Recording(MemoryStorage):
    """A memory store that also records every ``set``, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.sets: list[tuple[str, str, str]] = []

    def set(self, key: str, sender: str, state: str) -> None:
        self.sets.append((key, sender, state))
        super().set(key, sender, state)


# -- ErrorReason --------------------------------------------------------------------------------


def test_a_reason_names_the_error_on_one_line_with_the_utc_time() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    reason = ErrorReason.of("app.START", ValueError("bad\r\n  input\tfrom\x1b[31m here"))
    after = datetime.now(UTC)
    assert reason.handler == "app.START"
    assert reason.error == "ValueError: bad input from\\x1b[31m here"
    assert reason.time.endswith("Z") and len(reason.time) == len("2026-12-03T15:00:00Z")
    assert before <= datetime.fromisoformat(reason.time.replace("Z", "+00:00")) <= after
    assert reason.describe() == f"since {reason.time}: app.START raised {reason.error}"


def test_a_long_error_is_cut() -> None:
    reason = ErrorReason.of("app.START", RuntimeError("x" * 10_000))
    assert len(reason.error) == MAX_ERROR
    assert reason.error.startswith("RuntimeError: xxx") and reason.error.endswith("…")


def test_a_reason_survives_json() -> None:
    odd = ErrorReason("app.ÉTAT", "KeyError: 'jöe\\udcff'", "2026-12-03T15:00:00Z")
    for reason in (REASON, odd):
        text = reason.to_json()
        assert text.isascii()
        assert ErrorReason.from_json(text) == reason


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "null",
        '"a string"',
        "[1, 2, 3]",
        "{}",
        '{"handler": "h", "error": "e"}',
        '{"handler": 1, "error": "e", "time": "t"}',
        "[" * 100_000,  # nested deeper than the parser recurses
    ],
)
def test_a_malformed_reason_reads_as_none(text: str) -> None:
    assert ErrorReason.from_json(text) is None
    store = MemoryStorage()
    store.set(reason_key("app"), "s@x.org", text or "X")
    store.set("app", "s@x.org", ERROR)
    assert read_reason(store, "app", "s@x.org") is None
    assert list_states(store) == [StateEntry("app", "s@x.org", ERROR, None)]


# -- recording and changing ---------------------------------------------------------------------


def test_record_error_writes_the_reason_before_error() -> None:
    store = Recording()
    record_error(store, "app", "s@x.org", REASON)
    assert store.sets == [
        (reason_key("app"), "s@x.org", REASON.to_json()),
        ("app", "s@x.org", ERROR),
    ]
    assert store.get("app", "s@x.org") == ERROR
    assert read_reason(store, "app", "s@x.org") == REASON


def test_no_reason_without_a_failure() -> None:
    store = MemoryStorage()
    store.set("app", "s@x.org", ERROR)  # set by hand, or by a version that kept no reasons
    assert read_reason(store, "app", "s@x.org") is None
    assert read_reason(store, "other", "s@x.org") is None


@pytest.mark.parametrize("state", [START, "POSTING"])
def test_changing_out_of_error_drops_the_reason(state: str) -> None:
    store = MemoryStorage()
    record_error(store, "app", "s@x.org", REASON)
    record_error(store, "app", "t@x.org", REASON)
    change_state(store, "app", "s@x.org", state)
    assert store.get("app", "s@x.org") == state
    assert read_reason(store, "app", "s@x.org") is None
    assert read_reason(store, "app", "t@x.org") == REASON  # another sender keeps its reason
    expected = [("app", "t@x.org", ERROR), (reason_key("app"), "t@x.org", REASON.to_json())]
    if state != START:
        expected.insert(0, ("app", "s@x.org", state))
    assert sorted(store.items()) == sorted(expected)


def test_changing_to_error_keeps_the_reason() -> None:
    store = MemoryStorage()
    record_error(store, "app", "s@x.org", REASON)
    change_state(store, "app", "s@x.org", ERROR)
    assert read_reason(store, "app", "s@x.org") == REASON


# -- listing ------------------------------------------------------------------------------------


@pytest.fixture
def populated() -> MemoryStorage:
    store = MemoryStorage()
    store.set("lists", "b@x.org", "POSTING")
    record_error(store, "lists", "a@x.org", REASON)
    store.set("lists", "c@x.org", ERROR)  # no reason kept
    other = ErrorReason("orders.START", "KeyError: 'sku'", "2026-12-04T08:30:00Z")
    record_error(store, "orders", "b@x.org", other)
    store.set("", "z@x.org", "EMPTY-KEY")
    store.set(reason_key("gone"), "a@x.org", REASON.to_json())  # a leftover, its key not ERROR
    return store


def test_list_states_sorts_hides_reason_keys_and_attaches_reasons(populated: MemoryStorage) -> None:
    assert list_states(populated) == [
        StateEntry("", "z@x.org", "EMPTY-KEY", None),
        StateEntry("lists", "a@x.org", ERROR, REASON),
        StateEntry("lists", "b@x.org", "POSTING", None),
        StateEntry("lists", "c@x.org", ERROR, None),
        StateEntry(
            "orders",
            "b@x.org",
            ERROR,
            ErrorReason("orders.START", "KeyError: 'sku'", "2026-12-04T08:30:00Z"),
        ),
    ]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"state": ERROR}, [("lists", "a@x.org"), ("lists", "c@x.org"), ("orders", "b@x.org")]),
        ({"sender": "b@x.org"}, [("lists", "b@x.org"), ("orders", "b@x.org")]),
        ({"key": "lists"}, [("lists", "a@x.org"), ("lists", "b@x.org"), ("lists", "c@x.org")]),
        ({"key": ""}, [("", "z@x.org")]),
        ({"state": ERROR, "sender": "b@x.org"}, [("orders", "b@x.org")]),
        ({"state": ERROR, "key": "lists", "sender": "c@x.org"}, [("lists", "c@x.org")]),
        ({"state": "POSTING", "key": "orders"}, []),
        ({"sender": "B@x.org"}, []),  # exact: the caller normalises addresses
        ({"key": reason_key("lists")}, []),  # reasons are never listed as states
    ],
)
def test_list_states_filters(
    populated: MemoryStorage, filters: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    assert [(entry.key, entry.sender) for entry in list_states(populated, **filters)] == expected


async def test_the_helpers_run_in_a_thread(tmp_path: Path) -> None:
    with ShelveStorage(tmp_path / "state.db") as store:
        await asyncio.to_thread(record_error, store, "app", "s@x.org", REASON)
        listed = await asyncio.to_thread(list_states, store, state=ERROR)
        assert listed == [StateEntry("app", "s@x.org", ERROR, REASON)]
        await asyncio.to_thread(change_state, store, "app", "s@x.org", START)
        assert await asyncio.to_thread(list_states, store) == []


def test_mailrouters_own_records_are_no_senders_state() -> None:
    """A pending confirmation (mailrouter.confirm) lives in the store, but is not a state."""
    from mailrouter.confirm import NAMESPACE

    store = MemoryStorage()
    store.set(NAMESPACE + "news-subscribe", "joe@example.org", '{"secret": "x"}')
    store.set("handlers.lists", "joe@example.org", "POSTING")
    assert [(e.key, e.state) for e in list_states(store)] == [("handlers.lists", "POSTING")]
