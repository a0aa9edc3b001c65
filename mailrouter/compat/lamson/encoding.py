"""Lamson's ``encoding`` module: the same as Salmon's."""

from __future__ import annotations

from mailrouter.compat.salmon.encoding import (
    EncodingError,
    MailBase,
    from_message,
    from_string,
    to_message,
    to_string,
)

__all__ = ["EncodingError", "MailBase", "from_message", "from_string", "to_message", "to_string"]
