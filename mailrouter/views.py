"""Deprecated: ``mailrouter.outbound.templates``, importable here for this release."""

from mailrouter.outbound.templates import *  # noqa: F403
