"""List membership: one JSON file per list, replaced atomically, edited under a per-list lock.

A list file holds the confirmed ``members`` and the members' hard ``bounces`` (address ->
count). Subscriptions waiting for their confirmation are ``mailrouter.confirm``'s, in a SQLite
store beside the list files (``confirmations.db``): one-use secrets that expire after
``CONFIRM_TTL`` seconds and are good only from the address they were sent to. Addresses are
the normalised envelope senders. Handlers run in executor threads, so every read-modify-write
of a list holds that list's lock.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mailrouter.confirm import DEFAULT_TTL, Confirmations
from mailrouter.state import open_store

from .maildir import write_durably

#: Where list files live (env ``MAILROUTER_LISTS_DIR``); relative to the working directory.
LISTS_DIR = Path(os.environ.get("MAILROUTER_LISTS_DIR", "run/lists"))
#: A list name: the local part of its address, without ``-`` (that separates the commands).
#: ASCII only, even though routes match case-insensitively (``[a-z]`` then matches a dotless i).
NAME = r"(?a:[a-z0-9][a-z0-9._]{0,63})"
#: Seconds a subscription request waits for its confirmation.
CONFIRM_TTL = DEFAULT_TTL

_NAME = re.compile(NAME)
_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}

Status = Literal["member", "pending"]


@dataclass
class Roster:
    """The content of one list file."""

    members: set[str] = field(default_factory=set)
    bounces: dict[str, int] = field(default_factory=dict)


def path(name: str) -> Path:
    """The file of list ``name``."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad list name {name!r}")
    return LISTS_DIR / f"{name}.json"


def read(name: str) -> Roster:
    """The current content of list ``name`` (empty if it has no file yet)."""
    try:
        raw = json.loads(path(name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Roster()
    return Roster(set(raw.get("members", [])), dict(raw.get("bounces", {})))


def status(name: str, address: str) -> Status | None:
    """Whether ``address`` is a member of list ``name``, waiting to confirm, or neither."""
    if address in read(name).members:
        return "member"
    with _confirmations() as confirmations:
        return "pending" if confirmations.pending(name, address) else None


def request(name: str, address: str) -> str:
    """Record a subscription request; the confirmation token (the pending one, if any)."""
    with _confirmations() as confirmations:
        return confirmations.create(name, address).secret


def confirm(name: str, address: str, token: str) -> bool:
    """Make ``address`` a member if ``token`` is its pending token (once, before it expired);
    whether it was."""
    with _editing(name) as roster, _confirmations() as confirmations:
        if confirmations.verify(name, address, token) is None:
            return False
        roster.members.add(address)
        return True


def remove(name: str, address: str) -> bool:
    """Remove ``address`` (member or pending) from list ``name``; whether it was there."""
    with _editing(name) as roster, _confirmations() as confirmations:
        pending = confirmations.cancel(name, address) is not None
        return _drop(roster, address) or pending


def bounced(name: str, address: str, limit: int) -> int:
    """Count a hard bounce of member ``address`` of list ``name``, removing it at the
    ``limit``-th; the count (0 for an address that is no member)."""
    with _editing(name) as roster:
        if address not in roster.members:
            return 0
        count = roster.bounces[address] = roster.bounces.get(address, 0) + 1
        if count >= limit:
            _drop(roster, address)
        return count


def _drop(roster: Roster, address: str) -> bool:
    """Take member ``address`` off ``roster``, its bounce count too; whether it was one."""
    found = address in roster.members
    roster.members.discard(address)
    roster.bounces.pop(address, None)
    return found


@contextmanager
def _confirmations() -> Iterator[Confirmations]:
    """The confirmation engine over the store beside the list files, closed after."""
    LISTS_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)  # secrets: ours only
    store = open_store(f"sqlite://{LISTS_DIR / 'confirmations.db'}")
    try:
        yield Confirmations(store, ttl=CONFIRM_TTL)
    finally:
        store.close()


@contextmanager
def _editing(name: str) -> Iterator[Roster]:
    """Hold the list's lock, yield its roster, and write it back if it changed."""
    with _guard:
        lock = _locks.setdefault(name, threading.Lock())
    with lock:
        roster = read(name)
        before = _dump(roster)
        yield roster
        after = _dump(roster)
        if after != before:
            _write(path(name), after)


def _dump(roster: Roster) -> str:
    return json.dumps(
        {"members": sorted(roster.members), "bounces": roster.bounces},
        indent=1,
        sort_keys=True,
    )


def _write(target: Path, text: str) -> None:
    """Replace ``target`` with ``text``: temporary file, fsync, rename, fsync the folder."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    write_durably(fd, Path(tmp), target, (text + "\n").encode("utf-8"))
