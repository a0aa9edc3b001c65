"""What a delivery produced: per-recipient outcomes and the SMTP replies they turn into."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from mailrouter import replies
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
    already: bool = False  # its handlers finished on an earlier delivery of the same message
    unauthenticated: bool = False  # an @authenticated handler was not run for this sender
    refusal: SMTPError | None = None
    failures: list[str] = field(default_factory=list)
    # the handlers run, refusing or failing too
    ran: list[HandlerSpec] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether its handlers ran to the end: no refusal, no failure, nothing to queue."""
        return (
            self.handled and self.refusal is None and not self.failures and not self.unauthenticated
        )

    @property
    def queue_reason(self) -> str | None:
        """Why this recipient's copy goes to the undeliverable queue, or None if it does not."""
        if self.refusal is not None:
            return None
        if self.failures or self.unauthenticated:
            return "; ".join(["unauthenticated sender"] * self.unauthenticated + self.failures)
        if not self.handled:
            return "no handler for the sender's state" if self.matched else "no route"
        return None


def reply_for(
    recipient: str, outcome: RecipientOutcome, queue_key: str | None, queue_error: QueueError | None
) -> Reply:
    """The reply for one recipient, given how routing went and whether queueing worked."""
    if outcome.already:
        return replies.ALREADY_DELIVERED.to((recipient,))[0]
    if outcome.refusal is not None:
        return Reply(recipient, outcome.refusal.code, outcome.refusal.message)
    if outcome.queue_reason is None:
        return replies.ACCEPTED.to((recipient,))[0]
    if queue_key is not None:
        return Reply(recipient, Status.OK, f"2.0.0 Message queued as {queue_key}")
    if isinstance(queue_error, QueueFullError):
        return replies.INSUFFICIENT_STORAGE.to((recipient,))[0]
    if queue_error is not None or outcome.failures:
        return replies.TEMPORARY_FAILURE.to((recipient,))[0]
    if outcome.unauthenticated:
        return replies.UNAUTHENTICATED.to((recipient,))[0]
    return Reply(recipient, Status.MAILBOX_UNAVAILABLE, f"5.1.1 No route for <{recipient}>")


class Ledger(Protocol):
    """Where a delivery learns which recipients an earlier delivery of the same message
    finished, and records each recipient the moment its handlers finish (the journal)."""

    def done(self, address: str) -> bool:
        """Whether the handlers for ``address`` (normalised) already finished."""

    async def finished(self, address: str, outcome: RecipientOutcome, *, last: bool) -> None:
        """Record that the handlers for ``address`` finished; raises if it cannot. ``last``:
        no recipient is routed after it, so the record may wait for the delivery's last write."""
