"""MailRequest: one received message, its SMTP envelope and its lazily parsed content."""

from __future__ import annotations

import email.utils
import hashlib
import itertools
import re
from collections.abc import Iterator, Sequence
from email import message_from_bytes, policy
from email.errors import MessageDefect
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any, Protocol

from mailrouter.bounce import Bounce, read_bounce

_NEEDS_PARSING = re.compile(r'[<>"(),;:\\\s]')

#: The deepest nesting of multipart and message/* parts that is parsed and accepted (Postfix's
#: ``mime_nesting_limit``). Mail clients nest a handful; the email package's parser recurses on
#: each level, slows quadratically and fails with RecursionError some hundreds of levels down.
MAX_NESTING = 100

_CONTENT_TYPE = rb"[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Tt][Yy][Pp][Ee][ \t]*:"  # faster than re.I
# A Content-Type header (group 1: its value, folded lines included) or a boundary delimiter line
# (group 2: what follows its "--"), at a line start
_EVENT = _CONTENT_TYPE + rb"([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)|--([^\r\n]*)"
_FIRST_EVENT = re.compile(_EVENT)
_EVENTS = re.compile(rb"\n(?:" + _EVENT + rb")")  # a literal first byte: the search skips ahead
_CONTAINER = re.compile(rb"\s*(multipart|message)\s*/", re.IGNORECASE)
_BOUNDARY = re.compile(rb'[;\s]boundary\s*=\s*("[^"]*"|[^\s;]+)', re.IGNORECASE)
# A Content-Type header that may open a level (after a line end: the first line is not seen)
_DECLARATION = re.compile(
    rb"\n"
    + _CONTENT_TYPE
    + rb"\s*[Mm](?:[Uu][Ll][Tt][Ii][Pp][Aa][Rr][Tt]|[Ee][Ss][Ss][Aa][Gg][Ee])"
)

Peer = Any  # a (host, port) tuple for TCP, a path string for a Unix socket, or None


class DmarcVerdict(Protocol):
    """DMARC's result for the From: domain (``mailrouter.inbound.auth.DMARCResult``)."""

    @property
    def result(self) -> str:
        """``pass``, ``fail``, ``none``, ``temperror`` or ``permerror``."""

    @property
    def domain(self) -> str:
        """The From: domain."""

    @property
    def disposition(self) -> str:
        """What its policy asks for this message: ``none``, ``quarantine`` or ``reject``."""


class Authentication(Protocol):
    """What sender authentication found (``mailrouter.inbound.auth.AuthResults``): the parts
    that the receiver, routing and the relay use."""

    @property
    def dmarc(self) -> DmarcVerdict:
        """DMARC's result, which ``auth_policy = "enforce"`` acts on."""

    @property
    def aligned_domain(self) -> str | None:
        """The From: domain when DMARC passes, else None."""

    def header(self, authserv_id: str) -> str:
        """The results as an ``Authentication-Results:`` header field."""


def normalize_address(address: str) -> str:
    """The bare, case-folded address in ``address``: ``Joe <JOE@x.org>`` -> ``joe@x.org``.

    The null sender (``<>`` or empty) normalises to ``""``.
    """
    text = address.strip()
    if text in ("", "<>"):
        return ""
    if not _NEEDS_PARSING.search(text):  # already a bare address: the common case, made cheap
        return text.casefold()
    _, bare = email.utils.parseaddr(text)
    if not bare:
        bare = text.strip("<>").strip()
    return bare.casefold()


class _Parsed:
    """The parse of a message's bytes, done once and shared by every view of that message."""

    __slots__ = ("bounce", "bounce_read", "message")

    def __init__(self) -> None:
        self.message: EmailMessage | None = None
        self.bounce: Bounce | None = None
        self.bounce_read = False


def delivery_id(sender: str, data: bytes) -> str:
    """The id of "these bytes from this envelope sender": what an MTA's retries share.

    32 hex digits of SHA-256 over the normalised sender and the SHA-256 of the bytes.
    """
    return delivery_id_of_digest(sender, hashlib.sha256(data).digest())


def delivery_id_of_digest(sender: str, digest: bytes) -> str:
    """``delivery_id`` from the SHA-256 digest of the bytes, for a caller that has it already."""
    who = normalize_address(sender).encode("utf-8", "surrogatepass")
    return hashlib.sha256(who + b"\0" + digest).hexdigest()[:32]


def header_section(data: bytes) -> bytes:
    """The message's header section: everything before the first empty line."""
    if data.startswith((b"\r\n", b"\n")):
        return b""
    ends = [end for end in (data.find(b"\n\r\n"), data.find(b"\n\n")) if end >= 0]
    return data[: min(ends) + 1] if ends else data


def nested_too_deep(data: bytes) -> bool:
    """True when the MIME parts of ``data`` nest more than ``MAX_NESTING`` levels deep.

    A scan of Content-Type headers and boundary lines, not a parse: a multipart with a
    boundary, or a message/* part, opens a level; a boundary line closes the levels opened in
    its multipart's last part (and that multipart too at its end), as the parser's do.
    """
    # each level needs a Content-Type header of its own: with fewer than the limit after a line
    # end (the first line may add one), which is any mail but one of very many parts, the
    # count is all, and it takes no Python step per line
    declared = itertools.islice(_DECLARATION.finditer(data), MAX_NESTING)
    if sum(1 for _ in declared) < MAX_NESTING:
        return False
    levels: list[bytes | None] = []  # each open multipart's boundary; None for a message/*
    first = _FIRST_EVENT.match(data)
    for event in itertools.chain([first] if first else [], _EVENTS.finditer(data)):
        value, delimiter = event.groups()
        if delimiter is not None:
            if levels:
                _close(levels, delimiter.rstrip(b" \t"))
            continue
        container = _CONTAINER.match(value)
        if container is None:
            continue
        if container[1].lower() == b"message":
            levels.append(None)
        elif (boundary := _BOUNDARY.search(value)) is not None:
            levels.append(boundary[1].strip(b'"').rstrip())
        else:
            continue  # a multipart without a boundary is parsed as one text part
        if len(levels) > MAX_NESTING:
            return True
    return False


def _close(levels: list[bytes | None], line: bytes) -> None:
    """The delimiter line ``--line``: close the levels inside the innermost multipart it
    belongs to, and that multipart too when the line ends it (``--boundary--``)."""
    for depth in range(len(levels) - 1, -1, -1):
        boundary = levels[depth]
        if boundary is None:
            continue
        if line == boundary:
            del levels[depth + 1 :]
            return
        if line == boundary + b"--":
            del levels[depth:]
            return


def _parse(data: bytes) -> EmailMessage:
    """``data`` parsed; when its parts nest too deep to parse, only its header section (the
    body is the payload, unparsed), with a defect saying so."""
    if not nested_too_deep(data):
        try:
            parsed = message_from_bytes(data, policy=policy.default)
        except RecursionError:  # nesting the scan does not see (bare CR line ends, say)
            pass
        else:
            assert isinstance(parsed, EmailMessage)
            return parsed
    header = BytesParser(policy=policy.default).parsebytes(data, headersonly=True)
    assert isinstance(header, EmailMessage)
    header.defects.append(
        MessageDefect(f"body not parsed: MIME parts nest over {MAX_NESTING} levels deep")
    )
    return header


class MailRequest:
    """A received message: envelope (peer, sender, recipients) plus the original bytes.

    The bytes are kept exactly as received in ``data``; the parsed ``EmailMessage`` is built on
    first access (most handlers only look at the envelope) and reused afterwards. Nothing in here
    raises on broken input: malformed MIME is reported by the ``email`` package as defects, and
    of a message whose parts nest over ``MAX_NESTING`` deep only the header section is parsed.
    """

    __slots__ = (
        "_delivery_id",
        "_parsed",
        "_route_from",
        "attempt",
        "auth",
        "data",
        "peer",
        "recipient",
        "recipients",
        "sender",
    )

    def __init__(
        self,
        peer: Peer,
        sender: str,
        recipients: Sequence[str] | str,
        data: bytes,
        recipient: str | None = None,
    ) -> None:
        self.peer = peer
        self.sender = sender
        self.recipients = [recipients] if isinstance(recipients, str) else list(recipients)
        self.data = bytes(data)
        self.recipient = (
            recipient if recipient is not None else (self.recipients[0] if self.recipients else "")
        )
        self._parsed = _Parsed()
        self._route_from: str | None = None
        self._delivery_id: str | None = None
        #: how many times this message has been received: 1, or more for an MTA's retries
        self.attempt = 1
        #: SPF, DKIM, DMARC and ARC results (``AuthResults``); None when not verified
        self.auth: Authentication | None = None

    def for_recipient(self, recipient: str) -> MailRequest:
        """A view of this message while it is routed to ``recipient`` (the parse is shared)."""
        view = MailRequest.__new__(MailRequest)
        view.peer, view.sender, view.recipients = self.peer, self.sender, self.recipients
        view.data, view._parsed, view.recipient = self.data, self._parsed, recipient
        view._route_from = self._route_from
        view._delivery_id, view.attempt = self._delivery_id, self.attempt
        view.auth = self.auth
        return view

    @property
    def delivery_id(self) -> str:
        """The id of this message from this sender, the same on every retry of it: a key to
        make what a handler does outside mailrouter idempotent (see ``delivery_id()``)."""
        if self._delivery_id is None:
            self._delivery_id = delivery_id(self.sender, self.data)
        return self._delivery_id

    @property
    def route_from(self) -> str:
        """The identity a conversation's state is kept under: the normalised envelope sender,
        unless the router keys states on the From: address (``state_sender``)."""
        if self._route_from is None:
            self._route_from = normalize_address(self.sender)
        return self._route_from

    @route_from.setter
    def route_from(self, address: str) -> None:
        self._route_from = normalize_address(address)

    @property
    def message(self) -> EmailMessage:
        """The parsed message (``email.policy.default``), parsed on first access, once."""
        parsed = self._parsed.message
        if parsed is None:
            parsed = self._parsed.message = _parse(self.data)
        return parsed

    def __getitem__(self, name: str) -> str | None:
        """The first header named ``name`` as a string, or None (``msg["Subject"]``)."""
        return self.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.message

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first header named ``name`` as a string; ``default`` when absent."""
        try:
            value = self.message.get(name)
        except Exception:  # a header the parser cannot model: fall back to its raw text
            value = _raw_header(self.message, name)
        return default if value is None else str(value)

    def get_all(self, name: str) -> list[str]:
        """Every header named ``name``, in order, as strings."""
        try:
            return [str(value) for value in self.message.get_all(name, [])]
        except Exception:
            raw = _raw_header(self.message, name)
            return [] if raw is None else [raw]

    def keys(self) -> list[str]:
        """The header names, in order."""
        return list(self.message.keys())

    def body(self, preferencelist: Sequence[str] = ("plain", "html")) -> str | None:
        """The text of the main body part (plain text preferred), or None if there is none."""
        try:
            part = self.message.get_body(preferencelist=tuple(preferencelist))
        except Exception:
            return None
        if part is None:
            return None
        try:
            content = part.get_content()
        except Exception:  # an unknown charset or a broken transfer encoding: decode leniently
            payload = part.get_payload(decode=True)
            return payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else None
        return content if isinstance(content, str) else None

    def walk(self) -> Iterator[Message]:
        """Every MIME part of the message, depth first, the message itself first."""
        return self.message.walk()

    def attachments(self) -> Iterator[EmailMessage]:
        """The parts that are attachments rather than the body."""
        try:
            yield from self.message.iter_attachments()
        except Exception:
            return

    @property
    def bounce(self) -> Bounce | None:
        """What this bounce reports (``mailrouter.bounce``), read on first access, once; None
        for a message that is no bounce (an auto-reply is none)."""
        parsed = self._parsed
        if not parsed.bounce_read:
            parsed.bounce, parsed.bounce_read = read_bounce(self.message, self.sender), True
        return parsed.bounce

    def is_bounce(self) -> bool:
        """True for a delivery status notification (RFC 3464) or another MTA's failure notice
        (flufl.bounce's detectors); not for an auto-reply, nor the null sender alone."""
        return self.bounce is not None

    def __repr__(self) -> str:
        return (
            f"MailRequest(peer={self.peer!r}, sender={self.sender!r}, "
            f"recipients={self.recipients!r}, {len(self.data)} bytes)"
        )


def _raw_header(message: Message, name: str) -> str | None:
    """The unparsed value of header ``name`` (used when structured parsing fails)."""
    for key, value in message.raw_items():
        if key.lower() == name.lower():
            return str(value)
    return None
