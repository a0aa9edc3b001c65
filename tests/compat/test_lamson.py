"""Lamson-style handler code over compat.lamson: its names, and every recipient routed."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest

from mailrouter.compat.lamson.mail import MailRequest
from mailrouter.compat.lamson.routing import Router
from mailrouter.compat.salmon import mail as salmon_mail

APP = """
from mailrouter.compat.lamson.routing import route, stateless

seen = []


@route("(name)@(host)", name="[a-z]+", host="example\\\\.com")
@stateless
def LOG(message, name=None, host=None):
    seen.append((type(message).__name__, sorted(message.route_to), message.route_from, name))
"""


@pytest.fixture
def lamson_app(make_module: Callable[..., str]) -> Iterator[str]:
    name = make_module(APP)
    Router.load([name])
    try:
        yield name
    finally:
        Router.clear_routes()
        Router.HANDLERS.clear()


def seen(module: str) -> list[tuple[object, ...]]:
    return sys.modules[module].seen  # type: ignore[no-any-return]


def test_every_recipient_is_routed_with_lamsons_names(lamson_app: str) -> None:
    message = MailRequest("peer", "Ann <ANN@x.org>", ["a@example.com", "b@example.com"], "")
    assert message.original == ""  # Lamson's original, without Salmon's deprecation
    Router.deliver(message)
    everyone = ["a@example.com", "b@example.com"]
    assert seen(lamson_app) == [
        ("MailRequest", everyone, "ann@x.org", "a"),
        ("MailRequest", everyone, "ann@x.org", "b"),
    ]


def test_a_salmon_request_reaches_a_lamson_handler_as_lamsons(lamson_app: str) -> None:
    Router.deliver(salmon_mail.MailRequest("peer", "ann@x.org", "c@example.com", "Subject: x\n\n"))
    ((kind, route_to, _, _),) = seen(lamson_app)
    assert (kind, route_to) == ("MailRequest", ["c@example.com"])
