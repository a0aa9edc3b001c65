"""``mailrouter sink``: a local SMTP server that keeps every message, for building applications.

Point the relay (``relay_host``/``relay_port``) at it while developing: each message is saved,
with its envelope, in a maildir and summarised in one line on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import click
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailrouter.message import MailRequest
from mailrouter.queue import Queue


class _Keeper:
    """Saves each message in the maildir and prints a summary line."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = MailRequest(
            session.peer,
            envelope.mail_from or "",
            envelope.rcpt_tos,
            envelope.original_content or b"",
        )
        key = await asyncio.to_thread(self.queue.push, message)
        subject = " ".join(str(message["Subject"] or "").split())
        click.echo(
            f"{message.sender or '<>'} -> {', '.join(message.recipients)}: {subject!r}, "
            f"{len(message.data)} bytes, saved as {key}"
        )
        return "250 2.0.0 Saved"


async def _serve(host: str, port: int, queue: Queue) -> None:
    loop = asyncio.get_running_loop()
    keeper = _Keeper(queue)
    server = await loop.create_server(
        lambda: SMTP(keeper, hostname="sink", enable_SMTPUTF8=True, loop=loop), host, port
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = server.sockets[0].getsockname()[1]
    click.echo(f"mailrouter sink on {host}:{bound}, saving to {queue.path}")
    try:
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8826, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--maildir", default="run/sink", show_default=True, help="Where the messages are kept."
)
def sink(host: str, port: int, maildir: str) -> Any:
    """Run a debugging SMTP server that keeps every message it receives."""
    asyncio.run(_serve(host, port, Queue(maildir)))
