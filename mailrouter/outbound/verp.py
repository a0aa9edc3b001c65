"""VERP: a return path per recipient, so that a bounce names the recipient by its address alone.

Mail from ``news-bounces@lists.example.com`` to ``joe@example.org`` goes out with the return
path ``news-bounces+joe=example.org@lists.example.com`` (the Variable Envelope Return Path of
qmail and Mailman). A bounce, in whatever format the failing MTA writes it, comes back to that
address, and ``verp_recipient`` reads ``joe@example.org`` out of it. The separator (``+``)
must be the one the MTA in front of mailrouter strips to deliver ``news-bounces+anything``
(Postfix's ``recipient_delimiter``); a ``Verp`` chooses it and the ``=``.

The relay sends with VERP when asked (``relay.send(msg, sender=..., verp=True)``): one SMTP
transaction per recipient, each with its own return path. A route takes the bounces with
``MEMBER`` as the capture of the encoded part::

    @route(r"(list)-bounces\\+(member)@(host)", member=verp.MEMBER)
    def BOUNCE(message, list=None, member=None, host=None):
        address = verp.DEFAULT.member(member)  # "joe@example.org"
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.name


@dataclass(frozen=True)
class Verp:
    """How a recipient is written into a return path: ``prefix`` + ``separator`` + the
    recipient's local part + ``equals`` + its domain, ``@`` the return path's host."""

    separator: str = "+"
    equals: str = "="

    def __post_init__(self) -> None:
        for name, mark in (("separator", self.separator), ("equals", self.equals)):
            if len(mark) != 1 or mark in '@<>()[]\\,;:"' or mark.isspace() or mark.isalnum():
                raise ValueError(f"VERP {name} must be one punctuation character, not {mark!r}")
        if self.separator == self.equals:
            raise ValueError("VERP separator and equals must differ")

    def encode(self, return_path: str, recipient: str) -> str:
        """The return path for ``recipient``: ``news-bounces+joe=example.org@lists...``."""
        prefix, at, host = return_path.rpartition("@")
        local, at2, domain = recipient.rpartition("@")
        if not (at and prefix and host and at2 and local and domain):
            raise ValueError(f"VERP needs addresses: {return_path!r}, {recipient!r}")
        return f"{prefix}{self.separator}{local}{self.equals}{domain}@{host}"

    def decode(self, address: str, prefix: str | None = None) -> str | None:
        """The recipient encoded in ``address``, or None when it is not a VERP address (of
        ``prefix``, the return path's local part, when given; any case)."""
        local = address.strip().strip("<>").rpartition("@")[0]
        if prefix is None:
            _, separator, encoded = local.partition(self.separator)
            return self.member(encoded) if separator else None
        head = prefix + self.separator
        if local[: len(head)].casefold() != head.casefold():
            return None
        return self.member(local[len(head) :])

    def member(self, encoded: str) -> str | None:
        """The recipient in an encoded part (``Joe=Example.ORG`` -> ``joe@example.org``):
        case-folded, as mailrouter keeps addresses, with an IDNA domain in Unicode."""
        local, equals, domain = encoded.rpartition(self.equals)
        if not (equals and local and domain) or "@" in encoded:
            return None
        return f"{local}@{_unicode_domain(domain)}".casefold()

    @property
    def pattern(self) -> str:
        """A regex for the encoded part, to capture it in a route (``member=...``)."""
        equals = re.escape(self.equals)
        return rf"[^@]+{equals}[^@{equals}]+"


DEFAULT = Verp()
#: the capture regex of the encoded part in the default format
MEMBER = DEFAULT.pattern


def verp_address(return_path: str, recipient: str, verp: Verp = DEFAULT) -> str:
    """``return_path`` with ``recipient`` encoded in it (see ``Verp.encode``)."""
    return verp.encode(return_path, recipient)


def verp_recipient(address: str, prefix: str | None = None, verp: Verp = DEFAULT) -> str | None:
    """The recipient a VERP ``address`` encodes, or None (see ``Verp.decode``):
    ``verp_recipient(message.recipient, prefix="news-bounces")``."""
    return verp.decode(address, prefix)


def envelopes(
    return_path: str, recipients: Sequence[str], verp: Verp | bool = False
) -> list[tuple[str, list[str]]]:
    """The SMTP envelopes to send one message in: ``(return_path, recipients)`` without VERP;
    with it (True: the default format), one per recipient, each with its own return path."""
    if not verp:
        return [(return_path, list(recipients))]
    fmt = DEFAULT if verp is True else verp
    if not return_path:
        raise ValueError("VERP needs a return path, not the null sender")
    return [(fmt.encode(return_path, recipient), [recipient]) for recipient in recipients]


def _unicode_domain(domain: str) -> str:
    """``domain`` in lower case, its IDNA labels (``xn--``) in Unicode where they decode."""
    domain = domain.lower()
    if "xn--" not in domain:
        return domain
    try:
        return dns.name.from_text(domain).to_unicode(omit_final_dot=True)
    except (dns.exception.DNSException, UnicodeError):
        return domain
