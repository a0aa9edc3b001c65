"""Lamson's ``mail`` module: Salmon's MailRequest with Lamson's ``route_to`` and ``original``."""

from __future__ import annotations

from mailrouter.compat.salmon import mail as salmon
from mailrouter.compat.salmon.mail import MailResponse
from mailrouter.message import normalize_address

__all__ = ["MailRequest", "MailResponse"]


class MailRequest(salmon.MailRequest):
    """A received message as Lamson's handlers see it (``route_from`` is mailrouter's: whose
    states these are, by default the bare envelope sender, ``""`` for the null sender)."""

    @property
    def route_to(self) -> set[str]:
        """Every envelope recipient, bare and lower case."""
        return {normalize_address(recipient) for recipient in self.recipients}

    @property
    def original(self) -> str | bytes | None:
        """The message as it was given (``Data``)."""
        return self.Data
