"""Helpers shared by the tests."""

from __future__ import annotations

import itertools

from mailrouter import MailRequest

_counter = itertools.count()


def mail(
    sender: str = "alice@example.org",
    recipients: list[str] | None = None,
    subject: str = "hello",
    body: str = "Hi there.\r\n",
) -> MailRequest:
    """A small well-formed message."""
    recipients = recipients or ["someone@example.com"]
    data = (
        f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{next(_counter)}@test>\r\n\r\n{body}"
    ).encode()
    return MailRequest(("127.0.0.1", 40000), sender, recipients, data)
