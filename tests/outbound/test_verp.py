"""VERP: return paths that encode the recipient, read back from a bounce's address; the relay
sending each recipient its own over real SMTP, and routes capturing the encoded part."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Sink, sink_server

from mailrouter import MailRequest, Router
from mailrouter.outbound.response import MailResponse
from mailrouter.outbound.sender import ConnectionOptions, Relay
from mailrouter.outbound.verp import Verp, envelopes, verp_address, verp_recipient
from mailrouter.queue import Queue
from mailrouter.testing import Outbox

RETURN_PATH = "news-bounces@lists.example.com"


def test_the_recipient_is_encoded_in_the_return_path() -> None:
    assert verp_address(RETURN_PATH, "joe@example.org") == (
        "news-bounces+joe=example.org@lists.example.com"
    )
    assert verp_address(RETURN_PATH, "joe+tag@example.org") == (
        "news-bounces+joe+tag=example.org@lists.example.com"
    )


@pytest.mark.parametrize(
    "address",
    [
        "news-bounces+joe=example.org@lists.example.com",
        "<news-bounces+joe=example.org@lists.example.com>",
        "NEWS-Bounces+Joe=EXAMPLE.Org@Lists.Example.COM",  # MTAs and people change the case
    ],
)
def test_the_recipient_is_read_back_whatever_the_case(address: str) -> None:
    assert verp_recipient(address) == "joe@example.org"
    assert verp_recipient(address, prefix="news-bounces") == "joe@example.org"
    assert verp_recipient(address, prefix="other-bounces") is None


def test_what_is_not_a_verp_address_reads_as_none() -> None:
    for address in [RETURN_PATH, "news-bounces+joe@lists.example.com", "nobody", "", "+=@x"]:
        assert verp_recipient(address) is None, address
    assert verp_recipient("news-bounces+joe+tag=example.org@x", "news-bounces") == (
        "joe+tag@example.org"
    )


def test_an_international_domain_is_read_back_in_unicode() -> None:
    encoded = verp_address(RETURN_PATH, "jöe@xn--exmple-cua.org")  # as the relay sends it
    assert verp_recipient(encoded, "news-bounces") == "jöe@exämple.org"


def test_a_format_of_ones_own() -> None:
    dashes = Verp(separator="-", equals="#")
    encoded = verp_address("news@lists.example.com", "joe@example.org", dashes)
    assert encoded == "news-joe#example.org@lists.example.com"
    assert verp_recipient(encoded, "news", dashes) == "joe@example.org"
    assert verp_recipient(encoded) is None  # the default format does not read it
    for separator, equals in [("@", "="), ("+", "+"), ("ab", "="), ("+", " "), ("x", "=")]:
        with pytest.raises(ValueError, match="VERP"):
            Verp(separator, equals)


def test_envelopes() -> None:
    rcpts = ["a@example.org", "b@example.net"]
    assert envelopes(RETURN_PATH, rcpts) == [(RETURN_PATH, rcpts)]
    assert envelopes(RETURN_PATH, rcpts, True) == [
        ("news-bounces+a=example.org@lists.example.com", ["a@example.org"]),
        ("news-bounces+b=example.net@lists.example.com", ["b@example.net"]),
    ]
    with pytest.raises(ValueError, match="null sender"):
        envelopes("", rcpts, True)


async def test_a_route_captures_the_encoded_member(make_module: Callable[..., str]) -> None:
    name = make_module(
        """
        from mailrouter import route, stateless
        from mailrouter.outbound import verp

        bounced = []


        @route(r"(list)-bounces\\+(member)@(host)", list="[a-z]+", member=verp.MEMBER)
        @stateless
        def BOUNCE(message, list=None, member=None, host=None):
            bounced.append((list, verp.DEFAULT.member(member)))
        """
    )
    router = Router(defaults={"host": r"lists\.example\.com"})
    router.load([name])
    address = verp_address(RETURN_PATH, "Joe.Smith+x@Example.ORG")
    message = MailRequest(None, "", [address], b"Subject: bounce\r\n\r\nfailed\r\n")
    result = await router.deliver(message)
    assert not result.queued
    assert importlib.import_module(name).bounced == [("news", "joe.smith+x@example.org")]
    assert router.match(RETURN_PATH) == []  # the plain bounce address is not VERP's route


async def test_the_relay_sends_each_recipient_its_own_return_path(tmp_path: Path) -> None:
    sink = Sink()
    sink.rcpt_replies = {
        "gone@example.net": "550 5.1.1 No such user",
        "busy@example.net": "451 4.3.0 Try later",
    }
    post = MailResponse(
        to="news@lists.example.com", sender="ann@example.org", subject="hi", text="Hi."
    )
    members = ["ok@example.org", "gone@example.net", "busy@example.net"]
    async with sink_server(sink) as port:
        relay = Relay(
            ConnectionOptions("127.0.0.1", port),
            outbox=tmp_path / "outbox",
            failed=tmp_path / "failed",
        )
        result = await relay.send_async(post, sender=RETURN_PATH, recipients=members, verp=True)
    (received,) = sink.received
    assert received.sender == "news-bounces+ok=example.org@lists.example.com"
    assert received.recipients == ["ok@example.org"]
    assert result.sender == RETURN_PATH and result.delivered == ("ok@example.org",)
    assert set(result.failed) == {"gone@example.net"} and set(result.deferred) == {
        "busy@example.net"
    }
    assert [part.sender for part in result.parts] == [verp_address(RETURN_PATH, m) for m in members]
    assert not result.ok and result.outbox_key and result.failed_key
    deferred = Queue(tmp_path / "outbox").read(result.outbox_key)
    assert deferred.message.sender == "news-bounces+busy=example.net@lists.example.com"
    assert deferred.message.recipients == ["busy@example.net"]  # retried with its own path
    failed = Queue(tmp_path / "failed").read(result.failed_key)
    assert failed.message.sender == "news-bounces+gone=example.net@lists.example.com"


async def test_one_recipient_one_transaction_without_verp(tmp_path: Path) -> None:
    sink = Sink()
    async with sink_server(sink) as port:
        relay = Relay(ConnectionOptions("127.0.0.1", port))
        post = MailResponse(to="a@example.org", sender="ann@example.org", subject="hi", text="Hi.")
        result = await relay.send_async(post, sender=RETURN_PATH, recipients=["a@x.org", "b@x.org"])
    (received,) = sink.received
    assert received.sender == RETURN_PATH and received.recipients == ["a@x.org", "b@x.org"]
    assert result.parts == ()


def test_the_test_outbox_shows_the_return_paths(outbox: Outbox) -> None:
    post = MailResponse(
        to="news@lists.example.com", sender="ann@example.org", subject="hi", text="x"
    )
    outbox.send(post, sender=RETURN_PATH, recipients=["a@example.org", "b@example.net"], verp=True)
    assert [(sent.sender, sent.recipients) for sent in outbox.sent] == [
        ("news-bounces+a=example.org@lists.example.com", ("a@example.org",)),
        ("news-bounces+b=example.net@lists.example.com", ("b@example.net",)),
    ]
