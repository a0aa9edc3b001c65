"""One SMTP or LMTP session: aiosmtpd's protocol with mailrouter's limits and reply hygiene.

Every error reply gets an enhanced status code, no reply echoes control characters or
undecodable bytes, malformed paths are syntax errors, and a session is closed with a reason
(idle, too long, too many errors, shutting down) once any message in delivery is answered.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import TYPE_CHECKING, Any, cast

from aiosmtpd.lmtp import LMTP

from mailrouter.inbound.wire import FastSMTP

if TYPE_CHECKING:
    from mailrouter.runtime.server import Server

# Enhanced status codes (RFC 3463) for the replies aiosmtpd sends without one.
_ENHANCED_BY_CODE = {
    421: "4.3.2",
    451: "4.3.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    550: "5.1.1",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.6.0",
    555: "5.5.4",
}
_BAD_ADDRESS = {
    "MAIL": "501 5.1.7 Bad sender address syntax",
    "RCPT": "501 5.1.3 Bad recipient address syntax",
}


def _printable(text: str) -> str:
    """Reply text safe to send: control characters and undecodable bytes become ``?``."""
    if text.isprintable() and text.isascii():
        return text
    return "".join(
        "?" if not char.isprintable() or "\udc80" <= char <= "\udcff" else char for char in text
    )


def _enhance(status: str) -> str:
    """Add an enhanced status code to an error reply that lacks one."""
    code = status[:3]
    if not code.isdigit() or int(code) < 400 or status[4:5].isdigit():
        return status
    enhanced = _ENHANCED_BY_CODE.get(int(code), f"{code[0]}.0.0")
    text = status[4:].removeprefix("Error: ").removeprefix("Error ")
    return f"{code} {enhanced} {text}"


def _say_and_close(transport: asyncio.BaseTransport, status: str) -> None:
    """Write a last reply on a connection and close it (the buffered reply is still sent)."""
    if not transport.is_closing():
        # duck-typed: uvloop's transports do not derive from asyncio's classes
        cast(asyncio.WriteTransport, transport).write(status.encode() + b"\r\n")
        transport.close()


class SMTPSession(FastSMTP):
    """aiosmtpd's SMTP session with mailrouter's limits, enhanced codes and graceful closing."""

    owner: Server
    delivering = False
    _command = ""  # MAIL or RCPT while aiosmtpd handles one
    _tracked = False
    _errors = 0
    _farewell: str | None = None
    _expiry: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # aiosmtpd keeps these limits in one dict shared by every session: give each its own
        self.command_size_limits = collections.defaultdict(lambda: self.command_size_limit)
        super().__init__(*args, **kwargs)

    async def smtp_EHLO(self, arg: str) -> None:
        self.command_size_limits.clear()  # a repeated EHLO must not raise the limits again
        await super().smtp_EHLO(arg)

    async def smtp_MAIL(self, arg: str) -> None:
        self._command = "MAIL"
        try:
            await super().smtp_MAIL(arg)
        finally:
            self._command = ""

    async def smtp_RCPT(self, arg: str) -> None:
        self._command = "RCPT"
        try:
            await super().smtp_RCPT(arg)
        finally:
            self._command = ""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's path parser, made total: anything it cannot parse is malformed."""
        path = arg.lstrip()
        if path.startswith("<") and ">" not in path:
            return None, None
        try:
            address, rest = super()._getaddr(arg)
        except Exception:  # the email header parser raises more than HeaderParseError
            return None, None
        return address, rest

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._tracked:  # called again on the TLS transport after STARTTLS
            super().connection_made(transport)
            return
        refusal = self.owner.refusal()
        if refusal is not None:
            _say_and_close(transport, refusal)
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._tracked = True
        self.owner.sessions.add(self)
        super().connection_made(transport)
        self._expiry = self.loop.call_later(
            self.owner.settings.session_timeout,
            self.close_with,
            "421 4.4.2 Session time limit exceeded, closing connection",
        )

    def connection_lost(self, error: Exception | None) -> None:
        if not self._tracked:  # refused before the session started
            return
        self.owner.sessions.discard(self)
        if self._expiry is not None:
            self._expiry.cancel()
        super().connection_lost(error)

    def close_with(self, status: str) -> None:
        """Send a final reply and close, once the message being delivered (if any) is answered."""
        if self.delivering:
            self._farewell = status
            return
        if self._original_transport is not None and self.session and self.session.ssl is None:
            # the TLS handshake never finished: the TLS layer would swallow the close, so cut
            # the socket and end the session here
            cast(asyncio.Transport, self._original_transport).abort()
            self.connection_lost(None)
            return
        if self.transport is not None:
            _say_and_close(self.transport, status)

    def _timeout_cb(self) -> None:
        """aiosmtpd's idle timeout: say why before closing, and never cut off a delivery."""
        if self.delivering:
            self._reset_timeout()
            return
        self.close_with("421 4.4.2 Idle timeout, closing connection")

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            if status.startswith("553") and self._command:  # aiosmtpd's "malformed address"
                status = _BAD_ADDRESS[self._command]
            lines = status.split("\r\n")
            status = "\r\n".join(_enhance(_printable(line)) for line in lines)
        await super().push(status)
        if isinstance(status, str) and status[:1] == "5":
            self._errors += 1
            if self._errors >= self.owner.settings.max_errors:
                self.close_with("421 4.7.0 Too many errors, closing connection")
        if self._farewell is not None and not self.delivering:
            self.close_with(self._farewell)


class LMTPSession(SMTPSession, LMTP):
    """The LMTP variant: LHLO instead of EHLO, and one reply per recipient after DATA."""

    _replies_due = 0  # after the 354: how many replies the end of DATA owes the client

    async def smtp_DATA(self, arg: str) -> None:
        try:
            await super().smtp_DATA(arg)
        finally:
            self._replies_due = 0

    async def push(self, status: Any) -> None:
        if isinstance(status, str) and status.startswith("354") and self.envelope is not None:
            self._replies_due = len(self.envelope.rcpt_tos)
        elif isinstance(status, str) and status[:1] in "45" and "\r\n" not in status:
            # an error aiosmtpd gives the whole DATA (too big, line too long) is every
            # recipient's reply: LMTP clients wait for one per accepted recipient (RFC 2033)
            status = "\r\n".join([status] * max(self._replies_due, 1))
        await super().push(status)
