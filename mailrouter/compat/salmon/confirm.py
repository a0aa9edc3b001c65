"""Salmon's ``confirm`` module over mailrouter's confirmation engine (``mailrouter.confirm``).

``ConfirmationEngine(pending_queue, storage)`` keeps the message that asked for an action in a
queue and its secret in ``storage``: a ``ConfirmationStorage``, or a class of your own with
Salmon's ``get``, ``store``, ``delete`` and ``clear``. Checking a reply is mailrouter's: the
secret compared in constant time, used once, valid only from the address it was sent to.
As in Salmon, these confirmations do not expire; the reply address is
``TARGET-confirm-SECRET@host``.
"""

from __future__ import annotations

import shelve
from collections.abc import MutableMapping
from contextlib import AbstractContextManager
from typing import Any

from mailrouter.compat.salmon import view
from mailrouter.compat.salmon.mail import MailRequest
from mailrouter.compat.salmon.queue import Queue
from mailrouter.confirm import Confirmations, Pending, PendingStore, new_secret
from mailrouter.state.base import KeyedLocks

__all__ = ["ConfirmationEngine", "ConfirmationStorage"]


class ConfirmationStorage:
    """Salmon's storage of pending confirmations: ``(secret, pending message id)`` per target
    and address, in ``db`` (a dict unless given; a ``shelve`` shelf keeps them across restarts,
    under the key as text, since a shelf's keys are text)."""

    def __init__(self, db: MutableMapping[Any, tuple[str, str]] | None = None) -> None:
        self.confirmations = {} if db is None else db

    def clear(self) -> None:
        """Forget every pending confirmation."""
        self.confirmations.clear()

    def key(self, target: str, from_address: str) -> bytes:
        """The key of (target, address) in ``confirmations``: ``b"target:address"``."""
        return f"{target}:{from_address}".encode()

    def _slot(self, target: str, from_address: str) -> bytes | str:
        """``key()``, as text for a shelf."""
        key = self.key(target, from_address)
        return key.decode() if isinstance(self.confirmations, shelve.Shelf) else key

    def get(self, target: str, from_address: str) -> tuple[str | None, str | None]:
        """``(expected secret, pending message id)``, or ``(None, None)``."""
        return self.confirmations.get(self._slot(target, from_address), (None, None))

    def delete(self, target: str, from_address: str) -> None:
        """Forget the confirmation of (target, address), if any."""
        self.confirmations.pop(self._slot(target, from_address), None)

    def store(
        self, target: str, from_address: str, expected_secret: str, pending_message_id: str
    ) -> None:
        """Keep the confirmation of (target, address), replacing an earlier one."""
        slot = self._slot(target, from_address)
        self.confirmations[slot] = (expected_secret, pending_message_id)


class _SalmonRecords(PendingStore):
    """mailrouter's pending confirmations in a Salmon storage: the pending message's queue
    key is the confirmation's ``data["pending_id"]``; nothing expires."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self._locks = KeyedLocks()

    def read(self, target: str, address: str) -> Pending | None:
        secret, pending_id = self.storage.get(target, address)
        if secret is None:
            return None
        return Pending(target, address, secret, None, {"pending_id": pending_id})

    def write(self, pending: Pending) -> None:
        self.storage.store(
            pending.target, pending.address, pending.secret, pending.data["pending_id"]
        )

    def remove(self, target: str, address: str) -> None:
        self.storage.delete(target, address)

    def lock(self, target: str, address: str) -> AbstractContextManager[None]:
        return self._locks.hold(target, address)

    def purge(self, now: float) -> int:
        return 0


class ConfirmationEngine:
    """Sends confirmations and verifies the replies: ``send``, ``verify``, ``cancel``; the
    messages waiting for them are in the ``pending`` queue."""

    def __init__(self, pending_queue: str, storage: Any) -> None:
        self.pending = Queue(pending_queue)
        self.storage = storage
        self.confirmations = Confirmations(
            records=_SalmonRecords(storage), ttl=None, make_secret=self.make_random_secret
        )

    def get_pending(self, pending_id: str) -> MailRequest | None:
        """The pending message ``pending_id``."""
        return self.pending.get(pending_id)

    def push_pending(self, message: Any) -> str:
        """Queue ``message`` as pending; its id."""
        return self.pending.push(message)

    def delete_pending(self, pending_id: str) -> None:
        """Remove the pending message ``pending_id``."""
        self.pending.remove(pending_id)

    def make_random_secret(self) -> str:
        """A new secret (mailrouter's: 160 random bits, lower-case base32)."""
        return new_secret()

    def register(self, target: str, message: Any) -> str:
        """Queue ``message`` and keep a confirmation of ``target`` for its sender; the local
        part of the address to confirm at, ``target-confirm-SECRET``."""
        pending_id = self.push_pending(message)
        pending = self.confirmations.create(target, message.From, {"pending_id": pending_id})
        return f"{target}-confirm-{pending.secret}"

    def verify(self, target: str, from_address: str, expect_secret: str) -> MailRequest | None:
        """The pending message, when ``from_address`` confirms ``target`` with its secret
        (which is then used up); else None. The message stays queued (``delete_pending``)."""
        if not expect_secret:
            return None
        pending = self.confirmations.verify(target, from_address, expect_secret)
        return None if pending is None else self.get_pending(pending.data["pending_id"])

    def cancel(self, target: str, from_address: str, expect_secret: str) -> None:
        """Drop the confirmation and its pending message, when ``expect_secret`` is its secret."""
        if not expect_secret:
            return
        pending = self.confirmations.cancel(target, from_address, expect_secret)
        if pending is not None:
            self.delete_pending(pending.data["pending_id"])

    def send(
        self, relay: Any, target: str, message: Any, template: str, vars: dict[str, Any]
    ) -> None:
        """Ask the sender of ``message`` to confirm ``target``: the message waits in the
        pending queue, and ``template`` (rendered with ``vars``, to which ``confirm_address``
        is added) goes to its From through ``relay``, from and with Reply-To
        ``confirm_address@host`` (``vars["host"]``)."""
        vars["confirm_address"] = self.register(target, message)
        address = f"{vars['confirm_address']}@{vars['host']}"
        response = view.respond(
            vars, template, To=message["from"], From=address, Subject="Confirmation required"
        )
        response["Reply-To"] = address
        relay.deliver(response)

    def clear(self) -> None:
        """Empty the pending queue and the storage (for tests)."""
        self.pending.clear()
        self.storage.clear()
