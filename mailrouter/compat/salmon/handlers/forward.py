"""A catch-all that forwards every message it receives through ``settings.relay``.

Only for tests and closed setups: loaded on a server that takes mail from anyone, it makes
an open relay. The settings are imported when the module is (``utils.import_settings``).
"""

from __future__ import annotations

import logging

from mailrouter.compat.salmon.mail import MailRequest
from mailrouter.compat.salmon.routing import route, stateless
from mailrouter.compat.salmon.utils import import_settings

log = logging.getLogger(__name__)

settings = import_settings(False)


@route("(to)@(host)", to=".+", host=".+")
@stateless
def START(message: MailRequest, to: str | None = None, host: str | None = None) -> None:
    """Forward the message, as it is, to its recipient through the relay."""
    log.debug("MESSAGE to %s@%s forwarded to the relay host.", to, host)
    settings.relay.deliver(message)
