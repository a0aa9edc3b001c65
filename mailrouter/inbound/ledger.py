"""A delivery's view of the journal: which recipients are done, and what became of each.

The router asks the ledger which recipients an earlier delivery of the same message already
finished (they are not run again: ``begin``, one read) and tells it the moment a recipient's
handlers finish, before the next recipient is routed (``Journal.record``); ``settle`` then records
the others (queued, refused, deferred or pending) and the reply, in one write
(``Journal.finish``). A single-recipient message thus costs one read and one write. Every journal
call goes through ``JournalCalls``, batched with the other deliveries' calls of the same pass of
the loop and made in the server's I/O threads: the loop never waits on disk.

The one window left: a crash after a handler's side effect and before its record commits runs
that handler again on the retry. For every recipient but the last that is one small write, well
under a millisecond; the last recipient's record is committed with the reply, so its window
also spans queueing the others' copies (if any) and computing the reply. Handlers that must be
exact there key their side effects by ``message.delivery_id``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from mailrouter import replies
from mailrouter.inbound.journal_calls import JournalCalls
from mailrouter.inbound.outcome import peer_text
from mailrouter.journal import Arrival, Outcome, RecipientStatus, Write
from mailrouter.journal.records import FINISH, RECORD
from mailrouter.message import MailRequest, normalize_address
from mailrouter.replies import Reply
from mailrouter.routing.executor import run_blocking
from mailrouter.routing.result import DeliveryResult, RecipientOutcome


class JournalLedger:
    """The ``Ledger`` the router uses for one delivery of one message."""

    def __init__(
        self,
        calls: JournalCalls,
        message: MailRequest,
        arrival: Arrival,
        number: int,
        done: Collection[str],
    ) -> None:
        self.calls = calls
        self.message = message
        self.arrival = arrival  # what the journal's writes create or update the entry from
        self.number = number  # this reception's number
        self._done = set(done)  # normalised addresses whose handlers finished
        self._recorded: set[str] = set()  # finished in this delivery
        self._last: tuple[str, Outcome] | None = None  # recorded by settle
        self._written = False  # whether this reception wrote its entry yet

    @classmethod
    async def begin(cls, calls: JournalCalls, message: MailRequest, helo: str) -> JournalLedger:
        """A reception of ``message``, looked up (nothing is written until a recipient's mark or
        the reply); its ``attempt`` becomes this reception's number."""
        arrival = Arrival(
            message.sender, message.recipients, message.data, peer_text(message.peer), helo
        )
        attempt = await calls.begin(arrival)
        message.attempt = attempt.number
        message._delivery_id = attempt.delivery_id  # hashed once: handlers and observers reuse it
        return cls(calls, message, arrival, attempt.number, attempt.done)

    @classmethod
    async def resume(cls, calls: JournalCalls, message: MailRequest) -> JournalLedger:
        """The ledger of a message received before (spool mode): its reception's number is
        the entry's, so the writes change only the recipients' outcomes."""
        entry = await run_blocking(calls.executor, calls.journal.get, message.delivery_id)
        if entry is None:  # spooled while the journal was off (or before the reply's write)
            return await cls.begin(calls, message, "")
        message.attempt = entry.attempts
        arrival = Arrival(
            message.sender,
            message.recipients,
            message.data,
            entry.peer,
            entry.helo,
            entry.last_attempt_at,
        )
        done = [normalize_address(r.recipient) for r in entry.outcomes if r.done]
        ledger = cls(calls, message, arrival, entry.attempts, done)
        ledger._written = True  # at reception
        return ledger

    def done(self, address: str) -> bool:
        """Whether the handlers for ``address`` (normalised) already finished."""
        return address in self._done

    async def finished(self, address: str, outcome: RecipientOutcome, *, last: bool) -> None:
        """Record that the handlers for ``address`` finished, durably, before the next recipient
        is routed; the last recipient's record goes with ``settle``'s write."""
        handlers = tuple(handler.qualname for handler in outcome.ran)
        record = Outcome("delivered", reply=str(replies.ACCEPTED), handlers=handlers)
        self._recorded.add(address)
        if last:
            self._last = (address, record)
            return
        first = not self._written  # writes the entry; the next ones only their recipient's row
        await self.calls.write(
            Write(RECORD, self.arrival, self.number, [(address, record)], first=first)
        )
        self._written = True

    async def settle(
        self,
        answers: Sequence[Reply],
        result: DeliveryResult | None,
        reply: str,
        duration: float,
        *,
        pending: bool = False,
        note: str = "",
    ) -> None:
        """Record every recipient not recorded yet, from its reply, and the message's reply:
        one write (``reply=""``, routed from the spool: the reply stored at reception is kept).

        ``pending``: spool mode accepted the message, not yet routed. ``note`` is added to the
        reason of refused recipients (the delivery report sent about them).
        """
        outcomes = [self._last] if self._last is not None else []
        for answer in answers:
            address = normalize_address(answer.recipient)
            if address in self._done or address in self._recorded:
                continue
            self._recorded.add(address)
            outcomes.append((answer.recipient, _outcome(answer, result, pending, note)))
        first = not self._written
        await self.calls.write(
            Write(FINISH, self.arrival, self.number, outcomes, reply, duration, first=first)
        )


def _outcome(answer: Reply, result: DeliveryResult | None, pending: bool, note: str) -> Outcome:
    status: RecipientStatus
    if 400 <= answer.code < 500:
        status = "deferred"
    elif answer.code >= 500:
        return Outcome("refused", reply=str(answer), reason=note)
    elif pending:
        status = "pending"
    elif result is not None and answer.recipient in result.reasons:
        reason = result.reasons[answer.recipient]
        return Outcome("queued", str(answer), queue_key=result.queue_key or "", reason=reason)
    else:
        status = "delivered"
    return Outcome(status, reply=str(answer))
