"""A catch-all that stores every message it receives in the maildir ``run/queue``, to inspect
what the server receives."""

from __future__ import annotations

import logging

from mailrouter.compat.salmon.handlers import log
from mailrouter.compat.salmon.mail import MailRequest
from mailrouter.compat.salmon.queue import Queue
from mailrouter.compat.salmon.routing import nolocking, route_like, stateless

_log = logging.getLogger(__name__)


@route_like(log.START)
@stateless
@nolocking
def START(message: MailRequest, to: str | None = None, host: str | None = None) -> None:
    """Add the message to ``run/queue`` (a maildir takes concurrent writers: no lock)."""
    _log.debug("MESSAGE to %s@%s added to queue.", to, host)
    Queue("run/queue").push(message)
