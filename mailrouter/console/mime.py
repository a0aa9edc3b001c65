"""A message's bytes taken apart for its page: the headers, the text and HTML parts, the
attachments, each leaf part numbered in ``walk()`` order so a route can name it.

Parsing never raises (``MailRequest`` falls back when the email package fails); it blocks, so
the pages call it in a thread.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message

from mailrouter.journal.records import printable
from mailrouter.message import MailRequest

TEXT_SHOWN = 256 * 1024  # characters of a text part shown on the page


@dataclass(frozen=True)
class Part:
    """One leaf part: its number, type, file name (attachments), size, and text if shown."""

    number: int
    content_type: str
    filename: str
    size: int
    attachment: bool
    text: str | None = None  # a text/plain part shown inline


@dataclass(frozen=True)
class Parsed:
    """A message's headers (as sent, decoded for showing) and its leaf parts."""

    headers: list[tuple[str, str]]
    parts: list[Part]

    @property
    def texts(self) -> list[Part]:
        """The text/plain parts shown inline."""
        return [part for part in self.parts if part.text is not None]

    @property
    def htmls(self) -> list[Part]:
        """The text/html parts, shown sandboxed in frames of their own."""
        return [p for p in self.parts if p.content_type == "text/html" and not p.attachment]

    @property
    def attachments(self) -> list[Part]:
        """The parts to download."""
        return [part for part in self.parts if part.attachment]


def _leaves(data: bytes) -> list[Message]:
    return [part for part in MailRequest(None, "", [], data).walk() if not part.is_multipart()]


def _header(raw: str) -> str:
    """A header's raw value fit to show: RFC 2047 words decoded, unfolded, printable."""
    text = " ".join(raw.split())
    if "=?" in text:
        with contextlib.suppress(Exception):  # a malformed encoded word: show it as it came
            text = str(make_header(decode_header(text)))
    return printable(text)


def _payload(part: Message) -> bytes:
    with contextlib.suppress(Exception):  # a broken transfer encoding: what can be decoded
        decoded = part.get_payload(decode=True)
        if isinstance(decoded, bytes):
            return decoded
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _text(part: Message, payload: bytes) -> str:
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:  # an unknown charset
        return payload.decode("utf-8", "replace")


def parse(data: bytes) -> Parsed:
    """The headers and numbered leaf parts of ``data``."""
    message = MailRequest(None, "", [], data).message
    headers = [(name, _header(str(value))) for name, value in message.raw_items()]
    parts = []
    for number, leaf in enumerate(_leaves(data)):
        payload = _payload(leaf)
        kind = leaf.get_content_type()
        filename = printable(leaf.get_filename() or "")
        disposition = (leaf.get_content_disposition() or "").lower()
        attachment = disposition == "attachment" or bool(filename) or not kind.startswith("text/")
        text = None
        if kind == "text/plain" and not attachment:
            text = _text(leaf, payload)[:TEXT_SHOWN]
        parts.append(Part(number, kind, filename, len(payload), attachment, text))
    return Parsed(headers, parts)


def part_bytes(data: bytes, number: int) -> tuple[Part, bytes] | None:
    """Leaf part ``number`` of ``data`` and its decoded bytes; None if there is none."""
    leaves = _leaves(data)
    if not 0 <= number < len(leaves):
        return None
    leaf = leaves[number]
    payload = _payload(leaf)
    kind = leaf.get_content_type()
    filename = printable(leaf.get_filename() or "") or f"part-{number}"
    return Part(number, kind, filename, len(payload), True), payload


def html_of(data: bytes, number: int) -> str | None:
    """The text of HTML part ``number``, decoded by its charset; None if it is not HTML."""
    leaves = _leaves(data)
    if not 0 <= number < len(leaves) or leaves[number].get_content_type() != "text/html":
        return None
    return _text(leaves[number], _payload(leaves[number]))
