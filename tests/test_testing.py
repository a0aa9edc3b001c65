"""The helpers handler authors test with: the pytest plugin's fixtures and Conversation."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mailrouter.outbound import sender as relay
from mailrouter.routing.router import Router
from mailrouter.state import MemoryStorage
from mailrouter.testing import Conversation, Outbox

ECHO = """
from mailrouter import reply, route
from mailrouter.outbound import sender as relay

@route("echo@(host)", host="example\\\\.com")
def START(message, host=None):
    answer = reply(message, text="You said: " + (message.body() or ""))
    if answer is not None:
        relay.send(answer)
    return ECHOED

@route("echo@(host)", host="example\\\\.com")
async def ECHOED(message, host=None):
    await relay.send_async(reply(message, text="again"))
"""


def test_a_conversation_walks_states_and_captures_replies(
    conversation: Conversation, make_module: Callable[..., str]
) -> None:
    app = make_module(ECHO)
    conversation.router.load([app])
    result = conversation.say("echo@example.com", subject="hello", body="ping")
    assert [reply.code for reply in result.replies] == [250]
    conversation.assert_in_state(app, conversation.sender, "ECHOED")
    (answer,) = conversation.delivered(to=conversation.sender, subject="^Re: hello$")
    assert "You said: ping" in answer.get_content()
    conversation.say("echo@example.com", subject="hello again")  # the async handler
    assert len(conversation.delivered(to=conversation.sender)) == 2
    assert conversation.delivered(to="someone@else.org") == []
    with pytest.raises(AssertionError, match="ECHOED"):
        conversation.assert_in_state(app, conversation.sender, "START")
    conversation.clear()
    assert conversation.delivered() == []
    conversation.assert_in_state(app, conversation.sender, "START")


def test_the_outbox_fixture_is_what_relay_sends_to(outbox: Outbox) -> None:
    assert relay.current() is outbox


async def test_async_tests_see_the_outbox_fixture_too(
    conversation: Conversation, make_module: Callable[..., str]
) -> None:
    assert relay.current() is conversation.outbox
    conversation.router.load([make_module(ECHO)])
    await conversation.say_async("echo@example.com", subject="from an async test")
    assert len(conversation.delivered(to=conversation.sender, subject="async test$")) == 1


def test_without_the_fixture_no_relay_is_configured() -> None:
    with pytest.raises(relay.RelayError):
        relay.current()


def test_a_conversation_made_by_hand_is_its_own_relay(make_module: Callable[..., str]) -> None:
    router = Router(store=MemoryStorage())
    try:
        talk = Conversation(router, Outbox())
        router.load([make_module(ECHO)])
        talk.say("echo@example.com", subject="hi", body="plain handler")  # in a worker thread
        talk.say("echo@example.com", subject="hi")  # the async handler, on the loop
    finally:
        router.close()
    first, second = talk.delivered(to=talk.sender, subject="^Re: hi$")
    assert "You said: plain handler" in first.get_content()
    assert "again" in second.get_content()
    with pytest.raises(relay.RelayError):
        relay.current()  # the conversation's outbox was the relay of its deliveries only
