"""Enhanced mail system status codes (RFC 3463): ``5.1.1``, its class, and what it means.

The class says whether a failure is for good: ``5`` is permanent (a *hard* bounce: the address
is dead), ``4`` persistent but transient (a *soft* bounce: a full mailbox, a host down); ``2``
is success. The names are RFC 3463's, for people reading a bounce.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["hard", "soft"]

# a code on its own: not a piece of a dotted number such as an IPv4 address or a version
_CODE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d]|\.\d)")

CLASSES = {2: "Success", 4: "Persistent Transient Failure", 5: "Permanent Failure"}
SUBJECTS = {
    0: "Other or Undefined Status",
    1: "Addressing Status",
    2: "Mailbox Status",
    3: "Mail System Status",
    4: "Network and Routing Status",
    5: "Mail Delivery Protocol Status",
    6: "Message Content or Media Status",
    7: "Security or Policy Status",
}
DETAILS = {
    (0, 0): "Other undefined Status",
    (1, 0): "Other address status",
    (1, 1): "Bad destination mailbox address",
    (1, 2): "Bad destination system address",
    (1, 3): "Bad destination mailbox address syntax",
    (1, 4): "Destination mailbox address ambiguous",
    (1, 5): "Destination address valid",
    (1, 6): "Destination mailbox has moved, No forwarding address",
    (1, 7): "Bad sender's mailbox address syntax",
    (1, 8): "Bad sender's system address",
    (2, 0): "Other or undefined mailbox status",
    (2, 1): "Mailbox disabled, not accepting messages",
    (2, 2): "Mailbox full",
    (2, 3): "Message length exceeds administrative limit",
    (2, 4): "Mailing list expansion problem",
    (3, 0): "Other or undefined mail system status",
    (3, 1): "Mail system full",
    (3, 2): "System not accepting network messages",
    (3, 3): "System not capable of selected features",
    (3, 4): "Message too big for system",
    (3, 5): "System incorrectly configured",
    (4, 0): "Other or undefined network or routing status",
    (4, 1): "No answer from host",
    (4, 2): "Bad connection",
    (4, 3): "Directory server failure",
    (4, 4): "Unable to route",
    (4, 5): "Mail system congestion",
    (4, 6): "Routing loop detected",
    (4, 7): "Delivery time expired",
    (5, 0): "Other or undefined protocol status",
    (5, 1): "Invalid command",
    (5, 2): "Syntax error",
    (5, 3): "Too many recipients",
    (5, 4): "Invalid command arguments",
    (5, 5): "Wrong protocol version",
    (6, 0): "Other or undefined media error",
    (6, 1): "Media not supported",
    (6, 2): "Conversion required and prohibited",
    (6, 3): "Conversion required but not supported",
    (6, 4): "Conversion with loss performed",
    (6, 5): "Conversion Failed",
    (7, 0): "Other or undefined security status",
    (7, 1): "Delivery not authorized, message refused",
    (7, 2): "Mailing list expansion prohibited",
    (7, 3): "Security conversion required but not possible",
    (7, 4): "Security features not supported",
    (7, 5): "Cryptographic failure",
    (7, 6): "Cryptographic algorithm not supported",
    (7, 7): "Message integrity failure",
}


@dataclass(frozen=True)
class Status:
    """One enhanced status code: ``Status(5, 1, 1)`` is ``5.1.1``, Bad destination mailbox."""

    category: int  # RFC 3463's "class": 2, 4 or 5
    subject: int
    detail: int

    @classmethod
    def find(cls, text: str | None) -> Status | None:
        """The first status code in ``text`` (``5.1.1``, ``smtp; 550 5.1.1 <a@b>: ...``,
        ``(#5.1.1)``), or None."""
        found = _CODE.search(text or "")
        return None if found is None else cls(*(int(part) for part in found.groups()))

    @property
    def code(self) -> str:
        """The code as written: ``5.1.1``."""
        return f"{self.category}.{self.subject}.{self.detail}"

    def __str__(self) -> str:
        return self.code

    @property
    def kind(self) -> Kind | None:
        """``hard`` for a permanent failure, ``soft`` for a transient one, None for success."""
        if self.category == 5:
            return "hard"
        return "soft" if self.category == 4 else None

    def describe(self) -> str:
        """What the code means, in RFC 3463's words: ``5.1.1 Permanent Failure, Addressing
        Status: Bad destination mailbox address`` (the parts it knows)."""
        words = [self.code, CLASSES.get(self.category, "Unknown class")]
        subject = SUBJECTS.get(self.subject)
        if subject is not None:
            words[-1] += f", {subject}"
        detail = DETAILS.get((self.subject, self.detail))
        if detail is not None:
            words[-1] += f": {detail}"
        return " ".join(words)
