"""``mailrouter send`` and ``sendmail``: hand a message to a server over SMTP or LMTP.

By default to the project's own server: its host and port (or Unix socket) and protocol.
"""

from __future__ import annotations

import mimetypes
import os
import re
import smtplib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path

import click
from click.core import ParameterSource

from mailrouter.cli.common import F, config_option, describe_os_error, project_settings
from mailrouter.config import ENV_PREFIX, load_settings
from mailrouter.errors import MailRouterError

_TIMEOUT = 60.0  # seconds each step of the conversation may take
_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # listening on every address


def _client_options(func: F) -> F:
    """``--config``, ``--host``, ``--port`` and ``--lmtp/--smtp``: where and how to send.

    What is not given comes from the project's settings (its file and ``MAILROUTER_*``).
    """
    for decorator in reversed(
        [
            config_option,
            click.option(
                "--host",
                help="Server to send to.  [default: the project's host, or its unix_socket]",
            ),
            click.option(
                "--port",
                type=click.IntRange(1, 65535),
                help="Port of the server.  [default: the project's port]",
            ),
            click.option(
                "--lmtp/--smtp",
                default=None,
                envvar=f"{ENV_PREFIX}SEND_LMTP",
                show_envvar=True,
                help="Speak LMTP or SMTP.  [default: the project's protocol]",
            ),
        ]
    ):
        func = decorator(func)
    return func


class _UnixSMTP(smtplib.LMTP):
    """An SMTP client on a Unix socket (smtplib's LMTP client can reach one; SMTP's cannot)."""

    ehlo_msg = "ehlo"


@dataclass(frozen=True)
class _Server:
    """Where to send: ``host`` and ``port``, or a Unix socket (``host`` its path, port 0)."""

    host: str
    port: int
    lmtp: bool

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}" if self.port else f"unix:{self.host}"

    def connect(self) -> smtplib.SMTP:
        """A client connected to the server, past its greeting."""
        if self.lmtp:
            return smtplib.LMTP(self.host, self.port, timeout=_TIMEOUT)
        client_class = smtplib.SMTP if self.port else _UnixSMTP
        return client_class(self.host, self.port, timeout=_TIMEOUT)


def _server(
    ctx: click.Context, config: str, host: str | None, port: int | None, lmtp: bool | None
) -> _Server:
    """The server the options name; what they leave out, the project's settings say.

    A project that listens on a Unix socket is sent to there, unless ``--host`` or ``--port``
    is given. Without a config folder (none at the default place), the defaults and the
    environment are the settings.
    """
    folder = Path(config)
    if folder.is_dir() or ctx.get_parameter_source("config") != ParameterSource.DEFAULT:
        settings = project_settings(config)
    else:
        settings = load_settings(folder.absolute())
    lmtp = settings.protocol == "lmtp" if lmtp is None else lmtp
    if host is None and port is None and settings.unix_socket:
        return _Server(str(settings.path(settings.unix_socket)), 0, lmtp)
    port = settings.port if port is None else port
    if not port:
        raise MailRouterError("the project's port is 0 (any free one): pass --port")
    return _Server(
        _LOOPBACK.get(settings.host, settings.host) if host is None else host, port, lmtp
    )


def _greet(client: smtplib.SMTP, server: _Server) -> None:
    """LHLO (LMTP), or EHLO then HELO (SMTP). "Command unknown" (500, 502) is what a server of
    the other protocol answers: say so."""
    code, text = client.ehlo()
    if not server.lmtp and not 200 <= code < 300:
        code, text = client.helo()
    if 200 <= code < 300:
        return
    if code in (500, 502):
        refused, other = ("LHLO", "smtp") if server.lmtp else ("EHLO and HELO", "lmtp")
        raise MailRouterError(
            f"{server.label} refused {refused} ({code} {_text(text)}):"
            f" is it an {other.upper()} server? Try --{other}"
        )
    raise smtplib.SMTPHeloError(code, text)


def _transmit(
    server: _Server, sender: str, recipients: Sequence[str], data: bytes
) -> list[tuple[str, int, str]]:
    """Send ``data``; the replies that matter as (whose, code, text): refusals, then DATA's.

    ``whose`` is empty for the single answer to DATA in SMTP; LMTP answers per recipient.
    """
    replies: list[tuple[str, int, str]] = []
    try:
        with server.connect() as client:
            _greet(client, server)
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
                answers += [client.getreply() for _ in accepted[1:]] if server.lmtp else []
                whose = [f"<{rcpt}>" for rcpt in accepted] if server.lmtp else [""]
                replies += [
                    (who, code, _text(text))
                    for who, (code, text) in zip(whose, answers, strict=True)
                ]
    except smtplib.SMTPResponseException as exc:
        raise MailRouterError(
            f"{server.label} answered {exc.smtp_code} {_text(exc.smtp_error)}"
        ) from None
    except OSError as exc:  # smtplib's other errors are OSErrors too
        raise MailRouterError(f"cannot send to {server.label}: {describe_os_error(exc)}") from None
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
    config: str,
    host: str | None,
    port: int | None,
    lmtp: bool | None,
) -> None:
    """Compose a message and send it to a server; print its reply."""
    server = _server(ctx, config, host, port, lmtp)
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
    _report(ctx, _transmit(server, sender, recipients, data))


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
    config: str,
    host: str | None,
    port: int | None,
    lmtp: bool | None,
) -> None:
    """Send the message on stdin, as is, to the RECIPIENTs."""
    server = _server(ctx, config, host, port, lmtp)
    data = sys.stdin.buffer.read()
    data = re.sub(rb"\r?\n", b"\r\n", data)
    if sender is None:
        sender = parseaddr(str(BytesHeaderParser().parsebytes(data).get("From", "")))[1]
        if not sender:
            raise MailRouterError("no sender: the message has no From address; pass --from")
    _report(ctx, _transmit(server, sender, recipients, data))
