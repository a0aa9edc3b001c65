"""``FastSMTP``: aiosmtpd's SMTP with fast, exact equivalents of its DATA reader, its path parser
and its idle timer.

aiosmtpd reads DATA one line at a time and parses every MAIL and RCPT path with the email
package's header parser; together that is most of its cost per message. These functions give
the same results on every input (``tests/test_wire.py`` checks them against aiosmtpd's own on
generated input, its line limit set to RFC 5321's) in far fewer steps:

- ``read_data`` reads up to the end-of-data line in a few large chunks. Only ``<CRLF>.<CRLF>``
  ends the data, never a bare LF or CR around the dot (no SMTP smuggling), lines over 1,000
  octets with their CRLF and messages over the size limit get aiosmtpd's replies, in aiosmtpd's
  order, and a client that never stops sending is held to the size limit, not to its memory.
- ``simple_path`` recognises the common path, ``<local@domain>`` in plain ASCII dot-atoms, and
  leaves every other form to the email package's parser.
- ``HookListing`` makes ``dir()`` of a session and of its handler list only the hooks, once per
  class: aiosmtpd's ``__init__`` looks for them with ``dir()`` and ``inspect.getmembers()`` on
  every new connection, and full listings were most of the cost of accepting one.
- The idle timer is set once and moved only when it fires early: aiosmtpd cancels and sets a
  new one for every command, 2-3% of the event loop's time under load.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, ClassVar

from aiosmtpd.smtp import MISSING, SMTP

#: The longest DATA line accepted, CRLF included (RFC 5321 4.5.3.1.6; aiosmtpd's allows 1,001).
DATA_LINE_LIMIT = 1000

LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH_DATA = "552 Error: Too much mail data"

_HOOK_PREFIXES = ("smtp_", "auth_", "handle_")
_END = b".\r\n"
_CRLF = b"\r\n"
_GROWTH_CHECK = 1024 * 1024  # without a size limit: look for an endless line this often

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*)>(?: +(?=[A-Za-z0-9])|\Z)"
)


def simple_path(arg: str) -> tuple[str, str] | None:
    """``(address, rest)`` for a plain ``<local@domain>`` path, or None for any other form."""
    match = _SIMPLE_PATH.match(arg)
    if match is None:
        return None
    return match.group(1), arg[match.end() :]


class _Checker:
    """aiosmtpd's DATA rules applied line by line as data arrives; the first error wins."""

    def __init__(self, size_limit: int | None) -> None:
        self.size_limit = size_limit or 0
        self.size = 0  # bytes of complete lines so far
        self.error: str | None = None

    def check(self, lines: bytes | bytearray) -> int:
        """Check ``lines``, which start at a line start; how many bytes of complete lines."""
        parts = lines.split(_CRLF)
        complete = len(lines) - len(parts[-1])
        longest = max(map(len, parts))
        if longest <= DATA_LINE_LIMIT - 2 and (
            not self.size_limit or self.size + complete <= self.size_limit
        ):
            self.size += complete
            return complete
        for part in parts[:-1]:
            length = len(part) + 2
            if length > DATA_LINE_LIMIT + 2:  # aiosmtpd's reader overruns before counting it
                self.error = LINE_TOO_LONG
                return complete
            self.size += length
            if self.size_limit and self.size > self.size_limit:
                self.error = TOO_MUCH_DATA
                return complete
            if length > DATA_LINE_LIMIT:
                self.error = LINE_TOO_LONG
                return complete
        if len(parts[-1].removesuffix(b"\r")) > DATA_LINE_LIMIT:  # an unfinished line, too long
            self.error = LINE_TOO_LONG
        return complete


async def read_data(reader: asyncio.StreamReader, size_limit: int | None) -> bytes | str:
    """Read DATA through the end-of-data line: the unstuffed message, or the error reply."""
    buffer = bytearray()
    checker = _Checker(size_limit)
    line_start = 0  # where the line being read starts in ``buffer``
    guard = (size_limit + DATA_LINE_LIMIT + 2) if size_limit else _GROWTH_CHECK
    while True:
        try:
            buffer += await reader.readuntil(_END)
        except asyncio.LimitOverrunError as overrun:
            buffer += await reader.read(overrun.consumed)
        done = buffer.endswith(_END) and (buffer[-5:-3] == _CRLF or len(buffer) == len(_END))
        if checker.error is None and (done or len(buffer) - line_start > guard):
            end = len(buffer) - len(_END) if done else len(buffer)
            line_start += checker.check(buffer[line_start:end])
        if done:
            break
        if checker.error is not None:
            del buffer[: -len(_END) - 1]  # keep only what recognising the end line needs
    if checker.error is not None:
        return checker.error
    del buffer[-len(_END) :]
    if buffer.startswith(b"."):
        del buffer[0]
    data = bytes(buffer)
    del buffer
    return data.replace(b"\r\n.", _CRLF)


class HookListing:
    """A session or handler whose ``dir()`` is just its commands, AUTH mechanisms and hooks: the
    attributes aiosmtpd's ``SMTP.__init__`` looks for by their prefix, listed once per class."""

    _hooks: ClassVar[list[str]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._hooks = sorted(name for name in dir(cls) if name.startswith(_HOOK_PREFIXES))

    def __dir__(self) -> list[str]:
        return self._hooks


class FastSMTP(HookListing, SMTP):
    """aiosmtpd's SMTP session with ``read_data`` for DATA, ``simple_path`` for paths, and an
    idle timer that is moved lazily."""

    _idle_until = 0.0  # the loop time the session is idle until
    _idle_armed = False  # the idle timer is set and has not fired

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's idle timeout, from now: a new deadline, and the timer moves only when it
        fires before it (or is due after it). aiosmtpd set a new timer for every command."""
        self._idle_until = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if self._idle_armed and handle is not None and handle.when() <= self._idle_until:
            return
        if handle is not None:
            handle.cancel()
        self._timeout_handle = self.loop.call_at(self._idle_until, self._idle_due)
        self._idle_armed = True

    def _idle_due(self) -> None:
        if self.loop.time() < self._idle_until:  # a command came since the timer was set
            self._timeout_handle = self.loop.call_at(self._idle_until, self._idle_due)
            return
        self._idle_armed = False
        self._timeout_cb()  # type: ignore[no-untyped-call]

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA command, reading the data with ``read_data``."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            data = await read_data(self._reader, self.data_size_limit)
        except asyncio.CancelledError:  # the connection was lost during DATA
            self._writer.close()
            raise
        if isinstance(data, str):  # the data broke a limit: the error reply
            await self.push(data)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = self.envelope.original_content = data
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        if not self.local_part_limit and (simple := simple_path(arg)) is not None:
            return simple
        address: str | None
        rest: str | None
        address, rest = super()._getaddr(arg)
        return address, rest
