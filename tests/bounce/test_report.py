"""Delivery status notifications (RFC 3464) read into ``message.bounce``: what failed, why, for
whom, and what was sent; samples in the formats of Postfix and Exchange, and mailrouter's own."""

from __future__ import annotations

from collections.abc import Callable

from helpers import mail

from mailrouter.bounce import Bounce, Status
from mailrouter.message import MailRequest
from mailrouter.outbound.dsn import delivery_report
from mailrouter.replies import Reply

Sample = Callable[..., MailRequest]


def bounce_of(message: MailRequest) -> Bounce:
    bounce = message.bounce
    assert bounce is not None and message.is_bounce()
    return bounce


def test_a_postfix_hard_bounce(sample: Sample) -> None:
    bounce = bounce_of(sample("postfix-user-unknown"))
    assert bounce.detector == "dsn"
    assert bounce.addresses == ("gone.member@example.net",)  # case-folded, as mailrouter keeps
    assert bounce.kind == "hard" and bounce.is_hard() and not bounce.is_soft()
    assert bounce.status == Status(5, 1, 1) and bounce.action == "failed"
    assert bounce.diagnostic == (
        "550 5.1.1 <Gone.Member@Example.NET>: Recipient address rejected: "
        "User unknown in virtual mailbox table"
    )
    assert bounce.reporting_mta == "mx.lists.example.com"
    (recipient,) = bounce.recipients
    assert recipient.remote_mta == "mx1.example.net"
    assert recipient.final_recipient == recipient.original_recipient == "gone.member@example.net"
    assert "x-postfix-queue-id" in bounce.fields and "status" in recipient.fields
    assert bounce.original is not None
    assert bounce.original["Message-ID"] == "<meeting-42@example.org>"
    assert bounce.original["List-Id"] == "<news.lists.example.com>"
    assert bounce.notification is not None
    assert "could not\r\nbe delivered" in bounce.notification.get_content()


def test_a_delay_warning_is_a_soft_bounce_with_the_original_headers(sample: Sample) -> None:
    bounce = bounce_of(sample("postfix-delayed"))
    assert bounce.addresses == ("slow@example.net",)
    assert bounce.kind == "soft" and bounce.action == "delayed" and bounce.status == Status(4, 4, 1)
    assert bounce.diagnostic == "connect to mx1.example.net[192.0.2.25]:25: Connection timed out"
    assert bounce.first.fields["will-retry-until"] == "Sun, 8 Mar 2026 09:58:51 +0000 (UTC)"
    assert bounce.original is not None  # text/rfc822-headers: the headers only
    assert bounce.original["Return-Path"] == "<news-bounces+slow=example.net@lists.example.com>"
    assert bounce.original.get_payload() == ""


def test_an_exchange_non_delivery_report(sample: Sample) -> None:
    bounce = bounce_of(sample("exchange-dsn", "postmaster@contoso.example"))
    assert bounce.addresses == ("pat.doe@contoso.example",)
    assert bounce.status == Status(5, 1, 10) and bounce.is_hard()
    assert bounce.diagnostic is not None
    assert bounce.diagnostic.startswith("550 5.1.10 RESOLVER.ADR.RecipientNotFound")
    assert bounce.reporting_mta == "DM6PR01MB0001.prod.exchangelabs.com"
    assert bounce.original is not None and bounce.original["Subject"] == (
        "[news] Meeting moved to Thursday"
    )


def test_an_internationalised_report(sample: Sample) -> None:
    bounce = bounce_of(sample("global-dsn"))
    assert bounce.addresses == ("jörg@bücher.example",)
    assert bounce.first.remote_mta == "mx.bücher.example"
    assert bounce.original is not None and bounce.original["Subject"] == "[news] Grüße"


def test_a_report_of_successful_delivery_is_no_bounce(sample: Sample) -> None:
    message = sample("delivered")
    assert message.bounce is None and not message.is_bounce()


def test_every_failed_and_delayed_recipient_and_the_hard_one_first() -> None:
    data = (
        b"From: MAILER-DAEMON@mx.example.com\r\nSubject: Delivery Status Notification\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type="delivery-status"; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nSome recipients failed.\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.com\r\n\r\n"
        b"Final-Recipient: rfc822; later@example.net\r\nAction: delayed\r\nStatus: 4.2.2\r\n\r\n"
        b"Final-Recipient: rfc822; fine@example.net\r\nAction: delivered\r\nStatus: 2.0.0\r\n\r\n"
        b"Final-Recipient: rfc822;<dead@example.net>\r\nAction: failed (permanent)\r\n"
        b"Status: 5.1.1\r\n\r\n"
        b"Final-Recipient: rfc822; nocode@example.net\r\nAction: failed\r\n\r\n"
        b"--b--\r\n"
    )
    bounce = bounce_of(MailRequest(None, "", ["list-bounces@example.com"], data))
    assert bounce.addresses == ("later@example.net", "dead@example.net", "nocode@example.net")
    assert [r.kind for r in bounce.recipients] == ["soft", "hard", "hard"]
    assert bounce.first.address == "dead@example.net" and bounce.kind == "hard"
    assert bounce.recipients[2].status is None and bounce.original is None


def test_mailrouters_own_delivery_report_reads_back() -> None:
    original = mail("ann@example.org", ["ok@example.com", "refused@example.com"], "news")
    refused = [Reply("refused@example.com", 550, "5.7.1 Not here")]
    report = delivery_report(original, refused, reporting_host="mx.example.com")
    assert report is not None
    bounce = bounce_of(MailRequest(None, "", ["ann@example.org"], report.as_bytes()))
    assert bounce.addresses == ("refused@example.com",)
    assert bounce.status == Status(5, 7, 1) and bounce.reporting_mta == "mx.example.com"
    assert bounce.original is not None and bounce.original["Subject"] == "news"


def test_read_once_and_shared_by_every_recipients_view(sample: Sample) -> None:
    message = sample("postfix-user-unknown")
    view = message.for_recipient("other@lists.example.com")
    assert view.bounce is message.bounce is not None


def test_a_broken_report_is_no_bounce_and_raises_nothing() -> None:
    data = (
        b"From: MAILER-DAEMON@mx.example.com\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
        b"--x\r\nContent-Type: message/delivery-status\r\n\r\nAction failed\r\n\xff\xfe\r\n--x"
    )
    assert MailRequest(None, "", ["a@example.com"], data).bounce is None
