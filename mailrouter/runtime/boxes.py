"""The maildirs an operator looks into, as the control socket gives them: the undeliverable
queue, the relay's outbox and its failed maildir (list, show one, remove one).

Results are plain JSON values: an entry's envelope, its reasons (for the outbox, each
recipient's attempts, next attempt and last reply) and, for ``show``, its bytes in base64.
"""

from __future__ import annotations

import base64
from typing import Any, Literal, get_args

from mailrouter.config import Settings
from mailrouter.errors import MailRouterError
from mailrouter.journal.records import main_headers
from mailrouter.outbound.outbox import replies_of, schedule_of
from mailrouter.queue import Queue, QueueEntry

BoxName = Literal["undeliverable", "outbox", "failed"]
BOX_NAMES: tuple[BoxName, ...] = get_args(BoxName)
LABELS: dict[BoxName, str] = {
    "undeliverable": "the undeliverable queue",
    "outbox": "the outbox",
    "failed": "the failed maildir",
}


def box_name(value: Any) -> BoxName:
    """``value`` checked to name a box (default: the undeliverable queue)."""
    name = value or "undeliverable"
    for known in BOX_NAMES:
        if name == known:
            return known
    raise MailRouterError(f"unknown box {name!r} (known: {', '.join(BOX_NAMES)})")


def open_box(settings: Settings, name: BoxName) -> Queue:
    """The project's maildir called ``name``."""
    return Queue(settings.path(getattr(settings, name)))


def entry_json(name: BoxName, entry: QueueEntry) -> dict[str, Any]:
    """An entry's envelope, main headers and per-recipient reasons (outbox: its schedule)."""
    peer = entry.message.peer
    message_id, headers = main_headers(entry.data)
    shown: dict[str, Any] = {
        "key": entry.key,
        "queued_at": entry.queued_at.timestamp(),
        "sender": entry.message.sender,
        "recipients": list(entry.message.recipients),
        "peer": " ".join(map(str, peer)) if isinstance(peer, tuple) else str(peer or ""),
        "size": len(entry.data),
        "message_id": message_id,
        "headers": headers,
        "reasons": dict(entry.reasons),
    }
    if name == "outbox":
        schedule = schedule_of(entry)
        shown["attempts"], shown["next_attempt"] = schedule.attempts, schedule.next
        shown["replies"] = {
            rcpt: {"attempts": each.attempts, "next_attempt": each.next, "reply": reply}
            for rcpt, (each, reply) in replies_of(entry).items()
        }
    return shown


def list_box(settings: Settings, name: BoxName) -> list[dict[str, Any]]:
    """Every entry of a box, oldest first; one that cannot be read says why (``error``)."""
    queue = open_box(settings, name)
    found: list[dict[str, Any]] = []
    for key in queue.keys():  # noqa: SIM118 (a Queue is not a mapping)
        try:
            found.append(entry_json(name, queue.read(key)))
        except KeyError:
            continue  # removed meanwhile
        except MailRouterError as exc:
            found.append({"key": key, "error": str(exc)})
    return found


def show_entry(settings: Settings, name: BoxName, key: str) -> dict[str, Any]:
    """One entry with its bytes (``data``, base64)."""
    try:
        entry = open_box(settings, name).read(key)
    except KeyError:
        raise MailRouterError(f"no message {key!r} in {LABELS[name]}") from None
    shown = entry_json(name, entry)
    shown["data"] = base64.b64encode(entry.data).decode("ascii")
    return shown


def remove_entry(settings: Settings, name: BoxName, key: str) -> dict[str, Any]:
    """Delete one entry, named by its key."""
    try:
        open_box(settings, name).remove(key)
    except KeyError:
        raise MailRouterError(f"no message {key!r} in {LABELS[name]}") from None
    return {"box": name, "key": key}
