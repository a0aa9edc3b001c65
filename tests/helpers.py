"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import itertools
import smtplib
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from mailrouter import MailRequest
from mailrouter.config import Settings
from mailrouter.runtime.server import Server, build_router

_counter = itertools.count()


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


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Server]:
    """A real server for ``settings``, started on the test's loop; stopped and closed after."""
    router = build_router(settings)
    server = Server(settings, router)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(timeout=5)
        router.close()


def running(
    tmp_path: Path, *handlers: str, **overrides: Any
) -> AbstractAsyncContextManager[Server]:
    """A server on 127.0.0.1 port 0 for handler modules ``handlers``, files under ``tmp_path``."""
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    settings = Settings(
        port=0,
        handlers=handlers,
        defaults={"host": r"example\.com"},
        config_dir=str(config),
        **overrides,
    )
    return serving(settings)


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
