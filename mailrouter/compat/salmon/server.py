"""Salmon's ``server`` names handler code uses: ``SMTPError`` and ``Relay``.

``SMTPError`` is mailrouter's: raised in a handler, it refuses the recipient with that reply.
``Relay`` prepares each message with mailrouter's relay (``outbound.sender``: envelope, bytes,
DKIM signature) and, as Salmon's did, hands it to Python's ``smtplib`` at ``host:port``; with
``host=None`` mailrouter's own relay sends it to each recipient domain's MX. Salmon's receivers
are mailrouter's server itself.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from typing import Any, Unpack

from mailrouter.compat.salmon.mail import MailRequest, MailResponse, bare_addresses
from mailrouter.errors import SMTPError
from mailrouter.outbound import sender as outbound
from mailrouter.outbound.outbox import Attempt, clean_reply
from mailrouter.outbound.response import reply
from mailrouter.outbound.sender import Sendable, Sender, SendOptions, SendResult
from mailrouter.outbound.transport import NO_SMTPUTF8, ConnectionOptions, options_for, refusal

__all__ = ["Relay", "SMTPError", "current"]


class Relay:
    """Sends mail to the relay server (smarthost) ``host:port``, as Salmon's Relay did.

    ``ssl`` is implicit TLS (``smtplib.SMTP_SSL``); ``lmtp`` speaks LMTP (``smtplib.LMTP``);
    ``starttls`` requires STARTTLS (otherwise it is used when offered); the login needs both
    ``username`` and ``password``; ``debug`` is smtplib's debug level. ``sender`` sends through
    that mailrouter Sender instead (see ``current()``). What cannot be delivered raises
    ``DeliveryError``.
    """

    def __init__(
        self,
        host: str | None = "127.0.0.1",
        port: int = 25,
        username: str | None = None,
        password: str | None = None,
        ssl: bool = False,
        starttls: bool = False,
        debug: int = 0,
        lmtp: bool = False,
        *,
        sender: Sender | None = None,
    ) -> None:
        if ssl and lmtp:
            raise TypeError("LMTP over SSL not supported. Use STARTTLS instead.")
        if ssl and starttls:
            raise TypeError("SSL and STARTTLS make no sense together")
        if lmtp and not host and sender is None:
            raise TypeError("LMTP needs a host to deliver to")
        self.hostname, self.port, self.debug = host, port, debug
        login = username is not None and password is not None
        options = ConnectionOptions(
            host or None,
            port,
            starttls=True if starttls else None,
            tls=ssl,
            username=username if login else None,
            password=password if login else None,
        )
        if sender is None:
            sender = _Smtplib(options, lmtp=lmtp, debug=debug) if host else outbound.Relay(options)
        self.sender = sender

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


class _Smtplib(outbound.Relay):
    """mailrouter's relay (it prepares, signs and reports) whose wire step is ``smtplib``:
    ``smtplib.SMTP``, ``SMTP_SSL`` or ``LMTP``, looked up on the module as each message goes
    (Salmon's tests patch ``smtplib.SMTP``), in a thread. Over LMTP each recipient gets a
    transaction of its own, so that its reply is the one smtplib reads."""

    def __init__(self, options: ConnectionOptions, *, lmtp: bool, debug: int) -> None:
        super().__init__(options)
        self.lmtp, self.debug = lmtp, debug

    async def deliver(self, sender: str, recipients: list[str], data: bytes) -> dict[str, Attempt]:
        """One delivery attempt of ``data`` to every recipient; nothing is stored."""
        return await asyncio.to_thread(self._session, sender, recipients, data)

    def _session(self, sender: str, recipients: list[str], data: bytes) -> dict[str, Attempt]:
        """One session: connect, greet, TLS, login, the transactions, QUIT."""
        options = self.transport.options
        where = f"{options.host}:{options.port}"
        attempts: dict[str, Attempt] = {}
        try:
            client = self._connect(options)
            try:
                for batch in [[rcpt] for rcpt in recipients] if self.lmtp else [recipients]:
                    attempts.update(_transaction(client, where, sender, batch, data))
            finally:
                try:
                    client.quit()
                except (smtplib.SMTPException, OSError):
                    client.close()
        except smtplib.SMTPResponseException as exc:
            failure = refusal(where, exc.smtp_code, _text(exc.smtp_error))
        except (smtplib.SMTPException, OSError) as exc:  # OSError covers ssl and timeouts
            failure = Attempt("deferred", f"{where}: {clean_reply(str(exc)) or exc!r}")
        else:
            return attempts
        return {rcpt: attempts.get(rcpt, failure) for rcpt in recipients}

    def _connect(self, options: ConnectionOptions) -> smtplib.SMTP:
        """A client past EHLO, STARTTLS and login, as ``options`` ask."""
        host, port, timeout = options.host or "", options.port, options.timeout
        context = options.tls_context or ssl.create_default_context()
        client: smtplib.SMTP
        if options.tls:
            client = smtplib.SMTP_SSL(
                host, port, options.local_hostname, timeout=timeout, context=context
            )
        elif self.lmtp:
            client = smtplib.LMTP(host, port, options.local_hostname, timeout=timeout)
        else:
            client = smtplib.SMTP(host, port, options.local_hostname, timeout)
        try:
            client.set_debuglevel(self.debug)
            client.ehlo_or_helo_if_needed()
            if options.starttls or (options.starttls is None and client.has_extn("starttls")):
                client.starttls(context=context)
            if options.username is not None and options.password is not None:
                client.login(options.username, options.password)
        except BaseException:
            client.close()
            raise
        return client


def _transaction(
    client: smtplib.SMTP, where: str, sender: str, rcpts: list[str], data: bytes
) -> dict[str, Attempt]:
    """One ``sendmail``: an Attempt per recipient (a refused MAIL or DATA fails them all)."""
    options = options_for(sender, rcpts, data, client.has_extn)
    if options is None:
        return dict.fromkeys(rcpts, Attempt("failed", f"{where}: {NO_SMTPUTF8}"))
    try:
        refused: object = client.sendmail(sender, rcpts, data, options)
    except smtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients
    except smtplib.SMTPResponseException as exc:
        return dict.fromkeys(rcpts, refusal(where, exc.smtp_code, _text(exc.smtp_error)))
    if not isinstance(refused, dict):  # a stand-in for smtplib.SMTP (Salmon's tests mock it)
        refused = {}
    return {
        rcpt: refusal(where, refused[rcpt][0], _text(refused[rcpt][1]))
        if rcpt in refused
        else Attempt("delivered", f"{where}: accepted")
        for rcpt in rcpts
    }


def _text(reply: bytes | str) -> str:
    """A server reply as text."""
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


class _Current(Sender):
    """The Sender of the running context: the server's relay in a handler, a test's outbox."""

    def send(self, msg: Sendable, **kw: Unpack[SendOptions]) -> SendResult:
        return outbound.send(msg, **kw)

    async def send_async(self, msg: Sendable, **kw: Unpack[SendOptions]) -> SendResult:
        return await outbound.send_async(msg, **kw)


def current() -> Relay:
    """A Relay through mailrouter's relay of the moment (``outbound.sender.current()``)."""
    return Relay(None, sender=_Current())
