"""MailResponse builds correct MIME; reply() threads and never answers automatic mail."""

from __future__ import annotations

from email import message_from_bytes, message_from_string, policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from mailrouter.errors import MailRouterError
from mailrouter.message import MailRequest
from mailrouter.outbound.response import (
    HeaderInjectionError,
    MailResponse,
    is_automatic,
    reply,
    reply_subject,
)


def parse(response: MailResponse) -> EmailMessage:
    """The response's wire bytes parsed back, as a receiver would see them."""
    data = response.as_bytes()
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    parsed = message_from_bytes(data, policy=policy.default.clone(linesep="\r\n"))
    assert isinstance(parsed, EmailMessage)
    return parsed


def text_of(part: EmailMessage | None) -> str:
    """A text part's content with the wire's CRLF line endings as plain newlines."""
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def basic(**kw: object) -> MailResponse:
    args: dict[str, object] = {"to": "bob@example.com", "sender": "alice@example.org"}
    args.setdefault("subject", "hello")
    args.update(kw)
    return MailResponse(**args)  # type: ignore[arg-type]


def test_text_only() -> None:
    response = basic(text="Hi Bob.\n")
    msg = parse(response)
    assert msg.get_content_type() == "text/plain"
    assert text_of(msg) == "Hi Bob.\n"
    assert msg["From"] == "alice@example.org"
    assert msg["To"] == "bob@example.com"
    assert msg["Subject"] == "hello"
    assert msg["MIME-Version"] == "1.0"
    assert response.recipients == ("bob@example.com",)
    assert response.envelope_sender == "alice@example.org"


def test_html_only() -> None:
    msg = parse(basic(html="<p>Hi</p>"))
    assert msg.get_content_type() == "text/html"
    assert msg.get_content().strip() == "<p>Hi</p>"


def test_text_and_html_make_an_alternative() -> None:
    msg = parse(basic(text="plain", html="<b>rich</b>"))
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert msg.get_body(("plain",)).get_content().strip() == "plain"  # type: ignore[union-attr]
    assert msg.get_body(("html",)).get_content().strip() == "<b>rich</b>"  # type: ignore[union-attr]
    assert all("MIME-Version" not in part for part in parts)


def test_attachments_from_paths_and_bytes(tmp_path: Path) -> None:
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF-1.4 binary \x00\xff")
    response = basic(
        text="see attached",
        html="<p>see attached</p>",
        attachments=[
            report,
            ("data.csv", b"a,b\n1,2\n"),
            ("blob", b"\x00\x01", None),
            ("x.bin", b"xyz", "application/x-custom"),
        ],
    )
    msg = parse(response)
    assert msg.get_content_type() == "multipart/mixed"
    assert msg.get_body(("plain",)).get_content().strip() == "see attached"  # type: ignore[union-attr]
    found = {
        part.get_filename(): (part.get_content_type(), part.get_payload(decode=True))
        for part in msg.iter_attachments()
    }
    assert found == {
        "report.pdf": ("application/pdf", b"%PDF-1.4 binary \x00\xff"),
        "data.csv": ("text/csv", b"a,b\n1,2\n"),
        "blob": ("application/octet-stream", b"\x00\x01"),
        "x.bin": ("application/x-custom", b"xyz"),
    }


def test_international_addresses_and_subject() -> None:
    response = MailResponse(
        to=["Jörg Müller <joerg@bücher.de>", "plain@example.com"],
        sender="Zoë Ünal <zoe@straße.example>",
        subject="Grüße aus Köln \u2013 日本語" + " long" * 20,
        text="Schöne Grüße\n",
        cc="Ça Va <cava@example.fr>",
    )
    data = response.as_bytes()
    assert data.isascii()  # no SMTPUTF8 needed: names and subject are RFC 2047 encoded
    assert not response.smtputf8
    msg = message_from_bytes(data, policy=policy.default)
    to = msg["To"].addresses
    assert (to[0].display_name, to[0].addr_spec) == ("Jörg Müller", "joerg@xn--bcher-kva.de")
    assert to[1].addr_spec == "plain@example.com"
    sender = msg["From"].addresses[0]
    assert sender.display_name == "Zoë Ünal"
    assert sender.domain == "xn--strae-oqa.example"  # IDNA 2008: ß is kept, not mapped to ss
    assert msg["Cc"].addresses[0].display_name == "Ça Va"
    assert msg["Subject"] == "Grüße aus Köln \u2013 日本語" + " long" * 20
    assert text_of(msg) == "Schöne Grüße\n"
    assert response.recipients == (
        "joerg@xn--bcher-kva.de",
        "plain@example.com",
        "cava@example.fr",
    )
    assert response.envelope_sender == "zoe@xn--strae-oqa.example"


def test_non_ascii_local_part_needs_smtputf8() -> None:
    response = basic(to="Jörg <jörg@example.de>", text="x")
    assert response.smtputf8
    data = response.as_bytes()
    assert "To: Jörg <jörg@example.de>".encode() in data  # raw UTF-8 (RFC 6532)
    msg = message_from_string(data.decode(), policy=policy.default)
    assert msg["To"].addresses[0].addr_spec == "jörg@example.de"


def test_message_id_and_date() -> None:
    response = basic(text="x", sender="Alice <alice@bücher.de>")
    msg = parse(response)
    assert msg["Message-ID"] == response.message_id
    assert response.message_id.startswith("<")
    assert response.message_id.endswith("@xn--bcher-kva.de>")
    assert parsedate_to_datetime(msg["Date"]).tzinfo is not None
    assert parse(response)["Message-ID"] == response.message_id  # stable across renderings
    assert basic(text="x").message_id != basic(text="x").message_id


def test_extra_headers_and_bcc() -> None:
    response = basic(
        text="x",
        bcc="hidden@example.net",
        headers={"Reply-To": "team@example.org", "X-Ticket": "42", "Message-ID": "<given@x.org>"},
    )
    msg = parse(response)
    assert msg["Reply-To"] == "team@example.org"
    assert msg["X-Ticket"] == "42"
    assert msg["Message-ID"] == "<given@x.org>" == response.message_id
    assert "Bcc" not in msg
    assert b"hidden" not in response.as_bytes()
    assert response.recipients == ("bob@example.com", "hidden@example.net")


@pytest.mark.parametrize(
    "kw",
    [
        {"to": "bob@example.com\r\nBcc: victim@example.net"},
        {"to": ["ok@example.com", "bob@example.com\nBcc: victim@example.net"]},
        {"cc": "carol@example.com\rX-Evil: 1"},
        {"bcc": "x@example.com\n"},
        {"sender": "alice@example.org\r\nBcc: victim@example.net"},
        {"subject": "hi\r\nBcc: victim@example.net"},
        {"subject": "hi\nthere"},
        {"headers": {"X-Note": "a\r\nBcc: victim@example.net"}},
        {"headers": {"X-Note\r\nBcc": "victim@example.net"}},
        {"headers": {"Message-ID": "<a@b>\r\nBcc: v@x"}},
        {"attachments": [("a.txt\r\nBcc: v@x", b"x")]},
        {"attachments": [("a.txt", b"x", "text/plain\r\nBcc: v@x")]},
    ],
)
def test_header_injection_is_refused(kw: dict[str, object]) -> None:
    with pytest.raises(HeaderInjectionError, match="CR or LF") as info:
        basic(text="x", **kw)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, MailRouterError)


@pytest.mark.parametrize(
    "kw",
    [
        {"to": "not an address"},
        {"to": []},
        {"sender": "a@x.org, b@y.org"},
        {"headers": {"Bad Name": "x"}},
        {"headers": {"To": "x@y.org"}},
    ],
)
def test_invalid_arguments_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        basic(text="x", **kw)


ORIGINAL = (
    "From: Bob Sender <bob@example.com>\r\n"
    "To: help@service.example\r\n"
    "Subject: Need help\r\n"
    "Message-ID: <orig-2@example.com>\r\n"
    "References: <orig-0@example.com>\r\n <orig-1@example.com>\r\n"
    "{extra}"
    "\r\n"
    "Please help.\r\n"
)


def request(extra: str = "", sender: str = "bob@example.com", body: str = ORIGINAL) -> MailRequest:
    data = body.format(extra=extra).encode()
    return MailRequest(("127.0.0.1", 1), sender, ["help@service.example"], data)


def test_reply_threads_properly() -> None:
    answer = reply(request(), text="Here you go.")
    assert answer is not None
    msg = parse(answer)
    assert msg["In-Reply-To"] == "<orig-2@example.com>"
    assert msg["References"].split() == [
        "<orig-0@example.com>",
        "<orig-1@example.com>",
        "<orig-2@example.com>",
    ]
    assert msg["Subject"] == "Re: Need help"
    assert msg["To"].addresses[0].addr_spec == "bob@example.com"
    assert msg["To"].addresses[0].display_name == "Bob Sender"
    assert msg["From"] == "help@service.example"  # the address the message was sent to
    assert msg["Auto-Submitted"] == "auto-replied"
    assert text_of(msg) == "Here you go.\n"


def test_reply_uses_in_reply_to_without_references() -> None:
    body = "From: bob@example.com\r\nSubject: x\r\nMessage-ID: <b@x>\r\nIn-Reply-To: <a@x>\r\n\r\n"
    answer = reply(request(body=body), text="y", sender="Service <svc@service.example>")
    assert answer is not None
    msg = parse(answer)
    assert msg["References"] == "<a@x> <b@x>"
    assert msg["From"].addresses[0].display_name == "Service"


@pytest.mark.parametrize(
    "subject",
    ["Re: Need help", "RE: Need help", "re:Need help", "Re[2]: Need help", "  Re : Need help"],
)
def test_re_is_added_once(subject: str) -> None:
    assert reply_subject(subject) == " ".join(subject.split())
    answer = reply(request(body=ORIGINAL.replace("Need help", subject)), text="x")
    assert answer is not None
    assert not parse(answer)["Subject"].lower().startswith("re: re")


def test_reply_subject_forms() -> None:
    assert reply_subject("Hello") == "Re: Hello"
    assert reply_subject("") == "Re:"
    assert reply_subject("Regarding the plan") == "Re: Regarding the plan"
    assert reply_subject("Fwd: x") == "Re: Fwd: x"


def test_reply_prefers_reply_to() -> None:
    extra = "Reply-To: Team <team@example.com>, other@example.net\r\n"
    answer = reply(request(extra), text="x")
    assert answer is not None
    assert answer.recipients == ("team@example.com", "other@example.net")


def test_reply_falls_back_to_the_envelope_sender() -> None:
    body = "Subject: no from\r\nMessage-ID: <n@x>\r\n\r\nx\r\n"
    answer = reply(request(body=body, sender="env@example.org"), text="x")
    assert answer is not None
    assert answer.recipients == ("env@example.org",)


def test_reply_to_an_explicit_address_keeps_the_guards() -> None:
    answer = reply(request(sender="env@example.org"), text="x", to="env@example.org")
    assert answer is not None and answer.recipients == ("env@example.org",)
    assert parse(answer)["In-Reply-To"] == "<orig-2@example.com>"
    assert reply(request(sender=""), text="x", to="someone@example.org") is None


def test_reply_passes_options_through() -> None:
    answer = reply(
        request(),
        html="<p>x</p>",
        subject="Custom",
        cc="boss@service.example",
        headers={"X-Ticket": "7"},
    )
    assert answer is not None
    msg = parse(answer)
    assert msg["Subject"] == "Custom"
    assert msg["X-Ticket"] == "7"
    assert msg["In-Reply-To"] == "<orig-2@example.com>"
    assert answer.recipients == ("bob@example.com", "boss@service.example")


@pytest.mark.parametrize(
    ("extra", "sender"),
    [
        ("", ""),
        ("", "<>"),
        ("Auto-Submitted: auto-replied\r\n", "bob@example.com"),
        ("Auto-Submitted: auto-generated; owner-email=x@y\r\n", "bob@example.com"),
        ("Precedence: bulk\r\n", "bob@example.com"),
        ("Precedence: List\r\n", "bob@example.com"),
        ("Precedence: junk\r\n", "bob@example.com"),
        ("List-Id: Users <users.lists.example.com>\r\n", "bob@example.com"),
        ("Content-Type: multipart/report; report-type=delivery-status; b=x\r\n", "bob@x.org"),
    ],
)
def test_automatic_messages_get_no_reply(extra: str, sender: str) -> None:
    message = request(extra, sender=sender)
    assert is_automatic(message)
    assert reply(message, text="x") is None


@pytest.mark.parametrize("extra", ["", "Auto-Submitted: no\r\n", "Precedence: first-class\r\n"])
def test_personal_messages_are_not_automatic(extra: str) -> None:
    message = request(extra)
    assert not is_automatic(message)
    assert reply(message, text="x") is not None


def test_a_reply_is_itself_automatic() -> None:
    answer = reply(request(), text="x")
    assert answer is not None
    echoed = MailRequest(None, "help@service.example", ["bob@example.com"], answer.as_bytes())
    assert is_automatic(echoed)
    assert reply(echoed, text="loop?") is None
