"""What a delivery produced: per-recipient outcomes and the SMTP replies they turn into."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailrouter.errors import QueueError, QueueFullError, SMTPError, Status
from mailrouter.replies import Reply

if TYPE_CHECKING:
    from mailrouter.routing.decorators import HandlerSpec


@dataclass(frozen=True)
class DeliveryResult:
    """What ``Router.deliver`` did: one reply per envelope recipient, and the queueing."""

    replies: tuple[Reply, ...]
    queue_key: str | None = None
    reasons: Mapping[str, str] = field(default_factory=dict)
    # by normalised recipient
    outcomes: Mapping[str, RecipientOutcome] = field(default_factory=dict)

    @property
    def queued(self) -> bool:
        """Whether the message was pushed to the undeliverable queue."""
        return self.queue_key is not None

    @property
    def handlers(self) -> tuple[str, ...]:
        """The handlers that ran (``module.function``), each once, in the order they ran."""
        return tuple(dict.fromkeys(h.qualname for o in self.outcomes.values() for h in o.ran))

    @property
    def handler_errors(self) -> int:
        """How many handler runs failed (raised, or returned something that is not a state)."""
        return sum(len(outcome.failures) for outcome in self.outcomes.values())

    def first_refusal(self) -> Reply | None:
        """The first non-2xx reply, if any (what a plain SMTP session answers)."""
        return next((reply for reply in self.replies if reply.code >= 300), None)


@dataclass
class RecipientOutcome:
    """How routing one recipient went."""

    matched: bool = False
    handled: bool = False
    stateful_done: bool = False
    refusal: SMTPError | None = None
    failures: list[str] = field(default_factory=list)
    # the handlers run, refusing or failing too
    ran: list[HandlerSpec] = field(default_factory=list)

    @property
    def queue_reason(self) -> str | None:
        """Why this recipient's copy goes to the undeliverable queue, or None if it does not."""
        if self.refusal is not None:
            return None
        if self.failures:
            return "; ".join(self.failures)
        if not self.handled:
            return "no handler for the sender's state" if self.matched else "no route"
        return None


def reply_for(
    recipient: str, outcome: RecipientOutcome, queue_key: str | None, queue_error: QueueError | None
) -> Reply:
    """The reply for one recipient, given how routing went and whether queueing worked."""
    if outcome.refusal is not None:
        return Reply(recipient, outcome.refusal.code, outcome.refusal.message)
    if outcome.queue_reason is None:
        return Reply(recipient, Status.OK, "2.0.0 Message accepted")
    if queue_key is not None:
        return Reply(recipient, Status.OK, f"2.0.0 Message queued as {queue_key}")
    if isinstance(queue_error, QueueFullError):
        return Reply(
            recipient, Status.INSUFFICIENT_STORAGE, "4.3.1 Insufficient storage, try again later"
        )
    if queue_error is not None or outcome.failures:
        return Reply(recipient, Status.LOCAL_ERROR, "4.3.0 Temporary failure, try again later")
    return Reply(recipient, Status.MAILBOX_UNAVAILABLE, f"5.1.1 No route for <{recipient}>")
