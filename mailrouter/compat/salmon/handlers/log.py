"""A catch-all that logs every message it receives, whole, at debug level."""

from __future__ import annotations

import logging

from mailrouter.compat.salmon.mail import MailRequest
from mailrouter.compat.salmon.routing import route, stateless

log = logging.getLogger(__name__)


@route("(to)@(host)", to=".+", host=".+")
@stateless
def START(message: MailRequest, to: str | None = None, host: str | None = None) -> None:
    """Log the message."""
    log.debug("MESSAGE to %s@%s:\n%s", to, host, message)
