"""A protocol fuzzer: random SMTP sessions against one real server on 127.0.0.1 port 0.

The server runs for the whole module in a background thread with its own event loop, so the
fuzzed test is a plain function and hypothesis drives it without any event-loop plumbing. Each
example is one connection: a random mix of valid commands with random arguments, raw byte lines
and message bodies (dots, CR, LF, NUL, 8-bit). The server must answer every line with a valid
SMTP reply, finish each session cleanly, and afterwards still serve a well-behaved client.
"""

from __future__ import annotations

import asyncio
import logging
import re
import smtplib
import socket
import sys
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import RECORDING, running, wait_for
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mailrouter.runtime.server import Server

T = TypeVar("T")
MODULE = "fuzz_smtp_handlers"
REPLY = re.compile(rb"[2-5]\d\d[ -]")
TIMEOUT = 10.0


class Problems(logging.Handler):
    """Collects event-loop errors ("Exception in callback", unretrieved task exceptions)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class ServerThread:
    """A mailrouter server (``running`` from helpers) on its own event loop in a thread."""

    def __init__(self, tmp_path: Path, *handlers: str, **overrides: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-server")
        self.thread.start()
        self.running = running(tmp_path, *handlers, **overrides)
        self.server: Server = self.call(self.running.__aenter__())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _sessions(self) -> int:
        return len(self.server.sessions)

    def sessions(self) -> int:
        return self.call(self._sessions())

    def stop(self) -> None:
        try:
            self.call(self.running.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / f"{MODULE}.py").write_text(RECORDING)
    problems = Problems()
    logging.getLogger("asyncio").addHandler(problems)
    sys.path.insert(0, str(root))
    try:
        server = ServerThread(
            root,
            MODULE,
            max_message_size=20_000,
            max_recipients=5,
            max_errors=25,
            idle_timeout=TIMEOUT,
        )
        try:
            yield server
        finally:
            server.stop()
        assert problems.messages == []
    finally:
        logging.getLogger("asyncio").removeHandler(problems)
        sys.path.remove(str(root))
        sys.modules.pop(MODULE, None)


# -- strategies ------------------------------------------------------------------------------

_TRICKY = [
    b"",
    b"<",
    b">",
    b"@",
    b'"',
    b"\x00",
    b"\r",
    b"\n",
    b" ",
    b"\t",
    b":",
    b",",
    b"[",
    b"]",
    b"(",
    b")",
    b"\\",
    b"=?utf-8?q?",
    b"?=",
    b"\xff",
    b"\xc3\xa9",
    b"SIZE=",
    b"BODY=8BITMIME",
    b"SMTPUTF8",
    b"a",
    b"example.com",
    b"x" * 600,
]
_ADDRESSES = [
    b"<fuzz@example.com>",
    b"<>",
    b"<x-raise@example.com>",
    b"<nobody@elsewhere.org>",
    b'<"quoted local"@example.com>',
    b"<user@[127.0.0.1]>",
    b"<@a.b,@c.d:u@example.com>",
    "<jöe@exämple.org>".encode(),
    b"<a@b@c>",
    b"<",
    b"<a@",
    b"fuzz@example.com",
]
_VERBS = [
    b"HELO",
    b"EHLO",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"VRFY",
    b"EXPN",
    b"HELP",
    b"STARTTLS",
    b"AUTH",
    b"QUIT",
    b"BDAT",
    b"XCLIENT",
    b"mail from:",
]
_BODY_PIECES = [
    b".",
    b"..",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\xff",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r",
    b"Received: x\r\n",
    b"Subject: =?utf-8?q?a?=",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"--b\r\n",
    b"--b--",
    b"x" * 1100,
    b"MAIL FROM:<evil@x.org>\r\n",
]

tricky = st.lists(st.sampled_from(_TRICKY) | st.binary(max_size=8), max_size=6).map(b"".join)
address = st.sampled_from(_ADDRESSES) | tricky
argument = st.one_of(address, tricky, st.just(b""))
valid_command = st.builds(lambda verb, arg: verb + b" " + arg, st.sampled_from(_VERBS), argument)
raw_line = st.binary(max_size=120)
body = st.lists(st.sampled_from(_BODY_PIECES) | st.binary(max_size=40), max_size=12).map(b"".join)
transaction = st.builds(
    lambda sender, rcpts, text: [
        b"MAIL FROM:" + sender,
        *(b"RCPT TO:" + r for r in rcpts),
        b"DATA",
        text + b"\r\n.",
    ],
    address,
    st.lists(address, min_size=1, max_size=7),
    body,
)
step = st.one_of(
    valid_command.map(lambda line: [line]),
    raw_line.map(lambda line: [line]),
    transaction,
    st.builds(lambda text: [b"DATA", text], body),
)
session = st.builds(
    lambda hello, steps: [*hello, *(line for group in steps for line in group)],
    st.sampled_from([[b"EHLO fuzz.example"], [b"HELO fuzz.example"], []]),
    st.lists(step, max_size=8),
)


def talk(port: int, lines: list[bytes]) -> tuple[list[bytes], bool]:
    """Send ``lines`` pipelined (CRLF after each), end any DATA and QUIT.

    Returns every whole reply line, and whether the connection ended with a clean close rather
    than a reset (a server that hangs up with our pipelined lines unread makes TCP send RST).
    """
    payload = b"".join(line + b"\r\n" for line in lines) + b"\r\n.\r\nQUIT\r\n"
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        try:
            sock.sendall(payload)
            while chunk := sock.recv(65536):  # until the server closes: QUIT, or it ended it
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            return received.split(b"\r\n")[:-1], False
    assert received.endswith(b"\r\n"), received[-200:]
    return received.split(b"\r\n")[:-1], True


@settings(max_examples=2000, deadline=None)
@given(session)
def test_every_reply_is_valid_smtp(fuzz_server: ServerThread, lines: list[bytes]) -> None:
    replies, clean = talk(fuzz_server.server.port, lines)
    assert replies and replies[0].startswith(b"220 ")
    assert [reply for reply in replies if not REPLY.match(reply)] == []
    for code in sorted({reply[:3].decode() for reply in replies}):
        event(f"reply {code}")  # coverage, shown by --hypothesis-show-statistics
    event("clean close" if clean else "reset")
    if any(reply.startswith(b"250 2.0.0") for reply in replies):
        event("a message was delivered")
    if clean:  # the session ended with our QUIT or with the server's reason for ending it
        assert replies[-1][:3] in (b"221", b"421", b"502"), replies


def test_still_serving_after_the_fuzzing(fuzz_server: ServerThread) -> None:
    data = b"From: good@client.example\r\nSubject: after the storm\r\n\r\nStill here.\r\n"
    with smtplib.SMTP("127.0.0.1", fuzz_server.server.port, timeout=TIMEOUT) as client:
        assert client.sendmail("good@client.example", ["good@example.com"], data) == {}
    mine = [m for m in sys.modules[MODULE].received if m.sender == "good@client.example"]
    assert [m.data for m in mine] == [data]
    wait_for(lambda: fuzz_server.sessions() == 0, 5, message="sessions are left open")
