"""Confirmations: "reply to confirm" flows, with a secret per pending action, kept in a state store.

A handler asks an address to confirm an action (``send``: a secret is made and kept, and a
message carrying it, usually in a reply address such as ``news-confirm-SECRET@host``, goes
out through the relay). The reply comes back to a route that captures the secret, and
``verify`` checks it: the right secret, for that action, from the address it was sent to,
before it expired. A verified secret is used up; ``cancel`` drops one.

The pending actions live in any state store (``memory://``, ``shelve://``, ``sqlite://``,
``redis://``, ``postgresql://`` or your own), through the plain ``StateStorage`` protocol: each
is a JSON record stored as the "state" of its address under the reserved key
``mailrouter.confirm:<target>``, so no store needs a change, and a store shared by several
instances shares the confirmations too. ``PendingStore`` is the smaller protocol the engine
uses, for keeping them elsewhere (``compat.salmon.confirm`` keeps them in Salmon's storage).

Secrets are 160 random bits in lower-case base32 (``[a-z2-7]``, 32 characters): the secret
travels in an address, whose case MTAs and people may change and routes ignore, so it is
compared without case (in constant time). Every call blocks on the store: a plain handler
calls it directly; from a coroutine, use ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailrouter.message import normalize_address
from mailrouter.outbound import sender as outbound
from mailrouter.outbound.sender import Sendable, Sender
from mailrouter.state.base import START, StateStorage, listable
from mailrouter.state.entries import RESERVED

NAMESPACE = f"{RESERVED}confirm:"  # the state key of target T is NAMESPACE + T (hidden from
# state listings, as every RESERVED key is)
DEFAULT_TTL = 3 * 86400.0  # seconds a confirmation waits for its reply (Mailman's three days)
_SECRET_BYTES = 20


def new_secret() -> str:
    """160 random bits as 32 lower-case base32 characters."""
    return base64.b32encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii").lower()


def _same(expected: str, given: str) -> bool:
    """Whether ``given`` is the secret ``expected``, case aside, in constant time."""
    return hmac.compare_digest(expected.lower().encode(), given.strip().lower().encode())


@dataclass(frozen=True)
class Pending:
    """An action waiting for ``address`` to confirm it: ``target`` names the action (for
    example ``news-subscribe``), ``data`` is what the action needs then (JSON values)."""

    target: str
    address: str
    secret: str
    expires: float | None  # epoch seconds; None: never
    data: Mapping[str, Any] = field(default_factory=dict)

    def expired(self, now: float) -> bool:
        """Whether the confirmation is too late at ``now``."""
        return self.expires is not None and now >= self.expires

    def to_json(self) -> str:
        """The record as kept in a state store (the target and address are its key)."""
        return json.dumps({"secret": self.secret, "expires": self.expires, "data": self.data})

    @classmethod
    def from_json(cls, target: str, address: str, text: str) -> Pending | None:
        """The record ``text`` of (target, address); None when it is not one (never raises)."""
        try:
            record = json.loads(text)
            secret, expires, data = record["secret"], record["expires"], record["data"]
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
        if not isinstance(secret, str) or not isinstance(data, dict):
            return None
        if expires is not None and not isinstance(expires, int | float):
            return None
        return cls(target, address, secret, expires, data)


class PendingStore(Protocol):
    """Where pending confirmations are kept, one per (target, address)."""

    def read(self, target: str, address: str) -> Pending | None:
        """The pending confirmation of (target, address), or None."""

    def write(self, pending: Pending) -> None:
        """Keep ``pending``, replacing the one of its (target, address)."""

    def remove(self, target: str, address: str) -> None:
        """Drop the pending confirmation of (target, address), if any."""

    def lock(self, target: str, address: str) -> AbstractContextManager[None]:
        """Serialise the changes to (target, address)."""

    def purge(self, now: float) -> int:
        """Drop the confirmations expired at ``now``; how many."""


class StatePendingStore(PendingStore):
    """Pending confirmations as JSON "states" under ``NAMESPACE + target`` in a state store."""

    def __init__(self, store: StateStorage) -> None:
        self.store = store

    def read(self, target: str, address: str) -> Pending | None:
        text = self.store.get(NAMESPACE + target, address)
        return None if text == START else Pending.from_json(target, address, text)

    def write(self, pending: Pending) -> None:
        self.store.set(NAMESPACE + pending.target, pending.address, pending.to_json())

    def remove(self, target: str, address: str) -> None:
        self.store.set(NAMESPACE + target, address, START)

    def lock(self, target: str, address: str) -> AbstractContextManager[None]:
        return self.store.lock(NAMESPACE + target, address)

    def purge(self, now: float) -> int:
        """Drop expired (and unreadable) records; a StoreError if the store cannot list."""
        dropped = 0
        for key, address, _ in list(listable(self.store).items()):
            if not key.startswith(NAMESPACE):
                continue
            target = key.removeprefix(NAMESPACE)
            with self.lock(target, address):
                found = self.read(target, address)
                if found is None or found.expired(now):
                    self.remove(target, address)
                    dropped += 1
        return dropped


class Confirmations:
    """The confirmation engine, over a state store (``store``) or a ``PendingStore``
    (``records``). A confirmation waits ``ttl`` seconds (None: for ever) by ``clock``; its
    secret comes from ``make_secret``."""

    def __init__(
        self,
        store: StateStorage | None = None,
        *,
        records: PendingStore | None = None,
        ttl: float | None = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
        make_secret: Callable[[], str] = new_secret,
    ) -> None:
        if records is None:
            if store is None:
                raise TypeError("Confirmations needs a state store, or a PendingStore (records=)")
            records = StatePendingStore(store)
        elif store is not None:
            raise TypeError("Confirmations takes a state store or a PendingStore, not both")
        self.records = records
        self.ttl = ttl
        self.clock = clock
        self.make_secret = make_secret

    def create(self, target: str, address: str, data: Mapping[str, Any] | None = None) -> Pending:
        """Keep a confirmation of ``target`` for ``address`` and return it. Asking again
        before it expired keeps its secret (a confirmation still on its way stays valid) and
        starts its time anew."""
        with self._locked(target, address) as address:
            pending = self._renewed(target, address, data)
            self.records.write(pending)
            return pending

    def send(
        self,
        target: str,
        address: str,
        compose: Callable[[Pending], Sendable | None],
        *,
        data: Mapping[str, Any] | None = None,
        relay: Sender | None = None,
    ) -> Pending | None:
        """``create`` a confirmation and send ``compose(pending)`` (the message asking for it,
        with the secret in it) through ``relay`` (default: this context's). When ``compose``
        returns None (``reply()`` does for automatic mail) nothing is kept or sent: None.

        ``compose`` runs outside the store's lock (it may use this engine), so two sends to one
        address at the same moment may leave only the later one's secret valid.
        """
        with self._locked(target, address) as address:
            pending = self._renewed(target, address, data)
        message = compose(pending)
        if message is None:
            return None
        with self._locked(target, address):
            self.records.write(pending)  # before sending: a quick reply finds it
        (relay or outbound.current()).send(message)
        return pending

    def verify(self, target: str, address: str, secret: str) -> Pending | None:
        """The confirmation of ``target``, used up, when ``secret`` is its secret, ``address``
        (the replying sender) the address it was sent to, and it has not expired; else None."""
        with self._locked(target, address) as address:
            pending = self._live(target, address)
            if pending is None or not _same(pending.secret, secret):
                return None
            self.records.remove(target, address)
            return pending

    def cancel(self, target: str, address: str, secret: str | None = None) -> Pending | None:
        """Drop the confirmation of ``target`` for ``address`` (only if its secret is
        ``secret``, when given) and return it; None when there was none to drop."""
        with self._locked(target, address) as address:
            pending = self._live(target, address)
            if pending is None or (secret is not None and not _same(pending.secret, secret)):
                return None
            self.records.remove(target, address)
            return pending

    def pending(self, target: str, address: str) -> Pending | None:
        """The live confirmation of ``target`` for ``address``, left in place; or None."""
        with self._locked(target, address) as address:
            return self._live(target, address)

    def purge(self) -> int:
        """Drop every expired confirmation (the others expire at their ``verify``); how many."""
        return self.records.purge(self.clock())

    @contextmanager
    def _locked(self, target: str, address: str) -> Iterator[str]:
        """Hold the lock of (target, normalised address); yield the normalised address."""
        if not target:
            raise ValueError("a confirmation needs a target")
        bare = normalize_address(address)
        if "@" not in bare:
            raise ValueError(f"not an address to confirm: {address!r}")
        with self.records.lock(target, bare):
            yield bare

    def _live(self, target: str, address: str) -> Pending | None:
        """The stored confirmation unless it expired (an expired one is dropped)."""
        pending = self.records.read(target, address)
        if pending is not None and pending.expired(self.clock()):
            self.records.remove(target, address)
            return None
        return pending

    def _renewed(self, target: str, address: str, data: Mapping[str, Any] | None) -> Pending:
        """A confirmation for now: the live one's secret, or a new one, and a new expiry."""
        live = self._live(target, address)
        secret = live.secret if live is not None else self.make_secret()
        expires = None if self.ttl is None else self.clock() + self.ttl
        return Pending(target, address, secret, expires, dict(data or {}))
