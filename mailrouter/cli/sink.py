"""``mailrouter sink``: a local SMTP server that keeps every message, for building applications.

Point the relay (``relay_host``/``relay_port``) at it while developing: each message is saved
in a maildir exactly as it arrived (no header added: a mail reader shows what was sent), and its
envelope is in the line that summarises it on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import mailbox
import signal
from pathlib import Path
from typing import Any

import click
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailrouter.message import MailRequest


class _Keeper:
    """Saves each message, byte for byte, in the maildir and prints a summary line."""

    def __init__(self, maildir: mailbox.Maildir) -> None:
        self.maildir = maildir

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = MailRequest(
            session.peer,
            envelope.mail_from or "",
            envelope.rcpt_tos,
            envelope.original_content or b"",
        )
        key = await asyncio.to_thread(self.maildir.add, message.data)
        subject = " ".join(str(message["Subject"] or "").split())
        click.echo(
            f"{message.sender or '<>'} -> {', '.join(message.recipients)}: {subject!r}, "
            f"{len(message.data)} bytes, saved as {key}"
        )
        return "250 2.0.0 Saved"


async def _serve(host: str, port: int, maildir: Path) -> None:
    loop = asyncio.get_running_loop()
    for folder in ("tmp", "new", "cur"):  # mailbox makes them only when maildir is new
        (maildir / folder).mkdir(parents=True, exist_ok=True)
    keeper = _Keeper(mailbox.Maildir(maildir))
    server = await loop.create_server(
        lambda: SMTP(keeper, hostname="sink", enable_SMTPUTF8=True, loop=loop), host, port
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = server.sockets[0].getsockname()[1]
    click.echo(f"mailrouter sink on {host}:{bound}, saving to {maildir}")
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
    asyncio.run(_serve(host, port, Path(maildir)))
