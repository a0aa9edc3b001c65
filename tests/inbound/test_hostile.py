"""Hostile input over a real socket: each case gets the right reply, and the server keeps serving.

Every case runs a real server (``running`` from helpers) on 127.0.0.1 port 0 and talks to it
with a line-level client that can send raw bytes. After the hostile part, ``assert_still_serving``
checks that a well-behaved client on a new connection is served and that its message reaches the
handler intact, and that no session is left behind (``hostile_session`` runs it after the block).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import re
import socket
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import RECORDING, Client, running, until

from mailrouter import MailRequest
from mailrouter.message import MAX_NESTING
from mailrouter.queue import Queue
from mailrouter.runtime.server import Server

APP = (
    RECORDING
    + """
import asyncio
import threading

release = threading.Event()


@route("x-block@(host)")
@stateless
def BLOCK(message, host=None):
    release.wait(30)


@route("x-hang@(host)")
@stateless
async def HANG(message, host=None):
    await asyncio.Event().wait()


@route("x-nonfunc@(host)")
def START(message, host=None):
    return 42
"""
)

UNROUTED = "x-nowhere@elsewhere.example"  # matches no route: its copy goes to the queue
_tokens = itertools.count()
_open: list[Hostile] = []


class Hostile(Client):
    """The line-level client from helpers, closed by the ``hygiene`` fixture; a reply may take
    10 s rather than 30 s."""

    reply_timeout = 10.0

    @classmethod
    async def connect(cls, port: int) -> Hostile:
        client = await super().connect(port)
        _open.append(client)
        return client


@pytest.fixture(autouse=True)
async def hygiene(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """Close every client a test opened; nothing may go wrong at the event-loop level."""
    yield
    while _open:
        await _open.pop().close()
    gc.collect()  # "Task exception was never retrieved" is logged when the task is collected
    problems = [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= 40]
    assert problems == []


def received(app: str) -> list[MailRequest]:
    return sys.modules[app].received  # type: ignore[no-any-return]


def internal_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The session errors that fell through to the generic '451 Internal error'."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("session error")]


async def greeted(server: Server, hello: str | None = "EHLO hostile.example") -> Hostile:
    """A connected client past the greeting (and EHLO unless ``hello`` is None)."""
    return await Hostile.greeted(server.port, hello)


def stuff(data: bytes) -> bytes:
    """Dot-stuff ``data`` the way a correct client does (RFC 5321 4.5.2): lines end in CRLF."""
    return b"\r\n".join(b"." + line if line[:1] == b"." else line for line in data.split(b"\r\n"))


def unstuff(data: bytes) -> bytes:
    """What a correct server stores for ``data`` sent after DATA (lines end only in CRLF)."""
    return b"\r\n".join(line[1:] if line[:1] == b"." else line for line in data.split(b"\r\n"))


async def envelope(client: Hostile, sender: str, rcpts: list[str], options: str = "") -> None:
    """MAIL and RCPT that must all be accepted, then DATA."""
    assert (await client.command(f"MAIL FROM:<{sender}>{options}")).startswith("250 2.1.0")
    for rcpt in rcpts:
        assert (await client.command(f"RCPT TO:<{rcpt}>")).startswith("250 2.1.5")
    assert (await client.command("DATA")).startswith("354 ")


async def deliver(client: Hostile, raw: bytes) -> str:
    """Send message text exactly as given, then the final dot; the reply."""
    await client.send(raw + b".\r\n")
    return await client.reply()


async def assert_still_serving(server: Server, app: str) -> None:
    """A well-behaved client is served on a new connection and its message arrives intact."""
    token = next(_tokens)
    sender = f"good{token}@client.example"
    data = (
        f"From: {sender}\r\nTo: good@example.com\r\nSubject: still serving {token}\r\n"
        f"Message-ID: <{token}.good@client.example>\r\n\r\nAll well.\r\n.dot line\r\n"
    ).encode()
    client = await greeted(server)
    await envelope(client, sender, ["good@example.com"])
    assert (await deliver(client, stuff(data))).startswith("250 2.0.0")
    assert (await client.command("QUIT")).startswith("221")
    await client.close()
    mine = [m for m in received(app) if m.sender == sender]
    assert len(mine) == 1
    assert mine[0].recipients == ["good@example.com"] and mine[0].data == data
    await until(lambda: not server.sessions)  # no hostile session is left holding a slot


@asynccontextmanager
async def hostile_session(
    tmp_path: Path, app: str, hello: str | None = "EHLO hostile.example", **overrides: Any
) -> AsyncIterator[tuple[Server, Hostile]]:
    """A running server (``overrides`` are settings) and a ``greeted`` client for the hostile
    part; after it, the client is closed and ``assert_still_serving`` must hold."""
    async with running(tmp_path, app, **overrides) as server:
        client = await greeted(server, hello)
        yield server, client
        await client.close()
        await assert_still_serving(server, app)


def queued_files(tmp_path: Path) -> list[bytes]:
    """The raw bytes of every undeliverable-queue entry."""
    new = tmp_path / "run" / "undeliverable" / "new"
    return [path.read_bytes() for path in sorted(new.iterdir())] if new.is_dir() else []


# -- commands --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [b"NO\x00OP", b"\x00", b"\x00\x00\x00\x00EHLO x", b"NOOP\x00"],
    ids=["inside", "alone", "leading", "trailing"],
)
async def test_nul_bytes_in_a_command(tmp_path: Path, app: str, line: bytes) -> None:
    async with hostile_session(tmp_path, app) as (_, client):
        assert (await client.raw(line)).startswith("500 5.5.2 ")
        assert (await client.command("NOOP")).startswith("250 ")  # still in step


async def test_replies_never_echo_control_bytes(tmp_path: Path, app: str) -> None:
    async with hostile_session(tmp_path, app) as (_, client):
        for line in (b"NO\x00OP", b"NO\rOP", b"\x1b[2J\x1b[31mEVIL"):
            reply = await client.raw(line)
            assert reply.startswith("500 5.5.2 ")
            assert re.fullmatch(r"[\t\x20-\x7e]*", reply), reply  # RFC 5321 textstring


@pytest.mark.parametrize(
    "line",
    [
        b"NOOP " + b"x" * 506,  # 511 + CRLF: one over
        b"NOOP " + b"x" * 600,
        b"MAIL FROM:<" + b"a" * 600 + b"@x.org>",
        b"NOOP " + b"x" * 100_000,
    ],
    ids=["noop-513", "noop-600", "mail-600", "noop-100k"],
)
async def test_command_lines_over_512_octets(tmp_path: Path, app: str, line: bytes) -> None:
    async with hostile_session(tmp_path, app) as (_, client):
        assert (await client.raw(b"NOOP " + b"x" * 505)).startswith("250 ")  # 510 + CRLF: fine
        assert (await client.raw(line)).startswith("500 5.5.2 ")
        assert (await client.command("NOOP")).startswith("250 ")


@pytest.mark.parametrize(("protocol", "hello"), [("smtp", "EHLO"), ("lmtp", "LHLO")])
async def test_repeated_ehlo_does_not_raise_the_command_line_limit(
    tmp_path: Path, app: str, protocol: str, hello: str
) -> None:
    async with running(tmp_path, app, protocol=protocol) as server:
        client = await greeted(server, hello=None)
        for _ in range(20):
            assert (await client.command(f"{hello} again.example")) == "250 HELP"
        line = b"MAIL FROM:<" + b"a" * 529 + b"@x.org>"  # with CRLF, one over 512 + 26 + 10
        assert (await client.raw(line)).startswith("500 5.5.2 ")
        at_the_limit = line.replace(b"aa@", b"a@")  # one octet shorter
        assert (await client.raw(at_the_limit)).startswith("250 2.1.0 ")
        await client.close()


@pytest.mark.parametrize(
    ("lines", "refused"),
    [
        (["RCPT TO:<a@example.com>"], "503 5.5.1 "),
        (["MAIL FROM:<a@x.org>", "DATA"], "503 5.5.1 "),
        (["DATA"], "503 5.5.1 "),
        (["MAIL FROM:<a@x.org>", "MAIL FROM:<b@x.org>"], "503 5.5.1 "),
        (["MAIL FROM:<a@x.org>", "RCPT TO:<a@example.com>", "RSET", "DATA"], "503 5.5.1 "),
        (["MAIL FROM:<a@x.org>", "RCPT TO:<a@example.com>", "DATA now"], "501 5.5.4 "),
    ],
    ids=[
        "rcpt-before-mail",
        "data-before-rcpt",
        "data-first",
        "nested-mail",
        "data-after-rset",
        "data-with-argument",
    ],
)
async def test_out_of_order_commands(
    tmp_path: Path, app: str, lines: list[str], refused: str
) -> None:
    async with hostile_session(tmp_path, app) as (_, client):
        for line in lines[:-1]:
            assert (await client.command(line))[:1] == "2"
        assert (await client.command(lines[-1])).startswith(refused)
        assert (await client.command("NOOP")).startswith("250 ")


async def test_mail_before_ehlo(tmp_path: Path, app: str) -> None:
    async with hostile_session(tmp_path, app, hello=None) as (_, client):
        assert (await client.command("MAIL FROM:<a@x.org>")).startswith("503 5.5.1 ")


async def test_unknown_commands_end_the_session(tmp_path: Path, app: str) -> None:
    async with hostile_session(tmp_path, app) as (_, client):
        for verb in ("TURN", "ETRN x", "XYZZY", "GET / HTTP/1.0"):
            assert (await client.command(verb)).startswith("500 5.5.2 ")
        assert (await client.command("EXPN list")).startswith("502 5.5.1 ")
        assert (await client.command("BOGUS")).startswith("502 5.5.1 ")  # the fifth unknown
        assert await client.closed()


async def test_too_many_errors_get_421_and_a_disconnect(tmp_path: Path, app: str) -> None:
    async with hostile_session(tmp_path, app, max_errors=3) as (_, client):
        assert (await client.command("RCPT TO:<a@example.com>")).startswith("503 5.5.1 ")
        assert (await client.raw(b"MAIL FROM:<a\x00b@x.org>")).startswith("501 5.1.7 ")
        # the third error and everything pipelined behind it: one 421, then nothing is served
        await client.expect(
            b"DATA\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<late@example.com>\r\nDATA\r\n"
            b"Subject: after 421\r\n\r\nx\r\n.\r\n",
            ["503 5.5.1 ", "421 4.7.0 "],
        )
        assert await client.closed()
    assert not [m for m in received(app) if "late@example.com" in m.recipients]


async def test_pipelined_garbage(tmp_path: Path, app: str) -> None:
    async with hostile_session(tmp_path, app, hello=None) as (_, client):
        expected = ["250 HELP", "500 5.5.2 ", "250 2.1.0 ", "250 2.1.5 ", "500 5.5.2 "]
        expected += ["501 5.1.3 ", "354 ", "250 2.0.0 ", "500 5.5.2 ", "250 "]
        await client.expect(
            b"EHLO pipe.example\r\n"
            b"\x00\x01\x02garbage\xff\xfe\r\n"
            b"MAIL FROM:<pipe@client.example>\r\n"
            b"RCPT TO:<pipe@example.com>\r\n"
            b"JUNK JUNK JUNK\r\n"
            b"RCPT TO:<\x00>\r\n"
            b"DATA\r\n"
            b"Subject: pipelined\r\n\r\nbody\r\n.\r\n"
            b"\r\n"
            b"NOOP\r\n",
            expected,
        )
    (message,) = [m for m in received(app) if m.sender == "pipe@client.example"]
    assert message.recipients == ["pipe@example.com"]
    assert message.data == b"Subject: pipelined\r\n\r\nbody\r\n"


# -- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "replies"),
    [
        (b"a\x00b@x.org", ["501 5.1.7 "]),
        (b"a\rb@x.org", ["501 5.1.7 "]),
        (
            b"a\nb@x.org",
            ["501 5.1.7 ", "500 5.5.2 "],  # LF ends the line: "MAIL FROM:<a", then "b@x.org>"
        ),
    ],
    ids=["nul", "cr", "lf"],
)
async def test_control_bytes_in_the_sender(
    tmp_path: Path, app: str, address: bytes, replies: list[str]
) -> None:
    async with hostile_session(tmp_path, app) as (_, client):
        await client.expect(b"MAIL FROM:<" + address + b">\r\n", replies)
        assert (await client.command("MAIL FROM:<fine@x.org>")).startswith("250 2.1.0")


@pytest.mark.parametrize(
    ("address", "replies"),
    [
        (b"a\x00b@example.com", ["501 5.1.3 "]),
        (b"a\rb@example.com", ["501 5.1.3 "]),
        (b"a\nb@example.com", ["501 5.1.3 ", "500 5.5.2 "]),
    ],
    ids=["nul", "cr", "lf"],
)
async def test_control_bytes_in_a_recipient(
    tmp_path: Path, app: str, address: bytes, replies: list[str]
) -> None:
    async with hostile_session(tmp_path, app) as (_, client):
        assert (await client.command("MAIL FROM:<a@x.org>")).startswith("250 2.1.0")
        await client.expect(b"RCPT TO:<" + address + b">\r\n", replies)
        assert (await client.command("RCPT TO:<fine@example.com>")).startswith("250 2.1.5")


@pytest.mark.parametrize(
    ("command", "refused"),
    [
        ("MAIL FROM:<", r"5(01|53) 5\.1\.7 "),
        ("MAIL FROM:<a@", r"5(01|53) 5\.1\.7 "),
        ('MAIL FROM:<"', r"5(01|53) 5\.1\.7 "),
        ("MAIL FROM:<a@[1.2.3.4>", r"5(01|53) 5\.1\.7 "),
        ("RCPT TO:<@a:", r"5(01|53) 5\.1\.3 "),
        ("RCPT TO:<a@[", r"5(01|53) 5\.1\.3 "),
        ("MAIL FROM:<a@b@c>", r"5(01|53) 5\.1\.7 "),
        ("RCPT TO:<a@b@c>", r"5(01|53) 5\.1\.3 "),
        ("RCPT TO:<>", r"5(01|53) 5\.1\.3 "),
    ],
    ids=[
        "mail-lt",
        "mail-at",
        "mail-quote",
        "mail-literal",
        "rcpt-route",
        "rcpt-literal",
        "mail-two-ats",
        "rcpt-two-ats",
        "rcpt-null",
    ],
)
async def test_malformed_addresses_are_syntax_errors(
    tmp_path: Path, app: str, caplog: pytest.LogCaptureFixture, command: str, refused: str
) -> None:
    async with hostile_session(tmp_path, app) as (_, client):
        if command.startswith("RCPT"):
            assert (await client.command("MAIL FROM:<a@x.org>")).startswith("250 2.1.0")
        reply = await client.command(command)
        assert re.match(refused, reply), reply
        assert internal_errors(caplog) == []


async def test_encoded_words_in_envelope_addresses_are_kept_verbatim(
    tmp_path: Path, app: str
) -> None:
    # "=?" and "?=" are plain atext: the stdlib's header parser would RFC 2047-decode them
    async with hostile_session(tmp_path, app) as (_, client):
        await envelope(client, "=?utf-8?q?boss?=@x.org", ["=?utf-8?q?ceo?=@example.com"])
        assert (await deliver(client, b"Subject: ew\r\n\r\nx\r\n")).startswith("250 2.0.0")
    (message,) = [m for m in received(app) if m.data == b"Subject: ew\r\n\r\nx\r\n"]
    assert message.sender == "=?utf-8?q?boss?=@x.org"
    assert message.recipients == ["=?utf-8?q?ceo?=@example.com"]


@pytest.mark.parametrize(
    ("mail", "rcpt", "options", "stored"),
    [
        ('"john doe"@example.com', '"john doe"@example.com', "", None),
        ("joe@[127.0.0.1]", "user@[IPv6:::1]", "", None),
        ("jöe@exämple.org", "ünï@exämple.com", " SMTPUTF8 BODY=8BITMIME", None),
        (
            "@a.example,@b.example:joe@x.org",
            "@a.example:user@example.com",
            "",
            ("joe@x.org", "user@example.com"),
        ),
        ("", "bounces@example.com", "", None),
    ],
    ids=["quoted-local-part", "ip-literal", "idn-smtputf8", "source-route", "null-sender"],
)
async def test_unusual_but_valid_addresses(
    tmp_path: Path, app: str, mail: str, rcpt: str, options: str, stored: tuple[str, str] | None
) -> None:
    sender, recipient = stored or (mail, rcpt)
    token = next(_tokens)
    data = f"Subject: address {token}\r\n\r\nhello\r\n".encode()
    async with hostile_session(tmp_path, app) as (_, client):
        await envelope(client, mail, [rcpt], options)
        assert (await deliver(client, data)).startswith("250 2.0.0")
    (message,) = [m for m in received(app) if m.data == data]
    assert message.sender == sender
    assert message.recipients == [recipient]


@pytest.mark.parametrize(("protocol", "hello"), [("smtp", "EHLO utf8.example"), ("lmtp", "LHLO x")])
async def test_non_ascii_addresses_need_smtputf8(
    tmp_path: Path, app: str, protocol: str, hello: str
) -> None:
    async with running(tmp_path, app, protocol=protocol) as server:
        client = await greeted(server, hello)
        assert (await client.command("MAIL FROM:<jérôme@example.com>")).startswith("553 5.6.7 ")
        assert (await client.command("MAIL FROM:<jerome@example.com>")).startswith("250 2.1.0")
        assert (await client.command("RCPT TO:<ünï@example.com>")).startswith("553 5.6.7 ")
        assert (await client.raw(b"RCPT TO:<\xff@example.com>")).startswith("553 5.6.7 ")
        assert (await client.command("RCPT TO:<uni@example.com>")).startswith("250 2.1.5")
        assert (await client.command("RSET")).startswith("250 ")
        await envelope(client, "jérôme@example.com", ["ünï@example.com"], " SMTPUTF8")
        assert (await deliver(client, b"Subject: utf8\r\n\r\nx\r\n")).startswith("250 2.0.0")
        await client.close()
    (message,) = [m for m in received(app) if m.data == b"Subject: utf8\r\n\r\nx\r\n"]
    assert (message.sender, message.recipients) == ("jérôme@example.com", ["ünï@example.com"])


@pytest.mark.parametrize(
    ("lines", "replies"),
    [
        ([b"MAIL FROM:<a@x.org>\r\nBcc: victim@evil.example"], ["250 2.1.0 ", "500 5.5.2 "]),
        (
            [b"MAIL FROM:<a@x.org>", b"RCPT TO:<inj@example.com>\r\nBcc: victim@evil.example>"],
            ["250 2.1.0 ", "250 2.1.5 ", "500 5.5.2 "],
        ),
        ([b"MAIL FROM:<a@x.org\rBcc: victim@evil.example>"], ["501 5.5.4 "]),
        (
            [b"MAIL FROM:<a@x.org>", b"RCPT TO:<inj@example.com\rBcc: victim@evil.example>"],
            ["250 2.1.0 ", "501 5.5.4 "],
        ),
        (
            [b"MAIL FROM:<a@x.org>", b"RCPT TO:<=?utf-8?q?a=0D=0ABcc:_victim@evil.example?=>"],
            ["250 2.1.0 ", "501 5.1.3 "],
        ),
    ],
    ids=["mail-lf", "rcpt-lf", "mail-cr", "rcpt-cr", "rcpt-encoded-crlf"],
)
async def test_header_injection_through_addresses(
    tmp_path: Path, app: str, lines: list[bytes], replies: list[str]
) -> None:
    data = b"Subject: injection\r\n\r\nbody\r\n"
    async with hostile_session(tmp_path, app) as (_, client):
        await client.expect(b"".join(line + b"\r\n" for line in lines), replies)
        # finish (or start over) cleanly; one copy to a handler, one to the queue
        assert (await client.command("RSET")).startswith("250 ")
        await envelope(client, "a@x.org", ["inj@example.com", UNROUTED])
        assert (await deliver(client, data)).startswith("250 2.0.0")
    (message,) = [m for m in received(app) if m.data == data]
    assert "Bcc" not in message and message.recipients == ["inj@example.com", UNROUTED]
    (entry,) = queued_files(tmp_path)
    assert not re.search(rb"(?mi)^bcc:", entry)
    assert b"evil.example" not in entry


# -- message content -------------------------------------------------------------------------

_SMUGGLED = (
    b"MAIL FROM:<evil@x.org>\r\nRCPT TO:<smuggled@example.com>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nevil\r\n"
)


@pytest.mark.parametrize(
    "body",
    [
        b"Subject: s\r\n\r\nfirst\n.\r\n" + _SMUGGLED,
        b"Subject: s\r\n\r\nfirst\r\n.\n" + _SMUGGLED,
        b"Subject: s\r\n\r\nfirst\n.\n" + _SMUGGLED,
        b"Subject: s\r\n\r\nfirst\r.\r\n" + _SMUGGLED,
        b"Subject: s\r\n\r\nfirst\r\n.\r" + _SMUGGLED,
        b"Subject: s\r\n\r\nbare\rcarriage\rreturns\r\nbare\nline\nfeeds\r\n",
    ],
    ids=["lf-dot-crlf", "crlf-dot-lf", "lf-dot-lf", "cr-dot-crlf", "crlf-dot-cr", "bare-cr-lf"],
)
async def test_smtp_smuggling_and_bare_line_ends(tmp_path: Path, app: str, body: bytes) -> None:
    async with hostile_session(tmp_path, app) as (_, client):
        await envelope(client, "sender@x.org", ["victim@example.com"])
        assert (await deliver(client, body)).startswith("250 2.0.0")
        # exactly one reply for the whole thing: the next reply belongs to the next command
        assert (await client.command("NOOP")) == "250 OK"
    assert not [m for m in received(app) if "smuggled@example.com" in m.recipients]
    (message,) = [m for m in received(app) if m.sender == "sender@x.org"]
    assert message.recipients == ["victim@example.com"]
    assert message.data == unstuff(body)


def nested(depth: int) -> bytes:
    """A message of ``depth`` multiparts, each inside the one before, around a text part."""
    return (
        b"Subject: deep\r\nMIME-Version: 1.0\r\n"
        + b"".join(
            b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
            for i in range(depth)
        )
        + b"Content-Type: text/plain\r\n\r\nleaf\r\n"
        + b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    )


_WORDS = (b"=?utf-8?b?w6k=?=", b"=?iso-8859-1?q?=E9?=", b"=?x-bogus?q?x?=", b"=?utf-8?b?!!?=")
_MULTIPART = b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="XYZ"\r\n'
BODIES = {
    "empty": b"",
    "headers-only": b"From: a@x.org\r\nSubject: nothing else\r\n",
    "truncated-mime": _MULTIPART
    + b"\r\n--XYZ\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"SGVsbG8gV29y\r\n",
    "missing-final-boundary": _MULTIPART
    + b"\r\n--XYZ\r\nContent-Type: text/plain\r\n\r\none\r\n--XYZ\r\n"
    b"Content-Type: text/html\r\n\r\n<p>two\r\n",
    "multipart-without-boundary": b"Content-Type: multipart/mixed\r\n\r\n--\r\nhuh\r\n",
    "malformed-headers": b'Subject: x\r\nContent-Type: ;;;=;"\r\nNo colon here\r\n'
    b": no name\r\n\r\nbody\r\n",
    "unknown-charset": b"Subject: =?x-no-such-charset?q?caf=E9?=\r\n"
    b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\ncaf\xe9 \xff\r\n",
    "conflicting-charsets": b"Subject: =?koi8-r?b?8NLJ18XU?= =?utf-8?q?=C3=A9?=\r\n"
    b"Content-Type: text/plain; charset=utf-8; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\ncaf\xe9 \xc3\xa9\r\n",
    "8bit-utf8-headers": "Subject: café ünïcode\r\nFrom: Jöe <joe@x.org>\r\n\r\nnaïve\r\n".encode(),
    "invalid-utf8-headers": b"Subject: \xff\xfe\xc3(\xed\xa0\x80\r\nFrom: \x80\x81 <a@x.org>\r\n"
    b"X-\xff: \xfe\r\n\r\n\xc0\xaf\r\n",
    "encoded-word-bomb": b"Subject: "
    + b"\r\n ".join(_WORDS[i % len(_WORDS)] for i in range(5000))
    + b"\r\n\r\nbody\r\n",
    "nested-to-the-limit": nested(MAX_NESTING),
    "broken-transfer-encodings": _MULTIPART
    + b"\r\n--XYZ\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"!!!not base64@@@\r\n--XYZ\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n=\r\n--XYZ--\r\n",
    "nul-and-dots": b"Subject: nul\x00here\r\n\r\nbody\x00nul\r\n.\r\n..\r\n. \r\n",
}


@pytest.mark.parametrize("data", BODIES.values(), ids=BODIES.keys())
async def test_hostile_messages_reach_the_handler_byte_exact(
    tmp_path: Path, app: str, data: bytes
) -> None:
    async with hostile_session(tmp_path, app) as (_, client):
        await envelope(client, "mime@x.org", ["mime@example.com"])
        assert (await deliver(client, stuff(data))).startswith("250 2.0.0")
    (message,) = [m for m in received(app) if m.sender == "mime@x.org"]
    assert message.data == data


@pytest.mark.parametrize(
    "data",
    [
        nested(MAX_NESTING + 1),
        nested(2500),  # 174 KB: the email package's parser fails with RecursionError
        b"Content-Type: message/rfc822\r\n\r\n" * 2500 + b"Subject: inner\r\n\r\nx\r\n",
    ],
    ids=["multipart-101", "multipart-2500", "message-2500"],
)
async def test_mime_nesting_over_the_limit(tmp_path: Path, app: str, data: bytes) -> None:
    async with hostile_session(tmp_path, app) as (_, client):
        await envelope(client, "deep@x.org", ["deep@example.com"])
        assert (await deliver(client, data)) == "554 5.6.0 MIME nesting exceeds 100 levels"
        assert (await client.command("NOOP")) == "250 OK"
    assert not [m for m in received(app) if m.sender == "deep@x.org"]


@pytest.mark.parametrize(  # line lengths without the CRLF
    ("length", "accepted"), [(998, True), (999, False), (1200, False), (100_000, False)], ids=str
)
async def test_data_lines_over_1000_octets(
    tmp_path: Path, app: str, length: int, accepted: bool
) -> None:
    data = b"Subject: long\r\n\r\n" + b"x" * length + b"\r\n"
    async with hostile_session(tmp_path, app) as (_, client):
        await envelope(client, "long@x.org", ["long@example.com"])
        reply = await deliver(client, data)
        assert reply.startswith("250 2.0.0" if accepted else "500 5.5.2 ")
        assert (await client.command("NOOP")) == "250 OK"
    assert [m.data for m in received(app) if m.sender == "long@x.org"] == (
        [data] if accepted else []
    )


_HOP = b"Received: from hop%d.example by relay.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"


@pytest.mark.parametrize(
    ("trace", "refused"),
    [
        (b"".join(_HOP % i for i in range(51)), True),
        (b"".join(b"rEcEiVeD: h%d\r\n" % i for i in range(51)), True),
        (b"".join(b"Received: h%d\n" % i for i in range(60)), True),  # LF-only header lines
        (b"".join(_HOP % i for i in range(50)), False),
        # an LF-only header ends at the first LF LF; Received lines quoted in the body
        # (a bounce, a forwarded message) are not hops
        (b"Received: h\nSubject: quoted\n\n" + b"".join(_HOP % i for i in range(60)), False),
    ],
    ids=["51", "51-any-case", "60-bare-lf", "50-accepted", "quoted-in-body"],
)
async def test_mail_loop(tmp_path: Path, app: str, trace: bytes, refused: bool) -> None:
    data = trace + b"Subject: loop\r\n\r\nround and round\r\n"
    async with hostile_session(tmp_path, app) as (server, client):
        assert server.settings.max_received_headers == 50
        await envelope(client, "loop@x.org", ["loop@example.com"])
        reply = await deliver(client, data)
        assert reply.startswith("554 5.4.6 " if refused else "250 2.0.0")
    delivered = [m.data for m in received(app) if m.sender == "loop@x.org"]
    assert delivered == ([] if refused else [data])


# -- limits ----------------------------------------------------------------------------------


async def test_recipients_beyond_the_limit(tmp_path: Path, app: str) -> None:
    rcpts = [f"r{i}@example.com" for i in range(8)]
    async with hostile_session(tmp_path, app, max_recipients=5) as (_, client):
        assert (await client.command("MAIL FROM:<many@x.org>")).startswith("250 2.1.0")
        replies = [await client.command(f"RCPT TO:<{rcpt}>") for rcpt in rcpts]
        assert [r[:10] for r in replies] == ["250 2.1.5 "] * 5 + ["452 4.5.3 "] * 3
        assert (await client.command("DATA")).startswith("354 ")
        assert (await deliver(client, b"Subject: many\r\n\r\nx\r\n")).startswith("250 2.0.0")
    calls = [m for m in received(app) if m.sender == "many@x.org"]  # one per recipient
    assert [m.recipient for m in calls] == rcpts[:5]
    assert all(m.recipients == rcpts[:5] for m in calls)


async def test_declared_size_over_the_limit(tmp_path: Path, app: str) -> None:
    async with hostile_session(tmp_path, app, max_message_size=2000) as (_, client):
        for size in ("2001", "9" * 40):
            reply = await client.command(f"MAIL FROM:<big@x.org> SIZE={size}")
            assert reply.startswith("552 5.3.4 ")
        assert (await client.command("MAIL FROM:<big@x.org> SIZE=-1")).startswith("501 5.5.4 ")
        assert (await client.command("MAIL FROM:<big@x.org> SIZE=1999")).startswith("250 2.1.0")


async def test_undeclared_size_over_the_limit(tmp_path: Path, app: str) -> None:
    big = b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 50
    async with hostile_session(tmp_path, app, max_message_size=2000) as (_, client):
        await envelope(client, "big@x.org", ["big@example.com"])
        assert (await deliver(client, big)).startswith("552 5.3.4 ")
        assert (await client.command("NOOP")) == "250 OK"
    assert not [m for m in received(app) if m.sender == "big@x.org"]


async def test_connections_beyond_the_limit_while_one_completes(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, max_connections=3) as server:
        busy = await greeted(server)
        await envelope(busy, "busy@x.org", ["busy@example.com"])
        await busy.send(b"Subject: busy\r\n\r\nfirst half\r\n")
        idle = [await greeted(server, hello=None) for _ in range(2)]
        extra = await asyncio.gather(*(Hostile.connect(server.port) for _ in range(10)))
        for client in extra:
            assert (await client.reply()).startswith("421 4.7.0 ")
            assert await client.closed()
            await client.close()
        assert (await deliver(busy, b"second half\r\n")).startswith("250 2.0.0")
        for client in [busy, *idle]:
            await client.close()
        await assert_still_serving(server, app)
    (message,) = [m for m in received(app) if m.sender == "busy@x.org"]
    assert message.data == b"Subject: busy\r\n\r\nfirst half\r\nsecond half\r\n"


# -- clients that go away or stall -----------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_client_disconnects_in_the_middle_of_data(tmp_path: Path, app: str, how: str) -> None:
    async with running(tmp_path, app) as server:
        client = await greeted(server)
        await envelope(client, "gone@x.org", ["gone@example.com"])
        await client.send(b"Subject: half\r\n\r\nhalf a line without its end")
        if how == "reset":
            sock = client.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.close()
        await until(lambda: not server.sessions)
        await assert_still_serving(server, app)
    assert not [m for m in received(app) if m.sender == "gone@x.org"]


async def test_client_that_never_sends_the_final_dot(tmp_path: Path, app: str) -> None:
    async with hostile_session(tmp_path, app, idle_timeout=0.3) as (_, client):
        await envelope(client, "stall@x.org", ["stall@example.com"])
        await client.send(b"Subject: stalled\r\n\r\nand then nothing\r\n")
        assert (await client.reply()).startswith("421 4.4.2 ")
        assert await client.closed()
    assert not [m for m in received(app) if m.sender == "stall@x.org"]


# -- STARTTLS --------------------------------------------------------------------------------


async def test_starttls_without_tls(tmp_path: Path, app: str) -> None:
    async with hostile_session(tmp_path, app) as (_, client):
        assert (await client.command("STARTTLS")).startswith("454 4.")
        assert (await client.command("NOOP")) == "250 OK"  # still plain text, still in step


@pytest.fixture
def tls_cert(tmp_path: Path) -> str:
    import trustme

    path = tmp_path / "server.pem"
    trustme.CA().issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(path)
    )
    return str(path)


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not a TLS handshake\r\n" * 20,
        b"MAIL FROM:<a@x.org>\r\nRCPT TO:<tls@example.com>\r\nDATA\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a truncated ClientHello
    ],
    ids=["text", "plain-smtp", "truncated-hello"],
)
async def test_starttls_followed_by_garbage(
    tmp_path: Path, app: str, tls_cert: str, garbage: bytes
) -> None:
    async with running(tmp_path, app, tls_cert=tls_cert, idle_timeout=2) as server:
        client = await greeted(server)
        assert (await client.command("STARTTLS")).startswith("220 ")
        await client.send(garbage)
        client.writer.write_eof()
        data = await asyncio.wait_for(client.reader.read(), 10)
        assert b"250" not in data  # nothing was served in plain text
        await client.close()
        await until(lambda: not server.sessions)
        await assert_still_serving(server, app)
    assert not [m for m in received(app) if "tls@example.com" in m.recipients]


async def test_starttls_then_silence_frees_the_connection_slot(
    tmp_path: Path, app: str, tls_cert: str
) -> None:
    async with running(
        tmp_path, app, tls_cert=tls_cert, idle_timeout=0.3, max_connections=2
    ) as server:
        for _ in range(2):
            client = await greeted(server)
            assert (await client.command("STARTTLS")).startswith("220 ")
            assert await client.closed()  # the idle timeout hangs up on the silent handshake
            await client.close()
        await assert_still_serving(server, app)  # a leaked slot shows as 421 4.7.0 at once


# -- handlers that misbehave -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rcpt", "reason"),
    [
        ("x-raise@example.com", "RuntimeError: handler bug"),
        ("x-nonfunc@example.com", "returned 42, not a state function"),
    ],
    ids=["raises", "returns-a-non-function"],
)
async def test_failing_handler_is_queued_and_acknowledged(
    tmp_path: Path, app: str, rcpt: str, reason: str
) -> None:
    data = b"Subject: failing\r\n\r\nx\r\n"
    async with hostile_session(tmp_path, app) as (_, client):
        await envelope(client, f"fail{next(_tokens)}@x.org", [rcpt])
        assert (await deliver(client, data)).startswith("250 2.0.0")
    queue = Queue(tmp_path / "run" / "undeliverable")
    (key,) = queue.keys()
    entry = queue.read(key)
    assert entry.data == data and reason in entry.reasons[rcpt]
    (raw,) = queued_files(tmp_path)
    assert not re.search(rb"(?mi)^bcc:", raw)  # the exception text cannot add a header


@pytest.mark.parametrize(
    "rcpt", ["x-hang@example.com", "x-block@example.com"], ids=["async", "sync"]
)
async def test_handler_that_takes_too_long(tmp_path: Path, app: str, rcpt: str) -> None:
    async with running(tmp_path, app, handler_timeout=0.3) as server:
        try:
            client = await greeted(server)
            await envelope(client, "patient@x.org", [rcpt])
            assert (await deliver(client, b"Subject: slow\r\n\r\nx\r\n")).startswith("451 4.3.0 ")
            assert (await client.command("NOOP")) == "250 OK"
            await client.close()
            await assert_still_serving(server, app)
        finally:
            sys.modules[app].release.set()


# -- encodings in replies --------------------------------------------------------------------


async def test_lmtp_reply_for_a_non_utf8_recipient(
    tmp_path: Path, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = b"Subject: lmtp\r\n\r\nx\r\n"
    async with running(tmp_path, app, protocol="lmtp") as server:
        client = await greeted(server, hello="LHLO lmtp.example")
        # SMTPUTF8: without it, a non-ASCII recipient gets 553 5.6.7 at RCPT, before any reply
        # after DATA that would name it
        assert (await client.command("MAIL FROM:<lmtp@x.org> SMTPUTF8")).startswith("250 2.1.0")
        assert (await client.raw(b"RCPT TO:<\xff@example.com>")).startswith("250 2.1.5")
        assert (await client.command("RCPT TO:<ok@example.com>")).startswith("250 2.1.5")
        assert (await client.command("DATA")).startswith("354 ")
        await client.send(data + b".\r\nNOOP\r\n")  # the NOOP shows a missing reply at once
        for expected in ("250 2.0.0 ", "250 2.0.0 ", "250 OK"):
            assert (await client.reply()).startswith(expected)
        assert internal_errors(caplog) == []
        await client.close()
    # once for each of the two recipients, and no second time from a confused client's retry
    assert [m.data for m in received(app) if m.sender == "lmtp@x.org"] == [data, data]


async def test_reject_unroutable_with_a_non_utf8_recipient(
    tmp_path: Path, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with hostile_session(tmp_path, app, reject_unroutable=True) as (_, client):
        # SMTPUTF8: without it, the address is refused (553 5.6.7) before the route check
        assert (await client.command("MAIL FROM:<a@x.org> SMTPUTF8")).startswith("250 2.1.0")
        assert (await client.raw(b"RCPT TO:<x-\xff@elsewhere.example>")).startswith("550 5.1.1 ")
        assert internal_errors(caplog) == []


async def test_vrfy_with_a_non_utf8_argument(
    tmp_path: Path, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with hostile_session(tmp_path, app) as (_, client):
        assert re.match(r"5\d\d 5\.\d\.\d ", await client.raw(b"VRFY @\xff")) is not None
        assert internal_errors(caplog) == []
