"""Helpers shared by the tests."""

from __future__ import annotations

import itertools
import smtplib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from mailrouter import MailRequest
from mailrouter.config import Settings
from mailrouter.server import Server, build_router

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
