"""Helpers for testing handler modules: conversations in-process, outgoing mail in memory.

from mailrouter.testing import Conversation

def test_subscribe(conversation):            # the pytest plugin's fixture
    conversation.router.load(["myapp.handlers.lists"])
    conversation.say("news-subscribe@example.com", subject="join")
    conversation.assert_in_state("myapp.handlers.lists", conversation.sender, "CONFIRMING")
    assert conversation.delivered(to="tester@example.org", subject="confirm")
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Unpack

from mailrouter.inbound.auth.results import ARCResult, AuthResults, DMARCResult, SPFResult
from mailrouter.message import MailRequest, normalize_address
from mailrouter.outbound import sender as relay
from mailrouter.outbound.sender import Sendable, Sender, SendOptions, SendResult, prepare
from mailrouter.outbound.verp import envelopes
from mailrouter.routing.result import DeliveryResult
from mailrouter.routing.router import Router


@dataclass(frozen=True)
class Sent:
    """One message a handler sent: its envelope and the parsed message."""

    sender: str
    recipients: tuple[str, ...]
    message: EmailMessage


class Outbox(Sender):
    """Captures what handlers send through the relay (``outbound.sender``) instead of sending it.

    ``with mailrouter.outbound.sender.using(outbox):`` makes it the relay (the pytest plugin's
    ``outbox`` fixture and ``Conversation.say`` do).
    """

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    def send(self, msg: Sendable, **kw: Unpack[SendOptions]) -> SendResult:
        """Keep ``msg`` (with ``verp``, one ``Sent`` per recipient, each with its return path);
        it counts as delivered to every recipient (``check`` has nothing to check)."""
        envelope = prepare(msg, kw.get("sender"), kw.get("recipients"))
        envelope_sender, rcpts, data, message_id = envelope
        parsed = message_from_bytes(data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        for return_path, to in envelopes(envelope_sender, rcpts, kw.get("verp", False)):
            self.sent.append(Sent(return_path, tuple(to), parsed))
        return SendResult(message_id, envelope_sender, delivered=tuple(rcpts))

    async def send_async(self, msg: Sendable, **kw: Unpack[SendOptions]) -> SendResult:
        """As ``send``: nothing here blocks."""
        return self.send(msg, **kw)

    def delivered(self, to: str | None = None, subject: str | None = None) -> list[EmailMessage]:
        """The messages sent to ``to`` (an address) whose Subject matches ``subject`` (a regex)."""
        return [
            sent.message
            for sent in self.sent
            if (to is None or to.lower() in (r.lower() for r in sent.recipients))
            and (subject is None or re.search(subject, str(sent.message["Subject"] or "")))
        ]

    def clear(self) -> None:
        """Forget everything sent so far."""
        self.sent.clear()


def authenticated_as(sender: str) -> AuthResults:
    """The results of mail that ``sender``'s domain sent itself: SPF and DMARC pass (what
    ``Conversation`` gives its messages, so that ``@authenticated`` handlers run)."""
    domain = normalize_address(sender).rpartition("@")[2]
    return AuthResults(
        SPFResult("pass", "a conversation in-process", domain, sender),
        (),
        DMARCResult("pass", "SPF aligned", domain, "none", "none"),
        ARCResult("none"),
    )


class Conversation:
    """Talks to a router as one sender, in-process, with outgoing mail kept in an ``Outbox``
    (the relay of each delivery ``say`` makes). Its messages count as authenticated (see
    ``authenticated_as``) unless ``say(..., authenticated=False)``: a forged sender."""

    def __init__(self, router: Router, outbox: Outbox, sender: str = "tester@example.org") -> None:
        self.router = router
        self.outbox = outbox
        self.sender = sender

    def say(
        self,
        to: str | Sequence[str],
        subject: str = "",
        body: str = "",
        sender: str | None = None,
        *,
        authenticated: bool = True,
    ) -> DeliveryResult:
        """Deliver a message from ``sender`` (default: this conversation's) to ``to``; with
        ``authenticated=False`` its From: domain fails DMARC."""
        return asyncio.run(self.say_async(to, subject, body, sender, authenticated=authenticated))

    async def say_async(
        self,
        to: str | Sequence[str],
        subject: str = "",
        body: str = "",
        sender: str | None = None,
        *,
        authenticated: bool = True,
    ) -> DeliveryResult:
        """``say`` for async tests."""
        recipients = [to] if isinstance(to, str) else list(to)
        sender = sender or self.sender
        message = EmailMessage()
        message["From"], message["To"] = sender, ", ".join(recipients)
        message["Subject"], message["Date"] = subject, formatdate(localtime=True)
        message["Message-ID"] = make_msgid(domain="test.invalid")
        message.set_content(body)
        data = message.as_bytes(policy=policy.SMTP)
        request = MailRequest(("127.0.0.1", 0), sender, recipients, data)
        if authenticated:
            request.auth = authenticated_as(sender)
        with relay.using(self.outbox):
            return await self.router.deliver(request)

    def assert_in_state(self, module: str, sender: str, state: str, to: str = "") -> None:
        """Fail unless ``module`` is in ``state`` for ``sender`` (for mail to ``to``, when the
        module's ``state_key_generator`` looks at the recipient)."""
        probe = MailRequest(None, sender, [to], b"")
        actual = self.router.get_state(module, probe)
        assert actual == state, f"{module} is in {actual} for {sender}, not {state}"

    def delivered(self, to: str | None = None, subject: str | None = None) -> list[EmailMessage]:
        """The messages the handlers sent (see ``Outbox.delivered``)."""
        return self.outbox.delivered(to, subject)

    def clear(self) -> None:
        """Forget sent mail and every sender's state."""
        self.outbox.clear()
        self.router.clear_states()
