"""Bounces: what a delivery status notification or another MTA's failure notice reports.

``MailRequest.bounce`` is ``read_bounce`` of the message, done once: a ``Bounce`` (the failed
recipients, each with its action, status code, hard or soft kind and diagnostic; the reporting
MTA; the returned message's headers), or None for a message that is no bounce, auto-replies
included. ``Status`` is an RFC 3463 status code and its meaning.
"""

from __future__ import annotations

from mailrouter.bounce.detect import from_mail_system, is_auto_reply, read_bounce
from mailrouter.bounce.report import Bounce, BouncedRecipient, is_delivery_report
from mailrouter.bounce.status import Kind, Status

__all__ = [
    "Bounce",
    "BouncedRecipient",
    "Kind",
    "Status",
    "from_mail_system",
    "is_auto_reply",
    "is_delivery_report",
    "read_bounce",
]
