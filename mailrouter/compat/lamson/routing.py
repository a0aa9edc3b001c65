"""Lamson's ``routing`` module: Salmon's (the same Router), with decorators whose handlers are
given Lamson's MailRequest."""

from __future__ import annotations

from mailrouter.compat.lamson.mail import MailRequest
from mailrouter.compat.salmon import routing as salmon
from mailrouter.compat.salmon.routing import (
    LOG,
    ROUTE_FIRST_STATE,
    MemoryStorage,
    Router,
    RoutingBase,
    ShelveStorage,
    StateStorage,
    nolocking,
    state_key_generator,
    stateless,
)

__all__ = [
    "LOG",
    "ROUTE_FIRST_STATE",
    "MemoryStorage",
    "Router",
    "RoutingBase",
    "ShelveStorage",
    "StateStorage",
    "nolocking",
    "route",
    "route_like",
    "state_key_generator",
    "stateless",
]


class route(salmon.route):
    """``@route(pattern, **captures)``, handing Lamson's MailRequest to the handler."""

    request_type = MailRequest


class route_like(salmon.route_like):
    """``@route_like(other)``, handing Lamson's MailRequest to the handler."""

    request_type = MailRequest
