"""Helpers shared by the tests: messages, handler sources, a running server, clients, polling."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import pytest
from aiosmtpd.smtp import SMTP
from dnszone import quiet_nameserver

from mailrouter import MailRequest
from mailrouter.config import Settings, load_settings
from mailrouter.runtime.server import Server, build_router

T = TypeVar("T")
Failure = str | Callable[[], str] | None  # what a failed wait says

_counter = itertools.count()

# -- handler sources (written to disk with the ``make_module`` fixture) ----------------------

#: Every message (parsed the way handlers do) lands in ``received``, except mail for
#: ``x-...`` addresses; the handler for ``x-raise@`` fails with a header-like line in its text.
RECORDING = """
from mailrouter import route, stateless

received = []


@route("(?!x-).*")
@stateless
def RECORD(message):
    # parse the way handlers do: a parser crash shows up as a message missing from `received`
    message["Subject"]
    message.body()
    list(message.walk())
    received.append(message)


@route("x-raise@(host)")
@stateless
def RAISE(message, host=None):
    raise RuntimeError("handler bug\\r\\nBcc: injected@evil.example")
"""

#: One outcome per address: ``ok@`` is accepted (by OK, and by REFUSE, which lets it pass),
#: ``refuse@`` refused with 550 5.7.1, ``later@`` deferred with 450 4.2.1, ``boom@`` fails.
OUTCOMES = """
from mailrouter import SMTPError, route, stateless


@route("ok@(host)")
@stateless
def OK(message, host=None):
    pass


@route("(name)@(host)", name="ok|refuse")
@stateless
def REFUSE(message, name, host=None):
    if name == "refuse":
        raise SMTPError(550, "5.7.1 Not here")


@route("later@(host)")
@stateless
def LATER(message, host=None):
    raise SMTPError(450, "4.2.1 Busy, later")


@route("boom@(host)")
@stateless
def BOOM(message, host=None):
    raise RuntimeError("handler bug")
"""


def mail(
    sender: str = "alice@example.org",
    recipients: list[str] | None = None,
    subject: str = "hello",
    body: str = "Hi there.\r\n",
) -> MailRequest:
    """A small well-formed message."""
    recipients = recipients or ["someone@example.com"]
    data = (
        f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{next(_counter)}@test>\r\n\r\n{body}"
    ).encode()
    return MailRequest(("127.0.0.1", 40000), sender, recipients, data)


# -- waiting ---------------------------------------------------------------------------------


def _failure(message: Failure, condition: object, timeout: float) -> str:
    if callable(message):
        return message()
    return message or f"{condition} did not hold within {timeout} s"


def poll(condition: Callable[[], T | None], timeout: float, *, interval: float = 0.02) -> T | None:
    """Call ``condition`` until it returns something true, and return that; None at the deadline."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)
    return result


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = 20.0,
    *,
    interval: float = 0.02,
    message: Failure = None,
) -> T:
    """``poll`` that fails the test (AssertionError: ``message``) when the deadline passes."""
    result = poll(condition, timeout, interval=interval)
    if not result:
        raise AssertionError(_failure(message, condition, timeout))
    return result


async def until(
    condition: Callable[[], object],
    timeout: float = 10.0,
    *,
    interval: float = 0.01,
    message: Failure = None,
) -> Any:
    """``wait_for`` on the test's loop, which keeps running; ``condition`` may be async."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(_failure(message, condition, timeout))
        await asyncio.sleep(interval)


def run_threads(threads: list[threading.Thread], timeout: float) -> None:
    """Start ``threads`` together, then wait for each to end (``timeout`` seconds at most each)."""
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)


# -- a running server ------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Server]:
    """A real server for ``settings``, started on the running loop; stopped and closed after."""
    router = build_router(settings)
    try:
        server = Server(settings, router)
        await server.start()
        try:
            yield server
        finally:
            await server.stop(timeout=5)
    finally:
        router.close()


def running(
    tmp_path: Path, *handlers: str, **overrides: Any
) -> AbstractAsyncContextManager[Server]:
    """A server on 127.0.0.1 port 0 for handler modules ``handlers``, files under ``tmp_path``.

    ``overrides`` are settings; by default mail is for ``example.com`` (the ``host`` default).
    """
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    options: dict[str, Any] = {
        "port": 0,
        "defaults": {"host": r"example\.com"},
        "dns_nameservers": (quiet_nameserver(),),
    }
    settings = Settings(handlers=handlers, config_dir=str(config), **{**options, **overrides})
    return serving(settings)


@contextmanager
def small_disk(folder: Path, size: str = "64k") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (made if missing), unmounted after.

    Mounting needs root: without it the test is skipped, or fails under ``CI``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small tmpfs: {mounted.stderr.decode()}")
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# -- clients ---------------------------------------------------------------------------------


def lmtp_send(
    where: int | str, sender: str, recipients: list[str], data: bytes
) -> list[tuple[int, bytes]]:
    """Send one message over LMTP (a TCP port on 127.0.0.1, or a Unix socket path).

    Returns the per-recipient replies after DATA, in RCPT order (smtplib reads only the first).
    """
    host, port = ("127.0.0.1", where) if isinstance(where, int) else (where, 0)
    with smtplib.LMTP(host, port, timeout=10) as client:
        client.ehlo()
        client.mail(sender)
        for rcpt in recipients:
            client.rcpt(rcpt)
        replies = [client.data(data)]
        replies += [client.getreply() for _ in recipients[1:]]
    return replies


class Client:
    """A line-level SMTP client on a real socket, that can also send raw bytes."""

    reply_timeout = 30.0  # seconds a reply may take before the test fails

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Self:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    @classmethod
    async def greeted(cls, port: int, hello: str | None = None) -> Self:
        """A client past the 220 greeting, and past ``hello`` (an EHLO, say) when given."""
        client = await cls.connect(port)
        assert (await client.reply()).startswith("220 ")
        if hello is not None:
            assert (await client.command(hello)).startswith("250 ")
        return client

    async def reply(self) -> str:
        """One whole reply (the last line of a multi-line one)."""
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), self.reply_timeout)).decode()
            if line[3:4] != "-":
                return line.rstrip("\r\n")

    async def replies(self, count: int) -> list[str]:
        return [await self.reply() for _ in range(count)]

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: str) -> str:
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def raw(self, line: bytes) -> str:
        """Send one command line exactly as given (plus CRLF); its reply."""
        await self.send(line + b"\r\n")
        return await self.reply()

    async def expect(self, data: bytes, prefixes: list[str]) -> None:
        """Send ``data``; the next replies must start with ``prefixes``, one each."""
        await self.send(data)
        got = await self.replies(len(prefixes))
        assert [r[: len(p)] for r, p in zip(got, prefixes, strict=True)] == prefixes, got

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 30) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@dataclass
class Received:
    """One message a Sink accepted: the envelope, the bytes, and how the session went."""

    sender: str
    recipients: list[str]
    data: bytes
    mail_options: list[str]
    tls: bool
    login: bytes | None


class Sink:
    """An aiosmtpd handler that records what it accepts and refuses as it is told."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.rcpt_replies: dict[str, str] = {}  # recipient -> refusal reply
        self.mail_reply: str | None = None
        self.data_reply: str | None = None
        self.arrived = asyncio.Event()

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        tls = server.transport.get_extra_info("ssl_object") is not None
        login = session.auth_data.login if session.authenticated else None
        self.received.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                list(envelope.mail_options),
                tls,
                login,
            )
        )
        self.arrived.set()
        return "250 2.0.0 Stored"


@asynccontextmanager
async def sink_server(
    sink: Sink, *, sock: socket.socket | None = None, tls: ssl.SSLContext | None = None, **kw: Any
) -> AsyncIterator[int]:
    """Serve ``sink`` on 127.0.0.1 (a fresh port, or ``sock``); yields the port."""
    loop = asyncio.get_running_loop()
    kw.setdefault("hostname", "sink.test")
    where: dict[str, Any] = {"sock": sock} if sock else {"host": "127.0.0.1", "port": 0}
    server = await loop.create_server(lambda: SMTP(sink, **kw), ssl=tls, **where)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


# -- the real ``mailrouter`` command in subprocesses -----------------------------------------

READY = re.compile(r"mailrouter running on (127\.0\.0\.1):(\d+) \(pid (\d+)\)")


def environment() -> dict[str, str]:
    """This process's environment without ``MAILROUTER_*`` settings; running as root allowed.

    (A project's config names the loopback DNS server: see ``make_project``.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILROUTER_")}
    env["MAILROUTER_ALLOW_ROOT"] = "true"  # the tests may run as root
    return env


class Project:
    """A project folder, and the ``mailrouter`` command run in it (see the ``make_project``
    fixture, which kills what it started)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pid_file = folder / "run" / "mailrouter.pid"
        self.started: set[int] = set()

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "mailrouter", *args],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment(),
        )
        if match := READY.search(result.stdout):
            self.started.add(int(match.group(3)))
        return result

    def start(self, *args: str) -> tuple[int, int]:
        """Start a daemon on a free port; its (port, pid)."""
        result = self.run("start", "--port", "0", *args)
        assert result.returncode == 0, result.stderr
        match = READY.fullmatch(result.stdout.strip())
        assert match, result.stdout
        return int(match.group(2)), int(match.group(3))

    @property
    def settings(self) -> Settings:
        return load_settings(self.folder / "config")

    def kill_all(self) -> None:
        for pid in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
