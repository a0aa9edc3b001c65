"""Salmon's ``MailResponse``: a mutable draft that mailrouter's MailResponse builds when it is
sent (``to_message()``, ``str()``).

Nothing is checked until then: mailrouter validates every address and header (CR/LF is
refused) and adds Message-ID and Date; this module adds Salmon's attachments and keeps the
bodies exactly as given (Salmon adds no line break at their end, and neither does this).
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
from email.message import EmailMessage, Message, MIMEPart
from pathlib import Path
from typing import Any

from mailrouter.compat.salmon.encoding import MailBase
from mailrouter.outbound.response import MailResponse as Response

__all__ = ["MailResponse"]

# headers passed to mailrouter as arguments, or that the body determines
_OWN_HEADERS = frozenset({"to", "from", "subject", "cc", "bcc", "mime-version"})


class MailResponse:
    """A message to send, changed freely until ``to_message()`` builds it.

    Headers are set by name (``msg["Reply-To"] = ...``); ``Body`` and ``Html`` are its text and
    HTML alternative; ``attach()`` adds files and text parts, ``attach_all_parts()`` copies a
    request's parts.
    """

    def __init__(
        self,
        To: Any = None,
        From: Any = None,
        Subject: str | None = None,
        Body: str | None = None,
        Html: str | None = None,
    ) -> None:
        self.Body = Body
        self.Html = Html
        self.base = MailBase([("To", To), ("From", From), ("Subject", Subject)])
        self.attachments: list[dict[str, Any]] = []
        self._built: EmailMessage | None = None
        self._message_id = self._date = ""  # fixed by the first build, unless set as headers

    @property
    def multipart(self) -> bool:
        """Whether the message is built as a multipart (attachments, or Body and Html)."""
        return bool(self.attachments) or bool(self.Body and self.Html)

    def __contains__(self, name: str) -> bool:
        return name in self.base

    def __getitem__(self, name: str) -> str | None:
        return self.base[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self.base[name] = value

    def __delitem__(self, name: str) -> None:
        del self.base[name]

    def keys(self) -> list[str]:
        """The header names, in order."""
        return self.base.keys()

    def items(self) -> list[tuple[str, str]]:
        """``(name, text)`` for every header, in order."""
        return self.base.items()

    def update(self, message: Any) -> None:
        """Set every header of ``message`` (a mapping, a request, a response) here."""
        for name in message.keys():  # noqa: SIM118 (a request or response is not a dict)
            self.base[name] = message[name]

    def attach(
        self,
        filename: str | None = None,
        content_type: str | None = None,
        data: str | bytes | None = None,
        disposition: str | None = None,
    ) -> None:
        """Attach ``data``, or the file ``filename`` (read when the message is built).

        With a filename the part is an attachment under that name (``disposition`` default
        ``attachment``); without one it is a plain text part. The type is guessed from the
        filename when not given: TypeError without data or file, ValueError without a type.
        """
        if data is None:
            if filename is None:
                raise TypeError("You must give a filename or some data to attach.")
            if not os.path.exists(filename):
                raise TypeError("File doesn't exist, and no data given.")
        if filename and not content_type:
            content_type = mimetypes.guess_type(filename)[0]
        if not content_type:
            raise ValueError(
                f"No content type given, and couldn't guess from the filename: {filename!r}"
            )
        self.attachments.append(
            {
                "filename": filename,
                "content_type": content_type,
                "data": data,
                "disposition": disposition,
            }
        )

    def attach_part(self, part: Any) -> None:
        """Attach a part of another message as it is."""
        self.attachments.append({"part": part})

    def attach_all_parts(self, mail_request: Any) -> None:
        """Attach every top-level part of ``mail_request`` (a mailing list keeping files)."""
        for part in mail_request.all_parts():
            self.attach_part(part)

    def clear(self) -> None:
        """Drop the attachments, keeping headers and bodies."""
        self.attachments.clear()
        self._built = None

    def to_message(self) -> EmailMessage:
        """Build the message: mailrouter's MailResponse with these headers and bodies (so a
        bad address or header raises here), then the attachments."""
        response = Response(
            to=self.base.get_all("To"),
            sender=self["From"] or "",
            subject=self["Subject"] or "",
            text=self.Body or None,
            html=self.Html or None,
            cc=self.base.get_all("Cc"),
            bcc=self.base.get_all("Bcc"),
            headers={
                name: value
                for name, value in self.items()
                if name.lower() not in _OWN_HEADERS and not name.lower().startswith("content-")
            },
            message_id="" if "Message-ID" in self else self._message_id,
            date="" if "Date" in self else self._date,
        )
        self._message_id, self._date = response.message_id, response.date
        msg = response.message()
        bodies = [text for text in (self.Body, self.Html) if text]
        parts = list(msg.iter_parts()) if msg.is_multipart() else [msg]
        for part, text in zip(parts, bodies, strict=False):  # a body per part native made
            _set_text(part, text, part.get_content_subtype())
            if part is not msg:
                del part["MIME-Version"]
        if self.attachments:
            if not bodies:
                msg.clear_content()  # no empty text part before the attachments
            msg.make_mixed()
            for item in self.attachments:
                attached: Any = _attachment(item, msg)  # ours, or another message's part
                msg.attach(attached)
        self._built = msg
        return msg

    def all_parts(self) -> list[MailBase]:
        """The top-level parts of the message last built by ``to_message()``."""
        return [] if self._built is None else MailBase(self._built).parts

    def __str__(self) -> str:
        return self.to_message().as_string()


def _set_text(part: MIMEPart, text: str, subtype: str, **options: Any) -> None:
    """Make ``text`` the content of ``part`` byte for byte: 7bit when it is ASCII in short
    lines, base64 UTF-8 otherwise (``set_content(str)`` would end it with a line break)."""
    data = text.encode()
    plain = text.isascii() and all(len(line) <= 998 for line in data.splitlines())
    part.set_content(
        data,
        "text",
        subtype,
        cte="7bit" if plain else "base64",
        params={"charset": "us-ascii" if plain else "utf-8"},
        **options,
    )


def _attachment(item: dict[str, Any], msg: EmailMessage) -> Message:
    """The MIME part of one ``attach()``/``attach_part()`` entry, for ``msg``."""
    if "part" in item:
        part: Message = (
            item["part"].mime_part if isinstance(item["part"], MailBase) else item["part"]
        )
        return part
    filename, data, disposition = item["filename"], item["data"], item["disposition"]
    maintype, _, subtype = item["content_type"].partition("/")
    if data is None:
        data = Path(filename).read_bytes()
    options: dict[str, Any] = {"disposition": disposition} if disposition else {}
    if filename:
        options = {"disposition": disposition or "attachment", "filename": Path(filename).name}
    new = MIMEPart(policy=msg.policy)
    if maintype == "text" and isinstance(data, bytes):
        with contextlib.suppress(UnicodeDecodeError):  # else attached as bytes, base64
            data = data.decode()
    if isinstance(data, str) and maintype == "text":
        _set_text(new, data, subtype, **options)
    else:
        payload = data.encode() if isinstance(data, str) else data
        new.set_content(payload, maintype, subtype, **options)
    return new
