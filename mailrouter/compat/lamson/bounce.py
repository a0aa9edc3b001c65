"""Lamson's ``bounce`` module: the same as Salmon's (librelist's handlers use ``bounce_to``)."""

from __future__ import annotations

from mailrouter.compat.salmon.bounce import BounceAnalyzer, bounce_to, detect

__all__ = ["BounceAnalyzer", "bounce_to", "detect"]
