"""Deprecated: ``mailrouter.outbound.response``, importable here for this release."""

from mailrouter.outbound.response import *  # noqa: F403
