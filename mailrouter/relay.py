"""Deprecated: ``mailrouter.outbound.sender``, importable here for this release."""

from mailrouter.outbound.sender import *  # noqa: F403
