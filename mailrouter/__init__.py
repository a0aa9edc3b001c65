"""mailrouter: an asyncio mail-application server with Lamson-style routing.

Handler modules declare routes with the decorators; a ``Router`` loads them and delivers
``MailRequest`` objects to them according to the recipient address and the sender's state.
"""

from __future__ import annotations

from mailrouter.bounce import Bounce
from mailrouter.errors import MailRouterError, SMTPError
from mailrouter.message import MailRequest
from mailrouter.outbound.response import MailResponse, reply
from mailrouter.replies import Reply
from mailrouter.routing.decorators import (
    authenticated,
    bounce_to,
    nolocking,
    route,
    route_like,
    state_key_generator,
    stateless,
)
from mailrouter.routing.result import DeliveryResult
from mailrouter.routing.router import Router
from mailrouter.state import ERROR, START, StateStorage

__version__ = "0.1.0"

__all__ = [
    "ERROR",
    "START",
    "Bounce",
    "DeliveryResult",
    "MailRequest",
    "MailResponse",
    "MailRouterError",
    "Reply",
    "Router",
    "SMTPError",
    "StateStorage",
    "__version__",
    "authenticated",
    "bounce_to",
    "nolocking",
    "reply",
    "route",
    "route_like",
    "state_key_generator",
    "stateless",
]
