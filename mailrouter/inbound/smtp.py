"""One SMTP or LMTP session: aiosmtpd's protocol with mailrouter's limits and reply hygiene.

Every error reply gets an enhanced status code, no reply echoes control characters or
undecodable bytes, malformed paths are syntax errors, a non-ASCII address needs SMTPUTF8,
command lines are held to 512 octets with their CRLF, and a session is closed with a reason
(idle, too long, too many errors, shutting down) once any message in delivery is answered.
Sessions see the server only through a small ``ServerState``: the open sessions, whether it is
draining, and its limits.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from dataclasses import dataclass, field
from typing import Any, cast

from aiosmtpd.lmtp import LMTP

from mailrouter import replies
from mailrouter.inbound.wire import FastSMTP

_MALFORMED = "553 5.1.3 Error: malformed address"  # aiosmtpd's reply to a path it cannot parse
_BAD_ADDRESS = {"MAIL": str(replies.BAD_SENDER), "RCPT": str(replies.BAD_RECIPIENT)}


@dataclass(eq=False)
class ServerState:
    """What sessions share with their server: the open sessions, draining, and the limits."""

    max_connections: int
    session_timeout: float
    max_errors: int
    sessions: set[SMTPSession] = field(default_factory=set)
    draining: bool = False

    def refusal(self) -> str | None:
        """The reply that turns a new connection away, or None to serve it."""
        if self.draining:
            return str(replies.SHUTTING_DOWN)
        if len(self.sessions) >= self.max_connections:
            return str(replies.TOO_MANY_CONNECTIONS)
        return None


def _say_and_close(transport: asyncio.BaseTransport, status: str) -> None:
    """Write a last reply on a connection and close it (the buffered reply is still sent)."""
    if not transport.is_closing():
        # duck-typed: uvloop's transports do not derive from asyncio's classes
        cast(asyncio.WriteTransport, transport).write(status.encode() + b"\r\n")
        transport.close()


class SMTPSession(FastSMTP):
    """aiosmtpd's SMTP session with mailrouter's limits, enhanced codes and graceful closing."""

    server_state: ServerState  # set by the server's session factory
    command_size_limit = 510  # aiosmtpd counts without the CRLF: RFC 5321's 512 octets with it
    delivering = False  # a message is in the handler: closing waits for its reply
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

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if command in ("MAIL", "RCPT"):
            # aiosmtpd has parsed the path and MAIL's SMTPUTF8 by now, but takes any address
            assert self.envelope is not None
            if not args[0].isascii() and not self.envelope.smtp_utf8:
                return str(replies.NON_ASCII_ADDRESS)
        if command != "DATA":
            return await super()._call_handler_hook(command, *args)
        self.delivering = True
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            self.delivering = False

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
        refusal = self.server_state.refusal()
        if refusal is not None:
            _say_and_close(transport, refusal)
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._tracked = True
        self.server_state.sessions.add(self)
        super().connection_made(transport)
        self._expiry = self.loop.call_later(
            self.server_state.session_timeout,
            self.close_with,
            str(replies.SESSION_TIMEOUT),
        )

    def connection_lost(self, error: Exception | None) -> None:
        if not self._tracked:  # refused before the session started
            return
        self.server_state.sessions.discard(self)
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
        self.close_with(str(replies.IDLE_TIMEOUT))

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            if status == _MALFORMED and self._command:
                status = _BAD_ADDRESS[self._command]
            lines = status.split("\r\n")
            status = "\r\n".join(replies.clean(line) for line in lines)
        await super().push(status)
        if isinstance(status, str) and status[:1] == "5":
            self._errors += 1
            if self._errors >= self.server_state.max_errors:
                self.close_with(str(replies.TOO_MANY_ERRORS))
        if self._farewell is not None and not self.delivering:
            self.close_with(self._farewell)


class LMTPSession(SMTPSession, LMTP):
    """The LMTP variant: LHLO instead of EHLO, and one reply per recipient after DATA."""

    _replies_due = 0  # after the 354: how many replies the end of DATA owes the client

    async def smtp_LHLO(self, arg: str) -> None:
        self.command_size_limits.clear()  # aiosmtpd's LHLO is its EHLO, not SMTPSession's
        await super().smtp_LHLO(arg)

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
