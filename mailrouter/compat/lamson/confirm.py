"""Lamson's ``confirm`` module: the same as Salmon's (OneShotBlog's settings make its engine)."""

from __future__ import annotations

from mailrouter.compat.salmon.confirm import ConfirmationEngine, ConfirmationStorage

__all__ = ["ConfirmationEngine", "ConfirmationStorage"]
