"""MailRequest: envelope, lazy parsing, header and part access, and robustness to junk."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailrouter import MailRequest
from mailrouter.message import MAX_NESTING, nested_too_deep, normalize_address

MULTIPART = (
    b"From: Ann <ann@x.org>\r\nTo: list@example.com\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello there\r\n"
    b"--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--XX--\r\n"
)

BOUNCE = (
    b"From: MAILER-DAEMON@x.org\r\nSubject: failure\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
    b"--B\r\nContent-Type: text/plain\r\n\r\nIt failed.\r\n"
    b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x.org\r\n\r\n"
    b"Final-Recipient: rfc822; gone@x.org\r\nAction: failed\r\nStatus: 5.1.1\r\n--B--\r\n"
)


def request(data: bytes, sender: str = "Ann <ANN@x.org>") -> MailRequest:
    return MailRequest(("127.0.0.1", 25), sender, ["List@Example.com", "b@x.org"], data)


def test_envelope_is_kept_in_original_case() -> None:
    msg = request(MULTIPART)
    assert msg.sender == "Ann <ANN@x.org>"
    assert msg.recipients == ["List@Example.com", "b@x.org"]
    assert msg.recipient == "List@Example.com"
    assert msg.route_from == "ann@x.org"
    assert msg.peer == ("127.0.0.1", 25)


def test_original_bytes_are_kept_exactly() -> None:
    msg = request(MULTIPART)
    msg.message  # noqa: B018 - parsing must not change the bytes
    assert msg.data == MULTIPART


def test_headers_body_parts_and_attachments() -> None:
    msg = request(MULTIPART)
    assert msg["Subject"] == "café"
    assert msg["X-Missing"] is None and msg.get("X-Missing", "d") == "d"
    assert "subject" in msg and msg.get_all("To") == ["list@example.com"]
    assert msg.body() == "Hello there"  # the CRLF before a boundary belongs to the boundary
    assert [p.get_content_type() for p in msg.walk()] == [
        "multipart/mixed",
        "text/plain",
        "application/pdf",
    ]
    (attachment,) = msg.attachments()
    assert attachment.get_filename() == "a.pdf"
    assert attachment.get_content() == b"%PDF-"


def test_parse_is_lazy_and_shared_between_recipient_views() -> None:
    msg = request(MULTIPART)
    view = msg.for_recipient("b@x.org")
    assert view.recipient == "b@x.org" and msg.recipient == "List@Example.com"
    assert view.message is msg.message  # parsed once
    assert isinstance(msg.message, EmailMessage)


def test_bounces() -> None:
    assert request(BOUNCE, sender="postmaster@x.org").is_bounce()
    assert request(BOUNCE, sender="").is_bounce()
    assert not request(MULTIPART).is_bounce()
    # the null sender alone is no bounce (auto-replies come from it too: tests/bounce/)
    assert not request(MULTIPART, sender="").is_bounce()
    assert not request(MULTIPART, sender="<>").is_bounce()


def test_normalize_address() -> None:
    assert normalize_address("Joe <JOE@x.org>") == "joe@x.org"
    assert normalize_address("<Joe@X.org>") == "joe@x.org"
    assert normalize_address("joe@x.org") == "joe@x.org"
    assert normalize_address("<>") == normalize_address("") == ""
    assert normalize_address("jöe@exämple.org") == "jöe@exämple.org"


def test_broken_mime_bad_charsets_and_8bit_headers_do_not_raise() -> None:
    samples = [
        b"Subject: \xff\xfe bad\r\nContent-Type: text/plain; charset=nope\r\n\r\n\xe9t\xe9",
        b"Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\nno end boundary",
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64",
        b"Subject: =?utf-8?b?invalid===?= =?bogus?q?x?=\r\n\r\n",
        b'To: a@b, <<<>>>, "unterminated\r\n\r\n',
        b"",
        b"\x00\x00\x00",
    ]
    for data in samples:
        msg = request(data)
        exercise(msg)
        assert msg.data == data


def nested(depth: int, newline: bytes = b"\r\n") -> bytes:
    """``depth`` multiparts, each inside the one before (boundaries in both quoting styles,
    folded or not), around a text part."""
    opening = b'Content-Type: multipart/mixed;\n\tboundary="b%d"\n\n--b%d  \n'
    closing = b"--b%d--\n"
    levels = [(opening if i % 2 else opening.replace(b'"', b"")) % (i, i) for i in range(depth)]
    data = (
        b"Subject: deep\nMIME-Version: 1.0\n"
        + b"".join(levels)
        + b"Content-Type: text/plain\n\nleaf\n"
        + b"".join(closing % i for i in reversed(range(depth)))
    )
    return data.replace(b"\n", newline)


DIGEST = (  # a digest of many messages, each a multipart, some without their end line
    b"Content-Type: multipart/digest; boundary=D\r\n\r\n"
    + b"".join(
        b"--D\r\nContent-Type: message/rfc822\r\n\r\nSubject: %d\r\n"
        b"Content-Type: multipart/alternative; boundary=A%d\r\n\r\n--A%d\r\n\r\ntext\r\n"
        b"%s" % (i, i, i, b"--A%d--\r\n" % i if i % 3 else b"")
        for i in range(3 * MAX_NESTING)
    )
    + b"--D--\r\n"
)


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_nesting_is_counted_as_the_parser_nests(newline: bytes) -> None:
    assert not nested_too_deep(nested(MAX_NESTING, newline))
    assert nested_too_deep(nested(MAX_NESTING + 1, newline))
    assert nested_too_deep(b"Content-Type: message/rfc822\r\n\r\n" * (MAX_NESTING + 1))
    assert not nested_too_deep(b"Content-Type: message/rfc822\r\n\r\n" * MAX_NESTING)
    assert not nested_too_deep(DIGEST)  # 300 messages, 900 parts, 3 levels
    assert not nested_too_deep(MULTIPART) and not nested_too_deep(BOUNCE)
    assert len(list(request(DIGEST).walk())) == 1 + 3 * MAX_NESTING * 3


@pytest.mark.parametrize(
    "data",
    [
        nested(MAX_NESTING + 1),
        nested(2500),  # 174 KB: the email package's parser fails with RecursionError
        nested(2500, b"\r"),  # bare CR line ends, which the scan does not see: the parser fails
        b"Content-Type: message/rfc822\r\n\r\n" * 2500,
    ],
    ids=["multipart-101", "multipart-2500", "bare-cr-2500", "message-2500"],
)
def test_parts_nested_too_deep_are_parsed_once_as_the_header(data: bytes) -> None:
    msg = request(data)
    parsed = msg.message
    assert parsed.defects[-1].args == (
        f"body not parsed: MIME parts nest over {MAX_NESTING} levels deep",
    )
    exercise(msg)
    assert msg["Subject"] in ("deep", None) and msg["X"] is None and msg.body() is None
    assert list(msg.walk()) == [parsed] and list(msg.attachments()) == []
    body = parsed.get_payload()
    assert body and data.endswith(body.encode())  # the body is kept, as it is
    assert msg.message is parsed and msg.for_recipient("b@x.org").message is parsed  # once


def exercise(msg: MailRequest) -> None:
    """Touch every accessor a handler might use."""
    for name in ("Subject", "From", "To", "Content-Type", "Message-ID"):
        msg[name]
        msg.get_all(name)
    msg.keys()
    msg.body()
    list(msg.walk())
    list(msg.attachments())
    msg.is_bounce()


HEADERS = st.sampled_from(
    [b"Subject: ", b"From: ", b"To: ", b"Content-Type: ", b"Content-Transfer-Encoding: ", b"X: "]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(HEADERS, st.binary(max_size=80)), max_size=8),
    st.binary(max_size=400),
    st.text(max_size=40),
)
def test_random_bytes_never_raise(
    headers: list[tuple[bytes, bytes]], body: bytes, sender: str
) -> None:
    data = b"".join(name + value + b"\r\n" for name, value in headers) + b"\r\n" + body
    msg = MailRequest(None, sender, ["a@b"], data)
    exercise(msg)
    assert msg.data == data
    assert isinstance(msg.route_from, str)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    msg = MailRequest(None, "x@y", ["a@b"], data)
    exercise(msg)
    assert msg.data == data


def test_a_single_recipient_given_as_a_string_is_one_recipient() -> None:
    message = MailRequest(None, "a@example.org", "b@example.org", b"Subject: x\r\n\r\nbody\r\n")
    assert message.recipients == ["b@example.org"] and message.recipient == "b@example.org"
