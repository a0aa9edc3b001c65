"""The journal: a durable record of every message received at DATA, and per-recipient done marks.

One entry per delivery id (``delivery_id(sender, data)``: an MTA's retries of a message share
it). At each reception ``Journal.begin(arrival)`` only reads: this reception's number (the
attempts recorded so far + 1) and the recipients whose handlers already finished, so that a
retry never runs them twice. The writes carry the arrival and that number: the server records
each recipient's ``Outcome`` (``Journal.record``) as soon as its handlers return, and the reply
with the other recipients' outcomes (``Journal.finish``); the first write of a delivery creates
the entry, or updates it for a newer reception. So an entry exists once something about the
message was written (a recipient's mark, or its reply): a message whose process died before any
write is journaled at its retry, as its first attempt. A mark protects the receptions that begin
after it is recorded: two receptions of one message at the same moment (a client retrying while
the first is still being delivered) both find the recipients not done yet, and may get the same
number. A done mark is never replaced by an outcome that is not done.

A recipient's status:

- ``delivered``: its handlers finished (``Outcome.handlers`` names them); done.
- ``queued``: it went to the undeliverable queue (``queue_key``, ``reason``); done.
- ``refused``: it was refused with a 5xx reply (``reply``); a retry would route it again.
- ``deferred``: it got a 4xx reply: the client will try again.
- ``pending``: spool mode: accepted and spooled, not routed yet (``Attempt.pending``: a retry
  must not spool it again).
- ``received`` (shown, never recorded): nothing recorded for it yet.

A message's status, from its recipients', in this order:

- ``deferred``: any recipient is deferred (the client is expected back);
- ``pending``: any is pending;
- ``received``: any has no outcome yet: being delivered now, or its process died meanwhile;
- ``delivered``: all delivered; ``refused``: all refused;
- ``partial``: some refused, the others delivered or queued;
- ``queued``: all delivered or queued, at least one queued (a copy awaits in the queue).

``open_journal(url)``: ``""`` is no journal (None); ``sqlite://PATH`` (``journal.sqlite``,
``sqlite:///abs`` absolute, else relative to the current folder); ``postgresql://...`` or
``postgres://...`` (``journal.postgres``, the ``mailrouter[postgres]`` extra). Every error of the
database is a ``JournalError``, a ``StoreError``: the server answers 451 while it lasts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from mailrouter.journal.backend import JournalError
from mailrouter.journal.base import AmbiguousIdError, Journal
from mailrouter.journal.records import (
    MESSAGE_STATUSES,
    RECIPIENT_STATUSES,
    Arrival,
    Attempt,
    Entry,
    MessageStatus,
    Outcome,
    RecipientRecord,
    RecipientStatus,
    Write,
    message_status,
)
from mailrouter.message import delivery_id
from mailrouter.state.shared import redact

__all__ = [
    "MESSAGE_STATUSES",
    "RECIPIENT_STATUSES",
    "AmbiguousIdError",
    "Arrival",
    "Attempt",
    "Entry",
    "Journal",
    "JournalError",
    "MessageStatus",
    "Outcome",
    "RecipientRecord",
    "RecipientStatus",
    "Write",
    "delivery_id",
    "message_status",
    "open_journal",
]

# scheme -> "module:function" opening a journal of that URL; imported when a URL names it.
BACKENDS = {
    "sqlite": "mailrouter.journal.sqlite:open_url",
    "postgresql": "mailrouter.journal.postgres:open_url",
    "postgres": "mailrouter.journal.postgres:open_url",
}
_PACKAGES = {"psycopg", "psycopg_pool"}  # what the postgres extra installs


def open_journal(url: str) -> Journal | None:
    """The journal named by ``url``; None for ``""`` (the journal is off)."""
    if not url.strip():
        return None
    scheme, found, _ = url.partition("://")
    target = BACKENDS.get(scheme.lower()) if found else None
    if target is None:
        raise JournalError(
            f"unknown journal URL {redact(url)!r}: use sqlite://PATH, postgresql://USER@HOST/DB,"
            ' or "" to turn the journal off'
        )
    module, _, name = target.partition(":")
    try:
        opener = cast(Callable[[str], Journal], getattr(importlib.import_module(module), name))
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _PACKAGES:
            raise
        raise JournalError(
            f"{scheme}:// journals need the {exc.name!r} package:"
            " pip install 'mailrouter[postgres]'"
        ) from exc
    return opener(url)
