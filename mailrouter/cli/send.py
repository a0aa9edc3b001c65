"""``mailrouter send`` and ``sendmail``: hand a message to a server over SMTP or LMTP."""

from __future__ import annotations

import mimetypes
import os
import re
import smtplib
import sys
from collections.abc import Sequence
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path

import click

from mailrouter.cli.common import F, describe_os_error
from mailrouter.config import ENV_PREFIX
from mailrouter.errors import MailRouterError


def _client_options(func: F) -> F:
    """The ``--host``, ``--port`` and ``--lmtp`` options: where and how to send."""
    for decorator in reversed(
        [
            click.option(
                "--host",
                default="127.0.0.1",
                show_default=True,
                envvar=f"{ENV_PREFIX}HOST",
                show_envvar=True,
                help="Server to send to.",
            ),
            click.option(
                "--port",
                type=click.IntRange(1, 65535),
                default=8825,
                show_default=True,
                envvar=f"{ENV_PREFIX}PORT",
                show_envvar=True,
                help="Port of the server.",
            ),
            click.option(
                "--lmtp",
                is_flag=True,
                envvar=f"{ENV_PREFIX}SEND_LMTP",
                show_envvar=True,
                help="Speak LMTP instead of SMTP.",
            ),
        ]
    ):
        func = decorator(func)
    return func


def _transmit(
    host: str, port: int, lmtp: bool, sender: str, recipients: Sequence[str], data: bytes
) -> list[tuple[str, int, str]]:
    """Send ``data``; the replies that matter as (whose, code, text): refusals, then DATA's.

    ``whose`` is empty for the single answer to DATA in SMTP; LMTP answers per recipient.
    """
    replies: list[tuple[str, int, str]] = []
    client_class = smtplib.LMTP if lmtp else smtplib.SMTP
    try:
        with client_class(host, port, timeout=60) as client:
            client.ehlo_or_helo_if_needed()
            code, text = client.mail(sender)
            if code != 250:
                return [(f"sender <{sender}>", code, _text(text))]
            accepted = []
            for rcpt in recipients:
                code, text = client.rcpt(rcpt)
                if code in (250, 251):
                    accepted.append(rcpt)
                else:
                    replies.append((f"<{rcpt}>", code, _text(text)))
            if accepted:
                answers = [client.data(data)]
                answers += [client.getreply() for _ in accepted[1:]] if lmtp else []
                whose = [f"<{rcpt}>" for rcpt in accepted] if lmtp else [""]
                replies += [
                    (who, code, _text(text))
                    for who, (code, text) in zip(whose, answers, strict=True)
                ]
    except smtplib.SMTPResponseException as exc:
        raise MailRouterError(
            f"{host}:{port} answered {exc.smtp_code} {_text(exc.smtp_error)}"
        ) from None
    except OSError as exc:  # smtplib's other errors are OSErrors too
        raise MailRouterError(f"cannot send to {host}:{port}: {describe_os_error(exc)}") from None
    return replies


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _report(ctx: click.Context, replies: Sequence[tuple[str, int, str]]) -> None:
    """Print the accepting replies; the refusals as errors, then exit with status 1."""
    refusals = []
    for whose, code, text in replies:
        if code < 300:
            click.echo(f"{whose}: {code} {text}" if whose else f"{code} {text}")
        else:
            refusals.append(f"{whose} refused: {code} {text}".lstrip())
    for line in refusals:
        click.echo(f"Error: {line}", err=True)
    if refusals:
        ctx.exit(1)


@click.command()
@click.option("--to", "recipients", multiple=True, required=True, help="A recipient (repeatable).")
@click.option(
    "--from",
    "sender",
    required=True,
    envvar=f"{ENV_PREFIX}SEND_FROM",
    show_envvar=True,
    help="The sender (envelope and From header).",
)
@click.option("--subject", default="", help="The Subject header.")
@click.option("--body", default="", help="The text of the message.")
@click.option(
    "--attach",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A file to attach (repeatable).",
)
@_client_options
@click.pass_context
def send(
    ctx: click.Context,
    recipients: tuple[str, ...],
    sender: str,
    subject: str,
    body: str,
    attach: tuple[str, ...],
    host: str,
    port: int,
    lmtp: bool,
) -> None:
    """Compose a message and send it to a server; print its reply."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid()
    message.set_content(body)
    for name in attach:
        kind, encoding = mimetypes.guess_type(name)
        if kind is None or encoding is not None:
            kind = "application/octet-stream"
        maintype, subtype = kind.split("/", 1)
        message.add_attachment(
            Path(name).read_bytes(), maintype, subtype, filename=os.path.basename(name)
        )
    data = message.as_bytes(policy=SMTP_POLICY)
    _report(ctx, _transmit(host, port, lmtp, sender, recipients, data))


@click.command()
@click.argument("recipients", nargs=-1, required=True, metavar="RECIPIENT...")
@click.option(
    "-f",
    "--from",
    "sender",
    envvar=f"{ENV_PREFIX}SEND_FROM",
    show_envvar=True,
    help="Envelope sender [default: the message's From address].",
)
@_client_options
@click.pass_context
def sendmail(
    ctx: click.Context,
    recipients: tuple[str, ...],
    sender: str | None,
    host: str,
    port: int,
    lmtp: bool,
) -> None:
    """Send the message on stdin, as is, to the RECIPIENTs."""
    data = sys.stdin.buffer.read()
    data = re.sub(rb"\r?\n", b"\r\n", data)
    if sender is None:
        sender = parseaddr(str(BytesHeaderParser().parsebytes(data).get("From", "")))[1]
        if not sender:
            raise MailRouterError("no sender: the message has no From address; pass --from")
    _report(ctx, _transmit(host, port, lmtp, sender, recipients, data))
