"""A catch-all that logs each message for the host and keeps a copy in a maildir.

Its route matches every address at the host (the router's ``host`` default), so while this
module is loaded every such message counts as handled and none is queued as undeliverable:
remove it from ``handlers`` to have mail for unknown addresses queued instead. List it after
the applications, so that mail they refuse is not stored. ``ls run/mail/new`` shows the copies.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mailrouter import MailRequest, route, stateless

from . import maildir

log = logging.getLogger(__name__)

#: The maildir receiving a copy of every message (env ``MAILROUTER_MAIL_DIR``).
MAIL_DIR = Path(os.environ.get("MAILROUTER_MAIL_DIR", "run/mail"))


@route("(address)@(host)", address=".+")
@stateless
def LOG(message: MailRequest, address: str | None = None, host: str | None = None) -> None:
    """Store the recipient's copy (with a ``Delivered-To`` header) and log one line about it."""
    recipient = "".join(message.recipient.splitlines())
    header = f"Delivered-To: {recipient}\n".encode(errors="surrogateescape")
    name = maildir.deliver(MAIL_DIR, header + message.data.replace(b"\r\n", b"\n"))
    log.info(
        "mail from %r to %r, subject %r, %d bytes: stored as %s",
        message.sender,
        message.recipient,
        message["Subject"],
        len(message.data),
        name,
    )
