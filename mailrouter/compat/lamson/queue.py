"""Lamson's ``queue`` module: the same as Salmon's."""

from __future__ import annotations

from mailrouter.compat.salmon.queue import Queue, SafeMaildir

__all__ = ["Queue", "SafeMaildir"]
