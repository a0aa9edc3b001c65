"""Failure notices in other formats (flufl.bounce's detectors), and what is no bounce at all:
auto-replies, a person's mail that quotes a bounce, the null sender alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mailrouter import reply
from mailrouter.bounce import Status, from_mail_system, is_auto_reply
from mailrouter.message import MailRequest

Sample = Callable[..., MailRequest]


def test_an_exim_failure_notice(sample: Sample) -> None:
    bounce = sample("exim-plain").bounce
    assert bounce is not None and bounce.detector == "heuristic"
    assert bounce.addresses == ("quit@example.net",)
    assert bounce.is_hard() and bounce.action == "failed"
    assert bounce.status == Status(5, 2, 1)  # from the text: "550 5.2.1 The email account..."
    assert bounce.diagnostic is not None
    assert bounce.diagnostic.startswith("quit@example.net host mail.example.net [198.51.100.7]")
    assert bounce.diagnostic.endswith(
        "550 5.2.1 The email account that you tried to reach is disabled"
    )


def test_a_qmail_failure_notice(sample: Sample) -> None:
    bounce = sample("qmail").bounce
    assert bounce is not None and bounce.addresses == ("nobody@example.org",)
    assert bounce.status == Status(5, 1, 1)
    assert (
        bounce.diagnostic == "<nobody@example.org>: Sorry, no mailbox here by that name. (#5.1.1)"
    )


def test_a_legacy_exchange_report_from_postmaster(sample: Sample) -> None:
    message = sample("exchange-legacy", "postmaster@legacy.example.com")
    bounce = message.bounce
    assert bounce is not None and bounce.addresses == ("old.user@legacy.example.com",)
    assert bounce.is_hard() and bounce.status is None  # no code in it: failed, so hard


@pytest.mark.parametrize("name", ["vacation", "vacation-plain"])
def test_auto_replies_are_no_bounces(sample: Sample, name: str) -> None:
    message = sample(name)
    assert is_auto_reply(message.message)
    assert message.bounce is None and not message.is_bounce()
    assert reply(message, text="thanks") is None  # and still never answered: the null sender


def test_an_unmarked_auto_reply_from_the_null_sender_is_no_bounce() -> None:
    data = (
        b"From: Dana <dana@example.net>\r\nTo: news-bounces@lists.example.com\r\n"
        b"Subject: Re: [news] Hello\r\nAuto-Submitted: auto-replied\r\n\r\n"
        b"I read my mail on Fridays.\r\n"
    )
    message = MailRequest(None, "", ["news-bounces@lists.example.com"], data)
    assert not is_auto_reply(message.message)
    assert message.bounce is None  # flufl.bounce's detectors find no failed address in it


def test_a_person_quoting_a_bounce_sent_no_bounce(sample: Sample) -> None:
    quoted = sample("exim-plain").data.split(b"\r\n\r\n", 1)[1]
    data = b"From: Ann <ann@example.org>\r\nSubject: why did this bounce?\r\n\r\n" + quoted
    message = MailRequest(None, "ann@example.org", ["news@lists.example.com"], data)
    assert not from_mail_system(message.message, message.sender)
    assert message.bounce is None


def test_the_null_sender_alone_makes_no_bounce() -> None:
    data = b"From: someone@example.net\r\nSubject: hello\r\n\r\nJust a note.\r\n"
    message = MailRequest(None, "", ["news@lists.example.com"], data)
    assert from_mail_system(message.message, "") and message.bounce is None


@pytest.mark.parametrize("data", [b"Nothing", b"", b"\r\n\r\n", b"From: <>\r\n\r\nx"])
def test_broken_input_is_no_bounce_and_raises_nothing(data: bytes) -> None:
    assert MailRequest(None, "", ["a@example.com"], data).bounce is None


def test_an_unknown_charset_hides_no_failure_notice() -> None:
    data = (
        b"From: MAILER-DAEMON@mx.example.net\r\nContent-Type: text/plain; charset=nope\r\n\r\n"
        b"Hi. This is the qmail-send program.\r\n\r\n<a@example.net>:\r\n\xe9\xff (#5.1.1)\r\n"
    )
    bounce = MailRequest(None, "", ["a@example.com"], data).bounce
    assert bounce is not None and bounce.addresses == ("a@example.net",)
    assert bounce.status == Status(5, 1, 1)
