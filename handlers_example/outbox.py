"""Outgoing mail. Until mailrouter has a relay, "sending" appends to an outbox maildir.

``send`` is the one place a relay plugs in; ``notify`` composes a short text message for it.
Each stored message starts with an ``X-Outbox-To`` header naming its envelope recipient.
"""

from __future__ import annotations

import os
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from . import maildir

#: The outbox maildir (env ``MAILROUTER_OUTBOX_DIR``); relative to the working directory.
OUTBOX_DIR = Path(os.environ.get("MAILROUTER_OUTBOX_DIR", "run/outbox"))
RCPT_HEADER = "X-Outbox-To"

_STORED = policy.default.clone(utf8=True)  # LF line ends, UTF-8 headers kept as they are


def send(to: str, message: EmailMessage) -> str:
    """Send ``message`` to the address ``to``; today: store it in the outbox, return its name."""
    if "\r" in to or "\n" in to:
        raise ValueError(f"bad recipient address {to!r}")
    envelope = f"{RCPT_HEADER}: {to}\n".encode(errors="surrogateescape")
    return maildir.deliver(OUTBOX_DIR, envelope + message.as_bytes(policy=_STORED))


def notify(to: str, subject: str, body: str, *, sender: str) -> str:
    """Send an automatic text message (marked ``Auto-Submitted``) from ``sender`` to ``to``."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-replied"
    message.set_content(body)
    return send(to, message)
