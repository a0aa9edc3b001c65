"""Helpers shared by the tests."""

from __future__ import annotations

import itertools
import smtplib

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


def lmtp_send(
    where: int | str, sender: str, recipients: list[str], data: bytes
) -> list[tuple[int, bytes]]:
    """Send one message over LMTP (a TCP port on 127.0.0.1, or a Unix socket path).

    Returns the per-recipient replies after DATA, in RCPT order (smtplib reads only the first).
    """
    host, port = ("127.0.0.1", where) if isinstance(where, int) else (where, 0)
    with smtplib.LMTP(host, port, timeout=10) as client:
        client.ehlo()
        client.mail(sender)
        for rcpt in recipients:
            client.rcpt(rcpt)
        replies = [client.data(data)]
        replies += [client.getreply() for _ in recipients[1:]]
    return replies
