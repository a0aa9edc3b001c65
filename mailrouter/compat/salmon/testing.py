"""Salmon's ``testing`` helpers: conversations with the handlers, and the queue they fill.

``RouterConversation`` delivers through ``routing.Router`` in this process;
``TestConversation`` sends through a Relay to a running server (mailrouter's, started on the
project). Both look for expected mail in the maildir ``run/queue``, where Salmon's test setups
put what the handlers send (``handlers.queue`` on the receiving end). For mail sent with
mailrouter's relay, mailrouter's own ``testing.Outbox`` is simpler.
"""

from __future__ import annotations

import re
from typing import Any

from mailrouter.compat.salmon import routing
from mailrouter.compat.salmon.mail import MailRequest, MailResponse
from mailrouter.compat.salmon.queue import Queue
from mailrouter.compat.salmon.server import Relay

__all__ = [
    "TEST_QUEUE",
    "RouterConversation",
    "TestConversation",
    "assert_in_state",
    "clear_queue",
    "delivered",
    "queue",
    "relay",
]

TEST_QUEUE = "run/queue"


def relay(hostname: str = "127.0.0.1", port: int = 8824) -> Relay:
    """A Relay to ``hostname:port`` (8824: Salmon's log server)."""
    return Relay(hostname, port, debug=0)


def queue(queue_dir: str = TEST_QUEUE) -> Queue:
    """The queue ``queue_dir``."""
    return Queue(queue_dir)


def clear_queue(queue_dir: str = TEST_QUEUE) -> None:
    """Empty the queue ``queue_dir``."""
    queue(queue_dir).clear()


def delivered(pattern: str, to_queue: Queue | None = None) -> MailRequest | bool:
    """The first message in ``to_queue`` (default ``run/queue``) whose text matches the regex
    ``pattern``; False if none does."""
    inq = queue() if to_queue is None else to_queue
    regex = re.compile(pattern)
    for key in inq.keys():  # noqa: SIM118 (a Queue is not a mapping)
        msg = inq.get(key)
        if msg is not None and regex.search(str(msg)):
            return msg
    return False


class TestConversation:
    """Talks to a running server through ``relay_to_use`` as ``From``, with a default Subject."""

    __test__ = False  # not a pytest test class

    def __init__(self, relay_to_use: Relay, From: str, Subject: str) -> None:
        self.relay = relay_to_use
        self.From = From
        self.Subject = Subject

    def begin(self) -> None:
        """Start afresh: empty ``run/queue`` and forget the states."""
        clear_queue()
        routing.Router.clear_states()

    def deliver(self, To: Any, From: str, Subject: str, Body: str) -> None:
        """Send one message."""
        self.relay.send(To, From, Subject, Body)

    def say(
        self, To: Any, Body: str, expect: str | None = None, Subject: str | None = None
    ) -> MailRequest | bool | None:
        """Send ``Body`` to ``To``; with ``expect``, the queued message matching it (it fails
        the test when there is none)."""
        self.deliver(To, self.From, Subject or self.Subject, Body)
        if not expect:
            return None
        msg = delivered(expect)
        assert msg, f"Expected {expect!r} when sending to {To!r} with {Subject or self.Subject!r}"
        return msg


class RouterConversation(TestConversation):
    """A TestConversation that delivers through ``routing.Router`` in this process."""

    def __init__(self, From: str, Subject: str) -> None:
        self.From = From
        self.Subject = Subject

    def deliver(self, To: Any, From: str, Subject: str, Body: str) -> None:
        """Deliver one message to the handlers."""
        sample = MailResponse(From=From, To=To, Subject=Subject, Body=Body)
        routing.Router.deliver(MailRequest("localhost", sample["From"], sample["To"], str(sample)))


def assert_in_state(module: str, To: str, From: str, state: str) -> None:
    """Fail unless ``module`` is in ``state`` for mail from ``From`` to ``To``."""
    actual = routing.Router.get_state(module, MailRequest("fakepeer", From, To, ""))
    assert actual == state, f"{actual!r} != {state!r}"
