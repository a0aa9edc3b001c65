"""Salmon's ``server`` names handler code uses: ``SMTPError`` and ``Relay``.

``SMTPError`` is mailrouter's: raised in a handler, it refuses the recipient with that reply.
``Relay`` sends with mailrouter's relay (``outbound.sender``): to ``host:port``, or to each
recipient domain's MX when ``host`` is None. Salmon's receivers are mailrouter's server itself.
"""

from __future__ import annotations

from typing import Any, Unpack

from mailrouter.compat.salmon.mail import MailRequest, MailResponse, bare_addresses
from mailrouter.errors import SMTPError
from mailrouter.outbound import sender as outbound
from mailrouter.outbound.response import reply
from mailrouter.outbound.sender import Sendable, Sender, SendOptions, SendResult
from mailrouter.outbound.transport import ConnectionOptions

__all__ = ["Relay", "SMTPError", "current"]


class Relay:
    """Sends mail to the relay server (smarthost) ``host:port``, as Salmon's Relay did.

    ``ssl`` is implicit TLS; ``starttls`` requires STARTTLS (otherwise it is used when offered);
    the login needs both ``username`` and ``password``. ``sender`` sends through that mailrouter
    Sender instead (see ``current()``). What cannot be delivered raises ``DeliveryError``.
    """

    def __init__(
        self,
        host: str | None = "127.0.0.1",
        port: int = 25,
        username: str | None = None,
        password: str | None = None,
        ssl: bool = False,
        starttls: bool = False,
        debug: int = 0,  # Salmon's smtplib debug level; mailrouter logs instead
        lmtp: bool = False,
        *,
        sender: Sender | None = None,
    ) -> None:
        if ssl and lmtp:
            raise TypeError("LMTP over SSL not supported. Use STARTTLS instead.")
        if ssl and starttls:
            raise TypeError("SSL and STARTTLS make no sense together")
        if lmtp:
            raise NotImplementedError("mailrouter's relay speaks SMTP, not LMTP")
        self.hostname, self.port, self.debug = host, port, debug
        login = username is not None and password is not None
        self.sender: Sender = sender or outbound.Relay(
            ConnectionOptions(
                host or None,
                port,
                starttls=True if starttls else None,
                tls=ssl,
                username=username if login else None,
                password=password if login else None,
            )
        )

    def deliver(self, message: Any, To: Any = None, From: Any = None) -> SendResult:
        """Send ``message`` (a MailRequest, a MailResponse, or its text) with its changes.

        ``To`` and ``From`` replace the envelope; else a request goes to its ``To`` from its
        ``From``, and a response to its To and Cc headers from its From.
        """
        if isinstance(message, str | bytes):
            message = MailRequest(None, From, To, message)
        options: SendOptions = {"check": True}
        recipients, senders = bare_addresses(To), bare_addresses(From)
        if isinstance(message, MailRequest):
            recipients = recipients or message.recipients
            senders = senders or [message.sender]
        if recipients:
            options["recipients"] = recipients
        if senders:
            options["sender"] = senders[0]
        return self.sender.send(message.to_message(), **options)

    def send(self, To: Any, From: Any, Subject: str, Body: str) -> SendResult:
        """Send a plain message."""
        return self.deliver(MailResponse(To=To, From=From, Subject=Subject, Body=Body))

    def reply(self, original: MailRequest, From: Any, Subject: str, Body: str) -> SendResult | None:
        """Answer ``original`` with mailrouter's ``reply()``: to its Reply-To or From, threaded
        (In-Reply-To, References); bounces and automatic or list mail get no answer (None)."""
        answer = reply(original, text=Body, sender=From, subject=Subject)
        return None if answer is None else self.sender.send(answer, check=True)

    def __repr__(self) -> str:
        return f"<Relay to ({self.hostname}:{self.port})>"


class _Current(Sender):
    """The Sender of the running context: the server's relay in a handler, a test's outbox."""

    def send(self, msg: Sendable, **kw: Unpack[SendOptions]) -> SendResult:
        return outbound.send(msg, **kw)

    async def send_async(self, msg: Sendable, **kw: Unpack[SendOptions]) -> SendResult:
        return await outbound.send_async(msg, **kw)


def current() -> Relay:
    """A Relay through mailrouter's relay of the moment (``outbound.sender.current()``)."""
    return Relay(None, sender=_Current())
