"""The exception hierarchy and the SMTP reply codes mailrouter answers with."""

from __future__ import annotations

import re
from enum import IntEnum

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(\s|$)")


class Status(IntEnum):
    """SMTP reply codes used by mailrouter (RFC 5321)."""

    OK = 250
    SERVICE_UNAVAILABLE = 421
    LOCAL_ERROR = 451
    INSUFFICIENT_STORAGE = 452
    TLS_UNAVAILABLE = 454
    SYNTAX_ERROR = 501
    AUTH_REQUIRED = 530
    MAILBOX_UNAVAILABLE = 550
    SIZE_EXCEEDED = 552
    MAILBOX_NAME_NOT_ALLOWED = 553
    TRANSACTION_FAILED = 554


def with_enhanced_code(code: int, text: str) -> str:
    """Prefix ``text`` with an RFC 3463 enhanced status code unless it already has one."""
    if _ENHANCED.match(text):
        return text
    return f"{code // 100}.0.0 {text}".rstrip()


class MailRouterError(Exception):
    """Base class of every error mailrouter raises."""


class RouteError(MailRouterError, TypeError):
    """A handler's route is malformed: bad pattern, unknown capture, misplaced decorator.

    Also a ``TypeError``, as decorator misuse is in Python (and in Salmon, whose handler code
    guards with ``except TypeError``)."""


class LoadError(MailRouterError, ImportError):
    """A handler module (or a module named by an import string) could not be loaded; also an
    ``ImportError``, what Python raises for an import that fails."""


class StoreError(MailRouterError):
    """A state store could not be opened or used."""


class QueueError(MailRouterError):
    """The undeliverable queue could not store or read a message."""


class SMTPError(MailRouterError):
    """Raised by a handler to refuse a message for the current recipient with this SMTP reply."""

    def __init__(self, code: int, message: str = "") -> None:
        if not 400 <= code < 600:
            raise ValueError(f"SMTPError code must be a 4xx or 5xx reply, not {code}")
        self.code = code
        self.message = with_enhanced_code(code, " ".join(message.split()))
        super().__init__(code, self.message)

    def __str__(self) -> str:
        return f"{self.code} {self.message}"


class QueueFullError(QueueError):
    """The queue's filesystem is full (ENOSPC/EDQUOT): a temporary condition, answered 452."""
