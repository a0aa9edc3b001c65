"""A handler module written the Salmon way, run through compat's RouterConversation in-process
and over SMTP against a real mailrouter server."""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from helpers import Sink, running, sink_server

from mailrouter.compat.salmon import utils
from mailrouter.compat.salmon.mail import MailRequest, MailResponse
from mailrouter.compat.salmon.queue import Queue
from mailrouter.compat.salmon.routing import Router
from mailrouter.compat.salmon.server import SMTPError
from mailrouter.compat.salmon.testing import (
    RouterConversation,
    TestConversation,
    assert_in_state,
    relay,
)
from mailrouter.outbound import sender
from mailrouter.outbound.sender import DeliveryError
from mailrouter.outbound.transport import ConnectionOptions
from mailrouter.routing.router import Router as NativeRouter
from mailrouter.testing import Outbox

# A small mailing list as Salmon applications write them: settings.relay for what it sends,
# run/ maildirs for what it keeps, an ERROR state function to recover.
APP = """
from mailrouter.compat.salmon import queue, utils
from mailrouter.compat.salmon.mail import MailResponse
from mailrouter.compat.salmon.routing import route, route_like, stateless
from mailrouter.compat.salmon.server import SMTPError

settings = utils.import_settings(False)


@route("(list)-subscribe@(host)", list="[a-z]+", host="example\\\\.com")
def START(message, list=None, host=None):
    settings.relay.reply(message, "%s-confirm@%s" % (list, host), "Confirm " + list, "Reply.")
    return CONFIRMING


@route("(list)-confirm@(host)", list="[a-z]+", host="example\\\\.com")
def CONFIRMING(message, list=None, host=None):
    welcome = MailResponse(To=message.From, From="%s@%s" % (list, host),
                           Subject="Welcome to " + list, Body="You are in.")
    welcome["List-Id"] = "<%s.%s>" % (list, host)
    settings.relay.deliver(welcome)
    return POSTING


@route("(list)@(host)", list="[a-z]+", host="example\\\\.com")
def POSTING(message, list=None, host=None):
    if not message["Subject"]:
        raise SMTPError(550, "5.6.0 A post needs a subject")
    if message["Subject"] == "explode":
        raise RuntimeError("the list broke")
    queue.Queue("run/posts").push(message)


@route_like(POSTING)
def ERROR(message, list=None, host=None):
    queue.Queue("run/errors").push(message)
    return POSTING


@route("(address)@(host)", address=".+", host="example\\\\.com")
@stateless
def ARCHIVE(message, address=None, host=None):
    queue.Queue("run/queue").push(message)
"""

JOE = "joe@example.org"


@pytest.fixture
def salmon_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_module: Callable[..., str]
) -> Iterator[str]:
    """APP loaded into compat's Router, run/ in ``tmp_path``; the Router reset after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SALMON_SETTINGS_MODULE", raising=False)
    monkeypatch.setattr(utils, "settings", None)  # no config/settings.py: mailrouter's own
    monkeypatch.setattr(Router, "LOG_EXCEPTIONS", False)  # handler errors raise, as in tests
    name = make_module(APP)
    Router.load([name])
    try:
        yield name
    finally:
        Router.clear_routes()
        Router.clear_states()
        Router.HANDLERS.clear()


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_a_salmon_app_in_a_router_conversation(salmon_app: str, outbox: Outbox) -> None:
    client = RouterConversation(JOE, "hello")
    client.begin()
    client.say("news-subscribe@example.com", "subscribe me")
    assert_in_state(salmon_app, "news-subscribe@example.com", JOE, "CONFIRMING")
    (confirm,) = outbox.delivered(to=JOE, subject="^Confirm news$")
    assert confirm["From"] == "news-confirm@example.com"
    assert confirm["In-Reply-To"]  # mailrouter's reply() threads it
    assert confirm.get_content().rstrip() == "Reply."

    client.say("news-confirm@example.com", "yes")
    (welcome,) = outbox.delivered(to=JOE, subject="^Welcome to news$")
    assert welcome["List-Id"] == "<news.example.com>"
    assert_in_state(salmon_app, "news@example.com", JOE, "POSTING")

    post = client.say("news@example.com", "first post", expect="first post", Subject="Hi all")
    assert isinstance(post, MailRequest) and post["Subject"] == "Hi all"
    (key,) = Queue("run/posts").keys()
    kept = Queue("run/posts").get(key)
    assert kept is not None and (kept.From, kept.To) == (JOE, "news@example.com")
    assert kept.body() == "first post"  # the Body exactly: no line break added


def test_refusals_and_errors_as_salmon_reports_them(salmon_app: str, outbox: Outbox) -> None:
    client = RouterConversation(JOE, "hello")
    client.say("news-subscribe@example.com", "subscribe me")
    client.say("news-confirm@example.com", "yes")
    no_subject = MailRequest("localhost", JOE, "news@example.com", f"From: {JOE}\n\nhi\n")
    with pytest.raises(SMTPError) as refused:
        Router.deliver(no_subject)
    assert (refused.value.code, refused.value.message) == (550, "5.6.0 A post needs a subject")
    assert_in_state(salmon_app, "news@example.com", JOE, "POSTING")  # no change

    Router.UNDELIVERABLE_QUEUE = Queue("run/undeliverable")
    try:
        with pytest.raises(RuntimeError, match="the list broke"):
            client.say("news@example.com", "boom", Subject="explode")
    finally:
        Router.UNDELIVERABLE_QUEUE = None
    assert_in_state(salmon_app, "news@example.com", JOE, "ERROR")
    assert Queue("run/undeliverable").count() == 1  # once per message
    client.say("news@example.com", "again", Subject="again")  # ERROR takes it, back to POSTING
    assert Queue("run/errors").count() == 1
    assert_in_state(salmon_app, "news@example.com", JOE, "POSTING")


def test_a_salmon_style_state_store(salmon_app: str, outbox: Outbox) -> None:
    from mailrouter.compat.salmon.routing import StateStorage

    class DictStorage(StateStorage):  # only Salmon's three methods
        def __init__(self) -> None:
            self.states: dict[tuple[str, str], str] = {}

        def get(self, key: str, sender: str) -> str:
            return self.states.get((key, sender), "START")

        def set(self, key: str, sender: str, state: str) -> None:
            self.states[key, sender] = state

        def clear(self) -> None:
            self.states.clear()

    store, before = DictStorage(), Router.STATE_STORE
    Router.STATE_STORE = store
    try:
        RouterConversation(JOE, "hello").say("news-subscribe@example.com", "subscribe me")
    finally:
        Router.STATE_STORE = before
    assert store.states[salmon_app, JOE] == "CONFIRMING"


async def test_the_same_app_over_smtp_against_a_mailrouter_server(
    tmp_path: Path, salmon_app: str
) -> None:
    sink = Sink()
    async with sink_server(sink) as sink_port:
        with sender.using(sender.Relay(ConnectionOptions("127.0.0.1", sink_port))):
            async with running(tmp_path, salmon_app) as server:
                client = TestConversation(relay(port=server.port), JOE, "hello")
                await asyncio.to_thread(client.begin)
                await asyncio.to_thread(client.say, "news-subscribe@example.com", "join")
                await asyncio.to_thread(client.say, "news-confirm@example.com", "yes")
                post = await asyncio.to_thread(
                    client.say, "news@example.com", "first post", "first post", "Hi all"
                )
                no_subject = MailRequest(None, JOE, "news@example.com", f"From: {JOE}\n\nhi\n")
                with pytest.raises(DeliveryError, match=r"5\.6\.0 A post needs a subject"):
                    await asyncio.to_thread(relay(port=server.port).deliver, no_subject)
    # the server answers DATA when the handlers are done: what they sent is at the sink
    confirm, welcome = (parsed(received.data) for received in sink.received)
    assert [r.recipients for r in sink.received] == [[JOE], [JOE]]
    assert (confirm["Subject"], confirm["From"]) == ("Confirm news", "news-confirm@example.com")
    assert (welcome["Subject"], welcome["List-Id"]) == ("Welcome to news", "<news.example.com>")
    assert isinstance(post, MailRequest) and post["Subject"] == "Hi all"
    assert len(Queue("run/posts")) == 1
    # the server kept the states (its own store): compat's Router never saw this sender
    assert_in_state(salmon_app, "news@example.com", JOE, "START")


def test_a_fresh_import_replaces_the_registrations_of_the_old(salmon_app: str) -> None:
    def registered() -> list[tuple[str, str]]:
        return [(f.__module__, f.__name__) for fs in Router.REGISTERED.values() for f in fs]

    before = registered()
    assert len(before) == 5 and len(Router.ORDER) == 4  # POSTING and ERROR share a pattern
    server_router = NativeRouter()
    server_router.load([salmon_app])
    server_router.reload()  # as mailrouter's server reloads on SIGHUP: a fresh import
    assert registered() == before
    fresh = sys.modules[salmon_app].__dict__  # the new import's functions, not the old ones
    assert all(inspect.unwrap(f).__globals__ is fresh for f in Router.REGISTERED["(list)@(host)"])


def test_a_response_refuses_header_injection_when_built() -> None:
    response = MailResponse(To="ann@example.org", From="list@example.com", Subject="hi")
    response["X-Note"] = "fine"
    assert "X-Note: fine" in str(response)
    with pytest.raises(ValueError):
        response["Subject"] = "hi\r\nBcc: evil@example.net"
