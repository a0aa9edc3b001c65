"""Salmon's ``bounce`` module over mailrouter's bounce reading (``mailrouter.bounce``).

``detect(message)`` returns a ``BounceAnalyzer`` with Salmon's attributes, read from what
mailrouter found: a delivery status notification, or another MTA's failure notice that
flufl.bounce recognises. Salmon scored each message by the bounce headers it carried; here a
message is a bounce or it is not, so ``score`` is 1.0 or 0.0 (and ``BOUNCE_MATCHERS``, the
headers Salmon scored, is not there to extend). ``bounce_to`` is mailrouter's decorator,
calling ``soft`` and ``hard`` with the message alone, as Salmon did.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from mailrouter.bounce import Bounce, read_bounce
from mailrouter.bounce.status import CLASSES, DETAILS, SUBJECTS
from mailrouter.compat.salmon.encoding import MailBase
from mailrouter.message import MailRequest
from mailrouter.routing import decorators as native

__all__ = ["BounceAnalyzer", "bounce_to", "detect"]

F = TypeVar("F", bound=Callable[..., Any])
Coded = tuple[int | None, str | None]

_REPLY_CODE = re.compile(r"[0-9][0-9.\-]*")  # "550", "550-5.1.1", "5.1.1"


class BounceAnalyzer:
    """What a bounce reports, with Salmon's names: ``primary_status`` (``(5, 'Permanent
    Failure')``), ``secondary_status``, ``combined_status``, ``remote_mta``,
    ``reporting_mta``, ``final_recipient``, ``diagnostic_codes``, ``action``, and the parts:
    ``notification``, ``report`` (the field blocks), ``original``, ``content_parts``.

    ``bounce`` is mailrouter's reading (None for no bounce). ``primary_status`` decides
    ``is_hard`` and ``is_soft`` and may be changed, as in Salmon.
    """

    def __init__(self, bounce: Bounce | None, message: MailRequest) -> None:
        self.bounce = bounce
        self.score = 0.0 if bounce is None else 1.0
        first = None if bounce is None else bounce.first
        status = None if first is None else first.status
        self.primary_status: Coded = (None, None)
        self.secondary_status: Coded = (None, None)
        self.combined_status: Coded = (None, None)
        if status is not None:
            self.primary_status = (status.category, CLASSES.get(status.category))
            self.secondary_status = (status.subject, SUBJECTS.get(status.subject))
            detail = DETAILS.get((status.subject, status.detail))
            self.combined_status = (int(f"{status.subject}{status.detail}"), detail)
        elif first is not None:  # a failure notice with no code: its kind says which class
            category = 5 if first.kind == "hard" else 4
            self.primary_status = (category, CLASSES[category])
        self.remote_mta = None if first is None else first.remote_mta
        self.reporting_mta = None if bounce is None else bounce.reporting_mta
        self.final_recipient = None if first is None else first.final_recipient
        self.diagnostic_codes = _split_code(None if first is None else first.diagnostic)
        self.action = None if first is None else first.action
        self.content_parts = {
            str(part["Content-Description"]).lower(): MailBase(part)
            for part in message.message.walk()
            if part["Content-Description"] is not None
        }
        self.headers: dict[str, Any] = {"Content-Description-Parts": self.content_parts}
        self.notification = None
        self.report: list[MailBase] | None = None
        self.original = None
        if bounce is not None:
            blocks = [bounce.fields, *(recipient.fields for recipient in bounce.recipients)]
            for block in blocks:
                for name, value in block.items():
                    self.headers.setdefault(name.title(), []).append(value)
            if bounce.notification is not None:
                self.notification = MailBase(bounce.notification)
            if bounce.detector == "dsn":
                self.report = [MailBase(list(block.items())) for block in blocks]
            if bounce.original is not None:
                self.original = MailBase(bounce.original)

    def probable(self, threshold: float = 0.3) -> bool:
        """Whether this is a bounce (``score`` above ``threshold``)."""
        return self.score > threshold

    def is_hard(self) -> bool:
        """A probable bounce whose status is a permanent failure (class 5)."""
        category = self.primary_status[0]
        return self.probable() and category is not None and category > 4

    def is_soft(self) -> bool:
        """A probable bounce whose status is a transient failure (class 4 or below)."""
        category = self.primary_status[0]
        return self.probable() and category is not None and category <= 4

    def error_for_humans(self) -> str:
        """The status, in words a person can read."""
        if not self.primary_status[0]:
            return "No status codes found in bounce message."
        coded = (self.primary_status, self.secondary_status, self.combined_status)
        return ", ".join(str(text) for _, text in coded if text)


def detect(message: MailRequest) -> BounceAnalyzer:
    """What ``message`` reports as a bounce (``score`` 0.0 when it is none)."""
    return BounceAnalyzer(read_bounce(message.message, message.sender), message)


def bounce_to(soft: Callable[..., Any], hard: Callable[..., Any]) -> Callable[[F], F]:
    """Send bounces to ``soft`` or ``hard`` (each called with the message alone, and
    returning the next state) instead of the decorated handler; place it below ``@route``."""
    return native.bounce_to(_message_only(soft, "soft"), _message_only(hard, "hard"))


def _message_only(handler: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``handler`` called with the message and without the route's captures."""
    if not callable(handler):
        raise TypeError(f"'{name}' must be a callable")

    def run(message: Any, *args: Any, **kwargs: Any) -> Any:
        return handler(message)

    return run


def _split_code(diagnostic: str | None) -> list[str | None]:
    """Salmon's ``diagnostic_codes``: the reply code leading the diagnostic, and the rest."""
    if diagnostic is None:
        return [None, None]
    code, _, text = diagnostic.partition(" ")
    if _REPLY_CODE.fullmatch(code):
        return [code, text]
    return [None, diagnostic]
