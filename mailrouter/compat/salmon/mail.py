"""Salmon's ``mail`` module: ``MailRequest`` is mailrouter's MailRequest with Salmon's names;
``MailResponse`` (see ``response.py``) is the message to send.

A MailRequest keeps the bytes exactly as received and parses them once (mailrouter's parse);
``To`` and ``From`` are the bare, lower-case addresses Salmon routed on.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from functools import cached_property
from typing import Any, Self

from mailrouter.compat.salmon import bounce
from mailrouter.compat.salmon.encoding import EncodingError, MailBase, raw_bytes, to_string
from mailrouter.compat.salmon.response import MailResponse
from mailrouter.message import MailRequest as Request
from mailrouter.message import normalize_address

__all__ = ["ROUTABLE_TO_HEADER", "MailRequest", "MailResponse"]

#: the header a message without an envelope recipient is routed by ("Delivered-To" on Postfix)
ROUTABLE_TO_HEADER = "to"


def bare_addresses(addr: Any) -> list[str]:
    """The bare, lower-case addresses in ``addr``: text, bytes, or a list or tuple of them."""
    if not addr:
        return []
    if isinstance(addr, list | tuple):
        return [found for item in addr for found in bare_addresses(item)]
    if isinstance(addr, bytes):
        addr = addr.decode()
    if not isinstance(addr, str):
        raise EncodingError(f"Address must be a string or a list not: {type(addr)!r}")
    return [normalize_address(bare) for _, bare in getaddresses([addr]) if bare]


def _decode_header_randomness(addr: Any) -> set[str]:
    """Salmon's name for the set of bare addresses in ``addr`` (see ``bare_addresses``)."""
    return set(bare_addresses(addr))


class MailRequest(Request):
    """A received message, as Salmon's handlers see it: ``Peer``, ``From``, ``To``, ``Data``,
    ``base``, header access by name, ``body()``, ``walk()``, ``all_parts()``.

    ``From`` and ``To`` come from the envelope, else from the From and To headers (which are
    added from the envelope when missing). Every recipient in ``To`` is routed; ``To`` is the
    one being routed. Handlers of one message share one request, as in Salmon.
    """

    #: Salmon's BounceAnalyzer once ``is_bounce()`` ran (mailrouter's ``Bounce`` is its ``bounce``)
    bounce: Any = None  # shadows mailrouter's property: Salmon sets it

    def __init__(self, Peer: Any, From: Any, To: Any, Data: str | bytes | None) -> None:
        super().__init__(Peer, "", [], raw_bytes(Data))
        self.Data = Data
        self.bounce: Any = None
        senders = bare_addresses(From) or bare_addresses(self.get("From"))
        self.recipients = bare_addresses(To) or bare_addresses(self.get(ROUTABLE_TO_HEADER))
        self.sender = senders[0] if senders else ""
        self.recipient = self.recipients[0] if self.recipients else ""
        for name, value in (("From", self.sender), ("To", self.recipient)):
            if value and name not in self:
                self[name] = value

    @classmethod
    def of(cls, request: Request) -> Self:
        """``request`` as this class: the same envelope, bytes and parsed message (shared)."""
        view = cls.__new__(cls)
        for name in Request.__slots__:
            setattr(view, name, getattr(request, name))
        view.__dict__.update(getattr(request, "__dict__", {}))
        view.__dict__.setdefault("Data", request.data)
        view.__dict__.setdefault("bounce", None)
        return view

    def for_recipient(self, recipient: str) -> MailRequest:
        """This request for its own recipient (its handlers share it); a copy for another."""
        if recipient == self.recipient:
            return self
        view = type(self).of(self)
        view.recipient = recipient
        return view

    @property
    def Peer(self) -> Any:
        """The client's address (or whatever the request was made with)."""
        return self.peer

    @property
    def From(self) -> str | None:
        """The envelope sender's bare address, lower case; None for the null sender."""
        return normalize_address(self.sender) or None

    @property
    def To(self) -> str | None:
        """The bare address of the recipient being routed, lower case."""
        return normalize_address(self.recipient) or None

    @property
    def original(self) -> str | bytes | None:
        """Deprecated (as in Salmon): ``Data``."""
        warnings.warn(
            "MailRequest.original is deprecated, use MailRequest.Data instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.Data

    @cached_property
    def base(self) -> MailBase:
        """The parsed message as a MailBase (changes to it are changes to the message)."""
        return MailBase(self.message)

    def __setitem__(self, name: str, value: Any) -> None:
        self.base[name] = value

    def __delitem__(self, name: str) -> None:
        del self.base[name]

    def items(self) -> list[tuple[str, str]]:
        """``(name, text)`` for every header, in order."""
        return self.base.items()

    def all_parts(self) -> list[MailBase]:
        """The top-level MIME parts; [] for a message that is not multipart."""
        return self.base.parts

    def walk(self) -> Iterator[MailBase]:  # type: ignore[override]  # Salmon's parts: MailBase
        """Every MIME part below the message itself, depth first, as MailBase."""
        return self.base.walk()

    def is_bounce(self, threshold: float = 0.3) -> bool:
        """Whether this is a bounce: ``bounce`` (detected on the first call) is probable."""
        if not self.bounce:
            self.bounce = bounce.detect(self)
        return bool(self.bounce.probable(threshold))

    def to_message(self) -> EmailMessage:
        """The parsed ``email`` message, with the changes handlers made."""
        return self.message

    def headers_changed(self) -> bool:
        """Whether the headers are no longer those received (a handler set or deleted one)."""
        parsed = self._parsed.message
        if parsed is None:
            return False  # never parsed, so never changed
        received = BytesHeaderParser(policy=policy.default).parsebytes(self.data)
        return list(received.raw_items()) != list(parsed.raw_items())

    def __str__(self) -> str:
        return to_string(self.base)
