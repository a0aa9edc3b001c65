"""List membership: one JSON file per list, replaced atomically, edited under a per-list lock.

A list file holds the confirmed ``members``, the ``pending`` subscriptions (address ->
confirmation token) and the members' hard ``bounces`` (address -> count). Addresses are the
normalised envelope senders. Handlers run in executor threads, so every read-modify-write of a
list holds that list's lock.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .maildir import write_durably

#: Where list files live (env ``MAILROUTER_LISTS_DIR``); relative to the working directory.
LISTS_DIR = Path(os.environ.get("MAILROUTER_LISTS_DIR", "run/lists"))
#: A list name: the local part of its address, without ``-`` (that separates the commands).
#: ASCII only, even though routes match case-insensitively (``[a-z]`` then matches a dotless i).
NAME = r"(?a:[a-z0-9][a-z0-9._]{0,63})"

_NAME = re.compile(NAME)
_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}

Status = Literal["member", "pending"]


@dataclass
class Roster:
    """The content of one list file."""

    members: set[str] = field(default_factory=set)
    pending: dict[str, str] = field(default_factory=dict)
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
    return Roster(
        set(raw.get("members", [])), dict(raw.get("pending", {})), dict(raw.get("bounces", {}))
    )


def status(name: str, address: str) -> Status | None:
    """Whether ``address`` is a member of list ``name``, waiting to confirm, or neither."""
    roster = read(name)
    if address in roster.members:
        return "member"
    return "pending" if address in roster.pending else None


def request(name: str, address: str) -> str:
    """Record a subscription request; the confirmation token (the pending one, if any)."""
    with _editing(name) as roster:
        return roster.pending.setdefault(address, secrets.token_hex(16))


def confirm(name: str, address: str, token: str) -> bool:
    """Make ``address`` a member if ``token`` is its pending token; whether it was."""
    with _editing(name) as roster:
        expected = roster.pending.get(address)
        if expected is None or not secrets.compare_digest(expected.encode(), token.encode()):
            return False
        del roster.pending[address]
        roster.members.add(address)
        return True


def remove(name: str, address: str) -> bool:
    """Remove ``address`` (member or pending) from list ``name``; whether it was there."""
    with _editing(name) as roster:
        return _drop(roster, address)


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
    """Take ``address`` off ``roster``, its bounce count too; whether it was a member or
    pending."""
    found = address in roster.members or address in roster.pending
    roster.members.discard(address)
    roster.pending.pop(address, None)
    roster.bounces.pop(address, None)
    return found


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
        {"members": sorted(roster.members), "pending": roster.pending, "bounces": roster.bounces},
        indent=1,
        sort_keys=True,
    )


def _write(target: Path, text: str) -> None:
    """Replace ``target`` with ``text``: temporary file, fsync, rename, fsync the folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    write_durably(fd, Path(tmp), target, (text + "\n").encode("utf-8"))
