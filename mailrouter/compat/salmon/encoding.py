"""Salmon's ``encoding`` names: ``MailBase``, a dict-like view of one MIME part, and the
conversions between it, text and ``email`` messages.

Salmon decoded every message into MailBase trees of its own and rebuilt them to send. Here a
MailBase wraps the ``email`` part itself (as mailrouter parsed it: ``email.policy.default``), so
reading a header or a body is the email package's work and a changed header is changed in the
message every handler shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from email import policy
from email.message import EmailMessage, Message
from typing import Any

from mailrouter.message import MailRequest

__all__ = [
    "EncodingError",
    "MailBase",
    "from_message",
    "from_string",
    "raw_bytes",
    "to_message",
    "to_string",
]

ContentEncoding = dict[str, tuple[str | None, dict[str, str]]]
_CONTENT_HEADERS = ("Content-Type", "Content-Disposition", "Content-Transfer-Encoding")


class EncodingError(Exception):
    """A value that cannot become an address or text (Salmon's error for it)."""


class MailBase:
    """One MIME part: its headers as a case-insensitive mapping, its ``body`` and its ``parts``.

    Made from an ``email`` message (wrapped, not copied) or from ``(name, value)`` header pairs
    (a new, empty message; None values are left out).
    """

    def __init__(
        self,
        mime_part_or_headers: Message | Iterable[tuple[str, Any]] | None = None,
        parent: MailBase | None = None,
    ) -> None:
        if isinstance(mime_part_or_headers, Message):
            self.mime_part: Message = mime_part_or_headers
        else:
            self.mime_part = EmailMessage(policy=policy.default)
            for name, value in mime_part_or_headers or ():
                if value is not None:
                    self[name] = value
        self.parent = parent
        self._parts: list[MailBase] | None = None

    @property
    def parts(self) -> list[MailBase]:
        """The subparts (of a multipart or message/* part), each a MailBase; else []."""
        if self._parts is None:
            payload = self.mime_part.get_payload() if self.mime_part.is_multipart() else []
            self._parts = [MailBase(part, self) for part in payload if isinstance(part, Message)]
        return self._parts

    def __getitem__(self, name: str) -> str | None:
        """The first header ``name`` as text, or None."""
        value = self.mime_part.get(name)
        return None if value is None else str(value)

    def __setitem__(self, name: str, value: Any) -> None:
        """Replace every header ``name`` with one (at the end); a list is joined with commas."""
        if isinstance(value, list | tuple):
            value = ", ".join(str(item) for item in value)
        del self.mime_part[name]
        self.mime_part[name] = value

    def __delitem__(self, name: str) -> None:
        del self.mime_part[name]

    def __contains__(self, name: str) -> bool:
        return name in self.mime_part

    def __len__(self) -> int:
        return len(self.mime_part)

    def __iter__(self) -> Iterator[str]:
        return iter(self.mime_part.keys())

    def keys(self) -> list[str]:
        """The header names, in order, repeated names included."""
        return list(self.mime_part.keys())

    def items(self) -> list[tuple[str, str]]:
        """``(name, text)`` for every header, in order."""
        return [(name, str(value)) for name, value in self.mime_part.items()]

    def get_all(self, name: str) -> list[str]:
        """Every header ``name``, in order, as text."""
        return [str(value) for value in self.mime_part.get_all(name, [])]

    def append_header(self, name: str, value: str) -> None:
        """Add a header ``name`` after the others, even one the message may have only once."""
        name, stored = self.mime_part.policy.header_store_parse(name, value)
        self.mime_part.set_raw(name, stored)  # ``[name] = value`` refuses a second To or From

    @property
    def body(self) -> Any:
        """The decoded payload: text for a text part, bytes for others, None for a multipart."""
        payload = self.mime_part.get_payload(decode=True)
        if isinstance(payload, bytes) and self.mime_part.get_content_maintype() == "text":
            try:
                return payload.decode(self.mime_part.get_content_charset() or "ascii")
            except (LookupError, UnicodeDecodeError):
                return payload.decode("utf-8", "replace")
        return payload

    @property
    def content_encoding(self) -> ContentEncoding:
        """``{header: (value, params)}`` for Content-Type, -Disposition, -Transfer-Encoding."""
        found: ContentEncoding = {}
        for name in _CONTENT_HEADERS:
            params = self.mime_part.get_params(header=name) or []
            value = params[0][0] if params else None
            found[name] = (value, {key: str(val) for key, val in params[1:]})
        return found

    def walk(self) -> Iterator[MailBase]:
        """Every part below this one, depth first (this one not included)."""
        for part in self.parts:
            yield part
            yield from part.walk()


def raw_bytes(data: str | bytes | None) -> bytes:
    """A message's bytes from Salmon's text or bytes (text as UTF-8, escaped bytes restored)."""
    if data is None:
        return b""
    return data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)


def from_message(message: Message, parent: MailBase | None = None) -> MailBase:
    """A MailBase over ``message``."""
    return MailBase(message, parent)


def from_string(data: str | bytes) -> MailBase:
    """A MailBase over ``data`` parsed as mailrouter parses what it receives."""
    return MailBase(MailRequest(None, "", [], raw_bytes(data)).message)


def to_message(mail: MailBase) -> Message:
    """The ``email`` message behind ``mail``."""
    return mail.mime_part


def to_string(mail: MailBase) -> str:
    """``mail`` as text, its changes included."""
    return mail.mime_part.as_string()
