"""The states as operators see them, and why a sender is in ERROR.

When a stateful handler fails, the router puts its module into ERROR for the sender and keeps
why (``ErrorReason``: the handler, the error, the time) in the same store, as the JSON "state"
of that sender under the reserved key ``<key>#error`` (``reason_key``). No module name has a
``#``, and a state key generator must not make keys ending in ``#error``; so any store, a custom
one too, keeps reasons without a change to ``StateStorage``. ``list_states`` hides these keys,
and those of mailrouter's own records kept in a state store (``RESERVED``: the pending
confirmations of ``mailrouter.confirm``, say), which are no sender's state.

Every function here blocks on the store: from the event loop, call it in a thread.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from mailrouter.state.base import ERROR, START, StateStorage, listable

REASON_SUFFIX = "#error"
RESERVED = "mailrouter."  # the start of the keys of mailrouter's own records in a store
MAX_ERROR = 500  # characters of the error text that are kept


@dataclass(frozen=True)
class ErrorReason:
    """Why a sender is in ERROR: the handler's qualname, ``TypeName: message``, UTC ISO 8601."""

    handler: str
    error: str
    time: str

    @classmethod
    def of(cls, handler: str, exc: BaseException) -> ErrorReason:
        """The reason ``handler`` failed now with ``exc``: its error on one bounded line, any
        control character escaped (a message may quote what a client sent)."""
        error = " ".join(f"{type(exc).__name__}: {exc}".split())
        error = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in error)
        if len(error) > MAX_ERROR:
            error = error[: MAX_ERROR - 1] + "…"
        return cls(handler, error, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def to_json(self) -> str:
        """The reason as stored (ASCII JSON, which any store can hold)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ErrorReason | None:
        """The reason stored as ``text``; None when it is not one (never raises)."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict):
            return None
        handler, error, time = data.get("handler"), data.get("error"), data.get("time")
        if not (isinstance(handler, str) and isinstance(error, str) and isinstance(time, str)):
            return None
        return cls(handler, error, time)

    def describe(self) -> str:
        """``since <time>: <handler> raised <error>``, for operators."""
        return f"since {self.time}: {self.handler} raised {self.error}"


@dataclass(frozen=True)
class StateEntry:
    """One sender's stored state under one key, with why when it is ERROR (if known)."""

    key: str
    sender: str
    state: str
    reason: ErrorReason | None


def reason_key(key: str) -> str:
    """The reserved key the ERROR reasons of state key ``key`` are stored under."""
    return key + REASON_SUFFIX


def record_error(store: StateStorage, key: str, sender: str, reason: ErrorReason) -> None:
    """Put ``sender`` into ERROR under ``key``, the reason written first (so never missing)."""
    store.set(reason_key(key), sender, reason.to_json())
    store.set(key, sender, ERROR)


def change_state(store: StateStorage, key: str, sender: str, state: str) -> None:
    """Set ``sender``'s state under ``key``; a state other than ERROR drops the stored reason.

    Takes no lock: the caller holds ``store.lock(key, sender)`` if transitions may race.
    """
    if state != ERROR:
        store.set(reason_key(key), sender, START)  # first: a stale reason is never shown
    store.set(key, sender, state)


def read_reason(store: StateStorage, key: str, sender: str) -> ErrorReason | None:
    """Why ``sender`` went into ERROR under ``key``, if a reason is stored."""
    stored = store.get(reason_key(key), sender)
    return None if stored == START else ErrorReason.from_json(stored)


def list_states(
    store: StateStorage,
    *,
    state: str | None = None,
    sender: str | None = None,
    key: str | None = None,
) -> list[StateEntry]:
    """The stored states sorted by (key, sender), those given by ``state``, ``sender`` and
    ``key`` only (exact matches); ERROR entries carry their reasons. A StoreError says when the
    store cannot list (see ``listable``)."""
    states: dict[tuple[str, str], str] = {}
    reasons: dict[tuple[str, str], str] = {}
    for found_key, found_sender, found_state in listable(store).items():
        if found_key.endswith(REASON_SUFFIX):
            reasons[found_key.removesuffix(REASON_SUFFIX), found_sender] = found_state
        elif not found_key.startswith(RESERVED):
            states[found_key, found_sender] = found_state
    entries = []
    for (found_key, found_sender), found_state in sorted(states.items()):
        if (
            state not in (None, found_state)
            or sender not in (None, found_sender)
            or key not in (None, found_key)
        ):
            continue
        stored = reasons.get((found_key, found_sender)) if found_state == ERROR else None
        reason = None if stored is None else ErrorReason.from_json(stored)
        entries.append(StateEntry(found_key, found_sender, found_state, reason))
    return entries
