"""What became of each message, told to observers: the metrics and the delivery log.

The server builds a :class:`DeliveryRecord` only when an observer is registered: with metrics
off and text logs above DEBUG, observing costs a message nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from mailrouter.message import MailRequest, Peer
from mailrouter.routing.result import DeliveryResult

log = logging.getLogger("mailrouter.routing.result")


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One message received: its envelope, the handlers run, the reply, and how long it took."""

    message_id: str
    peer: str
    sender: str
    recipients: tuple[str, ...]
    size: int
    handlers: tuple[str, ...]  # module.function of each handler run, in order
    handler_errors: int
    queue_key: str | None  # its key in the undeliverable queue, if it went there
    reply: str
    code: int  # the first refusal's code (over LMTP, of any recipient), else 250
    duration: float  # seconds from the end of DATA to the reply
    data: bytes = field(default=b"", repr=False)  # the bytes received (kept by the console)
    delivery_id: str = ""  # the journal's id of it ("" when the journal has no entry of it)

    @classmethod
    def of(
        cls,
        message_id: str,
        request: MailRequest,
        reply: str,
        result: DeliveryResult | None,
        duration: float,
    ) -> DeliveryRecord:
        """The record of ``request`` answered with ``reply``; ``result`` if the router ran."""
        code = next((int(line[:3]) for line in reply.split("\r\n") if line[:1] != "2"), 250)
        return cls(
            message_id,
            peer_text(request.peer),
            request.sender,
            tuple(request.recipients),
            len(request.data),
            result.handlers if result else (),
            result.handler_errors if result else 0,
            result.queue_key if result else None,
            reply,
            code,
            duration,
            request.data,
            request._delivery_id or "",  # only if the journal computed it: never hashed here
        )

    @property
    def outcome(self) -> Literal["accepted", "queued", "deferred", "refused"]:
        """Refused (5xx), deferred (4xx), else queued (as undeliverable) or accepted."""
        if self.code >= 500:
            return "refused"
        if self.code >= 400:
            return "deferred"
        return "accepted" if self.queue_key is None else "queued"

    def fields(self) -> dict[str, object]:
        """The record as JSON-ready fields, outcome included (the bytes left out)."""
        values = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "data"
        }
        return {**values, "outcome": self.outcome}


Observer = Callable[[DeliveryRecord], None]


def delivery_log(log_format: Literal["text", "json"]) -> Observer | None:
    """The delivery log line, at INFO with JSON logs, else at DEBUG; None if that level is off.

    Per-message lines stay at DEBUG in text logs; whoever asks for JSON logs wants one
    structured line per message.
    """
    level = logging.INFO if log_format == "json" else logging.DEBUG
    if not log.isEnabledFor(level):
        return None

    def write(record: DeliveryRecord) -> None:
        log.log(
            level,
            "%s: from %r to %r: %s",
            record.message_id,
            record.sender,
            list(record.recipients),
            record.reply,
            extra=record.fields(),
        )

    return write


def peer_text(peer: Peer) -> str:
    """``host:port`` (``[host]:port`` for IPv6) for a TCP peer, else the peer as text."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "" if peer is None else str(peer)
