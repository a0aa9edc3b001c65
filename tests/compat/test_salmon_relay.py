"""compat.salmon's Relay to a host: mailrouter prepares the message, smtplib speaks SMTP or
LMTP to a real server (a sink, and a mailrouter server over LMTP), as Salmon's Relay did."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import OUTCOMES, Sink, running, sink_server

from mailrouter.compat.salmon.mail import MailResponse
from mailrouter.compat.salmon.server import Relay
from mailrouter.outbound.sender import DeliveryError


def response(*to: str) -> MailResponse:
    return MailResponse(To=list(to), From="list@example.org", Subject="hi", Body="Hello.\n")


async def test_smtp_to_a_host_with_a_refused_recipient() -> None:
    sink = Sink()
    sink.rcpt_replies["bad@example.com"] = "550 5.1.1 No such user"
    async with sink_server(sink) as port:
        relay = Relay("127.0.0.1", port)
        await asyncio.to_thread(relay.deliver, response("a@example.com"))
        with pytest.raises(DeliveryError, match=r"bad@example\.com.*550 5\.1\.1 No such user"):
            await asyncio.to_thread(relay.deliver, response("b@example.com", "bad@example.com"))
    first, second = sink.received
    assert (first.sender, first.recipients) == ("list@example.org", ["a@example.com"])
    assert second.recipients == ["b@example.com"]  # the other recipient still got it
    assert b"Subject: hi" in first.data and b"Message-ID:" in first.data


async def test_lmtp_gives_each_recipient_its_own_reply(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    outcomes = make_module(OUTCOMES)
    async with running(tmp_path, outcomes, protocol="lmtp") as server:
        relay = Relay("127.0.0.1", server.port, lmtp=True)
        await asyncio.to_thread(relay.deliver, response("ok@example.com"))
        with pytest.raises(DeliveryError, match=r"refuse@example\.com.*550 5\.7\.1 Not here"):
            await asyncio.to_thread(relay.deliver, response("ok@example.com", "refuse@example.com"))


async def test_nothing_listening_is_a_clear_delivery_error() -> None:
    with pytest.raises(DeliveryError, match=r"127\.0\.0\.1:1\b"):
        await asyncio.to_thread(Relay("127.0.0.1", 1).deliver, response("a@example.com"))
