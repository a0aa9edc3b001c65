"""Lamson's ``server`` names: the same as Salmon's."""

from __future__ import annotations

from mailrouter.compat.salmon.server import Relay, SMTPError, current

__all__ = ["Relay", "SMTPError", "current"]
