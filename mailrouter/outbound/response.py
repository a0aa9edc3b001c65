"""Outgoing messages: ``MailResponse`` builds a correct MIME message, ``reply()`` answers one.

Messages are built with ``email.message.EmailMessage`` and ``email.policy.default``. Domains are
written in their ASCII (IDNA) form; display names and subjects are RFC 2047 encoded; an address
whose local part is not ASCII makes the message an SMTPUTF8 one (RFC 6531). Every header value is
checked for CR and LF so that no caller-supplied text can add headers of its own.

About 340 lines: MIME construction and its header checks are one concept, building a correct
message; ``reply()`` is a few lines on top.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from pathlib import Path
from typing import Any

import dns.exception
import dns.name

from mailrouter.bounce import is_delivery_report
from mailrouter.errors import MailRouterError
from mailrouter.message import MailRequest, normalize_address

log = logging.getLogger(__name__)

Addresses = str | Address | Iterable[str | Address]
AttachmentSpec = str | os.PathLike[str] | tuple[str, bytes] | tuple[str, bytes, str | None]

_FIELD_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII except ":" (RFC 5322 section 3.6.8)
_RE_PREFIX = re.compile(r"\s*re\s*(\[\d+\])?\s*:", re.IGNORECASE)
_OWN_HEADERS = frozenset({"from", "to", "cc", "bcc", "subject", "date", "message-id"})
_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
_LIST_HEADERS = ("List-Id", "List-Post", "List-Unsubscribe")
_BUILD = policy.default.clone(cte_type="7bit")  # bodies 7-bit clean: no need for 8BITMIME


class HeaderInjectionError(MailRouterError, ValueError):
    """A header name or value would break out of its header (CR or LF), or is not valid."""


def _check_text(what: str, value: str) -> str:
    """``value`` unchanged, or HeaderInjectionError if it contains CR or LF."""
    if "\r" in value or "\n" in value:
        raise HeaderInjectionError(f"{what} must not contain CR or LF: {value!r}")
    return value


def ace_domain(domain: str) -> str:
    """``domain`` in its ASCII form: ``bücher.de`` -> ``xn--bcher-kva.de`` (IDNA)."""
    if domain.isascii() or domain.startswith("["):
        return domain
    try:
        return str(dns.name.from_unicode(domain).to_text(omit_final_dot=True))
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise ValueError(f"invalid domain {domain!r}: {exc}") from exc


def ace_address(address: str) -> str:
    """A bare envelope address with its domain in ASCII form; the local part is kept."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{ace_domain(domain)}" if at else address


def _addresses(what: str, value: Addresses) -> tuple[Address, ...]:
    """Every address in ``value``: a string (possibly comma-separated), an Address, or several."""
    items = [value] if isinstance(value, str | Address) else list(value)
    found: list[Address] = []
    for item in items:
        if isinstance(item, Address):
            _check_text(what, f"{item.display_name} {item.addr_spec}")
            pairs = [(item.display_name, item.addr_spec)]
        else:
            _check_text(what, item)
            pairs = getaddresses([item]) if item.strip() else []
        for name, bare in pairs:
            local, at, domain = bare.rpartition("@")
            if not (at and local and domain):
                raise ValueError(f"{what}: not an address: {item!r}")
            found.append(Address(display_name=name, username=local, domain=ace_domain(domain)))
    return tuple(found)


def formatted(name: str, address: str) -> str:
    """``"name" <address>`` (quoted as needed), or the bare address when there is no name."""
    return str(Address(display_name=name, addr_spec=address)) if name else address


@dataclass(frozen=True)
class Attachment:
    """A file to attach: its content (or the path to read it from), name and MIME type."""

    filename: str
    mimetype: str
    content: bytes | None = None
    path: Path | None = None

    @classmethod
    def of(cls, spec: AttachmentSpec | Attachment) -> Attachment:
        """An Attachment from a path or a ``(filename, bytes[, mimetype])`` tuple."""
        if isinstance(spec, Attachment):
            return spec
        if isinstance(spec, tuple):
            filename, content = spec[0], spec[1]
            mimetype = spec[2] if len(spec) > 2 else None
            if not isinstance(content, bytes | bytearray):
                raise TypeError(f"attachment {filename!r}: content must be bytes")
            path = None
        else:
            path = Path(spec)
            filename, content, mimetype = path.name, None, None
        _check_text("attachment filename", filename)
        if not filename:
            raise ValueError("an attachment needs a file name")
        mimetype = mimetype or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        _check_text("attachment type", mimetype)
        if mimetype.count("/") != 1:
            raise ValueError(f"attachment {filename!r}: bad MIME type {mimetype!r}")
        return cls(filename, mimetype, None if content is None else bytes(content), path)

    def read(self) -> bytes:
        """The attachment's bytes, read from its path if it was given one."""
        if self.content is not None:
            return self.content
        assert self.path is not None
        return self.path.read_bytes()


@dataclass(frozen=True)
class MailResponse:
    """An outgoing message: addresses, subject, text and/or HTML body, attachments, headers.

    Everything is validated when the response is built: malformed addresses raise ValueError
    and CR/LF in any header raises HeaderInjectionError. ``message_id`` and ``date`` are fixed
    at construction (taken from ``headers`` when given there) so every rendering is the same.
    """

    to: Addresses
    sender: str | Address
    subject: str
    text: str | None = None
    html: str | None = None
    attachments: Iterable[AttachmentSpec | Attachment] = ()
    cc: Addresses = ()
    bcc: Addresses = ()
    headers: Mapping[str, str] | None = None
    message_id: str = ""
    date: str = ""
    _to: tuple[Address, ...] = field(init=False, repr=False, compare=False)
    _cc: tuple[Address, ...] = field(init=False, repr=False, compare=False)
    _bcc: tuple[Address, ...] = field(init=False, repr=False, compare=False)
    _from: Address = field(init=False, repr=False, compare=False)
    _files: tuple[Attachment, ...] = field(init=False, repr=False, compare=False)
    _extra: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("_to", _addresses("to", self.to))
        put("_cc", _addresses("cc", self.cc))
        put("_bcc", _addresses("bcc", self.bcc))
        senders = _addresses("sender", self.sender)
        if len(senders) != 1:
            raise ValueError(f"sender must be exactly one address, not {self.sender!r}")
        put("_from", senders[0])
        if not (self._to or self._cc or self._bcc):
            raise ValueError("a MailResponse needs at least one recipient")
        _check_text("subject", self.subject)
        put("_files", tuple(Attachment.of(spec) for spec in self.attachments))
        extra: list[tuple[str, str]] = []
        message_id, date = self.message_id, self.date
        for name, value in (self.headers or {}).items():
            _check_text("header name", name)
            if not _FIELD_NAME.fullmatch(name):
                raise HeaderInjectionError(f"invalid header name {name!r}")
            _check_text(f"header {name}", value)
            lower = name.lower()
            if lower == "message-id":
                message_id = message_id or value
            elif lower == "date":
                date = date or value
            elif lower in _OWN_HEADERS:
                raise ValueError(f"set {name} with its own argument, not in headers")
            else:
                extra.append((name, value))
        put("_extra", tuple(extra))
        _check_text("message_id", message_id)
        _check_text("date", date)
        put("message_id", message_id or make_msgid(domain=self._from.domain or "localhost"))
        put("date", date or formatdate(localtime=True))

    @property
    def recipients(self) -> tuple[str, ...]:
        """The envelope recipients: every To, Cc and Bcc address, bare, without duplicates."""
        seen: dict[str, None] = {}
        for address in (*self._to, *self._cc, *self._bcc):
            seen.setdefault(address.addr_spec, None)
        return tuple(seen)

    @property
    def envelope_sender(self) -> str:
        """The bare sender address, for MAIL FROM."""
        return self._from.addr_spec

    @property
    def smtputf8(self) -> bool:
        """True when an address has a non-ASCII local part, so delivery needs SMTPUTF8."""
        everyone = (self._from, *self._to, *self._cc, *self._bcc)
        return not all(address.username.isascii() for address in everyone)

    def message(self) -> EmailMessage:
        """The message as an ``EmailMessage`` (``policy.default``, bodies encoded 7-bit clean:
        quoted-printable or base64); Bcc is never included."""
        msg = EmailMessage(policy=_BUILD)
        msg["From"] = self._from
        if self._to:
            msg["To"] = self._to
        if self._cc:
            msg["Cc"] = self._cc
        msg["Subject"] = self.subject
        msg["Date"] = self.date
        msg["Message-ID"] = self.message_id
        for name, value in self._extra:
            msg[name] = value
        if self.text is not None and self.html is not None:
            msg.set_content(self.text)
            msg.add_alternative(self.html, subtype="html")
        elif self.html is not None:
            msg.set_content(self.html, subtype="html")
        else:
            msg.set_content(self.text or "")
        for attachment in self._files:
            maintype, subtype = attachment.mimetype.split("/")
            msg.add_attachment(
                attachment.read(), maintype=maintype, subtype=subtype, filename=attachment.filename
            )
        for part in msg.iter_parts():
            _drop_inner_mime_version(part)
        return msg

    def as_bytes(self) -> bytes:
        """The message as it goes on the wire: CRLF line endings, UTF-8 headers only if needed."""
        wire = policy.SMTPUTF8 if self.smtputf8 else policy.SMTP
        return self.message().as_bytes(policy=wire)

    def __str__(self) -> str:
        return f"MailResponse({self.message_id} from {self.envelope_sender} to {self.recipients})"


def _drop_inner_mime_version(part: Any) -> None:
    """Remove the MIME-Version that ``email`` copies into body parts; it belongs on top only."""
    del part["MIME-Version"]
    if part.is_multipart():
        for inner in part.iter_parts():
            _drop_inner_mime_version(inner)


def is_automatic(message: MailRequest) -> bool:
    """True when ``message`` must not be answered automatically (RFC 3834 section 2).

    That is mail from the null sender, a delivery report or another bounce, ``Auto-Submitted``
    other than ``no``, ``Precedence: bulk|list|junk``, or a mailing-list message (``List-Id``
    and kin).
    """
    null = normalize_address(message.sender) == ""
    if null or is_delivery_report(message.message) or message.is_bounce():
        return True
    auto = message.get("Auto-Submitted")
    if auto is not None and auto.split(";")[0].strip().lower() not in ("", "no"):
        return True
    precedence = message.get("Precedence")
    if precedence is not None and precedence.strip().lower() in _BULK_PRECEDENCE:
        return True
    return any(message.get(name) is not None for name in _LIST_HEADERS)


def reply_subject(subject: str) -> str:
    """``subject`` with one ``Re: `` in front, not added again when it is already there."""
    subject = " ".join(subject.split())
    return subject if _RE_PREFIX.match(subject) else f"Re: {subject}".rstrip()


def _reply_addresses(message: MailRequest) -> list[str]:
    """Where an answer to ``message`` goes: Reply-To, else From, else the envelope sender."""
    for name in ("Reply-To", "From"):
        found: list[str] = []
        for name_, address in getaddresses(message.get_all(name)):
            if "@" in address:
                found.append(formatted(" ".join(name_.split()), address))
        if found:
            return found
    return [message.sender] if "@" in message.sender else []


def reply(
    message: MailRequest,
    text: str | None = None,
    html: str | None = None,
    sender: str | Address | None = None,
    to: Addresses | None = None,
    **kw: Any,
) -> MailResponse | None:
    """An answer to ``message`` in the same thread, or None when it must not be answered.

    The answer goes to ``to`` (default: Reply-To, else From, else the envelope sender) from
    ``sender`` (default: the address the message was routed to), with ``In-Reply-To``,
    ``References``, one ``Re:`` and ``Auto-Submitted: auto-replied``. Messages that
    ``is_automatic`` are never answered. Other keyword arguments (``subject``, ``cc``,
    ``attachments``, ``headers``...) go to MailResponse.
    """
    if is_automatic(message):
        log.info(
            "not replying to automatic message %r from %r", message["Message-ID"], message.sender
        )
        return None
    to = _reply_addresses(message) if to is None else to
    if not to:
        log.info("not replying to %r: no address to reply to", message["Message-ID"])
        return None
    headers = dict(kw.pop("headers", None) or {})
    original_id = " ".join((message["Message-ID"] or "").split())
    if original_id:
        references = (message["References"] or message["In-Reply-To"] or "").split()
        headers["In-Reply-To"] = original_id
        headers["References"] = " ".join([*references, original_id])
    headers["Auto-Submitted"] = "auto-replied"
    subject = kw.pop("subject", None)
    if subject is None:
        subject = reply_subject(message["Subject"] or "")
    return MailResponse(
        to=to,
        sender=sender or message.recipient,
        subject=subject,
        text=text,
        html=html,
        headers=headers,
        **kw,
    )
