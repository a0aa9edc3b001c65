"""The journal's messages as the control socket gives them: a list, one entry, its bytes, and
the activity of the last hour.

Every result is a plain JSON value (``Entry.to_json`` and a few fields more). A message's bytes
come from the copy kept while the console was on (``runtime.copies``), else from the
undeliverable queue when a recipient of it is still waiting there; base64 in JSON.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from mailrouter.errors import MailRouterError
from mailrouter.journal import MESSAGE_STATUSES, Entry, Journal, MessageStatus
from mailrouter.queue import Queue
from mailrouter.runtime.copies import MessageCopies

ACTIVITY_MINUTES = 60
LIST_LIMIT = 500  # the most entries one list returns


class Messages:
    """The journal (None: it is off), the kept copies and the undeliverable queue."""

    def __init__(self, journal: Journal | None, copies: MessageCopies | None, queue: Queue) -> None:
        self.journal = journal
        self.copies = copies
        self.queue = queue

    def _open(self) -> Journal:
        if self.journal is None:
            raise MailRouterError('the journal is off (journal_url = ""): no messages are kept')
        return self.journal

    async def list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Entries newest first: ``status``, ``sender``, ``recipient``, ``since`` and ``until``
        (epoch seconds) filter, ``limit`` bounds (at most ``LIST_LIMIT``)."""
        journal = self._open()
        status = args.get("status") or None
        if status is not None and status not in MESSAGE_STATUSES:
            known = ", ".join(MESSAGE_STATUSES)
            raise MailRouterError(f"unknown status {status!r} (known: {known})")
        recipient = args.get("recipient") or None
        limit = min(int(args.get("limit") or 50), LIST_LIMIT)
        found = await asyncio.to_thread(
            journal.entries,
            status=status,
            sender=args.get("sender"),
            recipient=recipient,
            since=_seconds(args.get("since")),
            until=_seconds(args.get("until")),
            limit=limit,
        )
        return [entry.to_json() for entry in found]

    async def show(self, args: dict[str, Any]) -> dict[str, Any]:
        """One entry by id (or unique prefix), with ``kept``: whether its bytes can be read."""
        entry = await self._entry(str(args["id"]))
        shown = entry.to_json()
        shown["kept"] = await asyncio.to_thread(self._bytes, entry) is not None
        return shown

    async def raw(self, args: dict[str, Any]) -> dict[str, Any]:
        """The bytes of one message, base64 (``data``: None when they were not kept)."""
        entry = await self._entry(str(args["id"]))
        data = await asyncio.to_thread(self._bytes, entry)
        encoded = None if data is None else base64.b64encode(data).decode("ascii")
        return {"id": entry.id, "data": encoded}

    async def _entry(self, ident: str) -> Entry:
        entry = await asyncio.to_thread(self._open().get, ident)
        if entry is None:
            raise MailRouterError(f"no message {ident!r} in the journal")
        return entry

    def _bytes(self, entry: Entry) -> bytes | None:
        """The copy kept, else the undeliverable queue's entry of it, if still there."""
        data = None if self.copies is None else self.copies.read(entry.id)
        if data is not None:
            return data
        for key in dict.fromkeys(r.outcome.queue_key for r in entry.outcomes if r.outcome):
            if key:
                try:
                    return self.queue.read(key).data
                except (KeyError, MailRouterError):
                    continue
        return None

    async def activity(self, args: dict[str, Any]) -> dict[str, Any]:
        """Messages per minute by status over the last hour: ``minutes`` (each minute's start,
        epoch seconds, oldest first) and ``counts`` (status -> one count per minute)."""
        journal = self._open()
        now = float(args.get("now") or time.time())
        first = (now // 60 - (ACTIVITY_MINUTES - 1)) * 60
        found = await asyncio.to_thread(journal.statuses, first, now)
        counts: dict[MessageStatus, list[int]] = {
            status: [0] * ACTIVITY_MINUTES for status in MESSAGE_STATUSES
        }
        for received_at, status in found:
            minute = int((received_at - first) // 60)
            if 0 <= minute < ACTIVITY_MINUTES:
                counts[status][minute] += 1
        return {
            "minutes": [first + 60 * i for i in range(ACTIVITY_MINUTES)],
            "counts": counts,
            "total": len(found),
        }


def _seconds(value: Any) -> float | None:
    """An epoch-seconds argument (None, "" or absent: no bound)."""
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MailRouterError(f"{value!r} is not a time in epoch seconds") from None
