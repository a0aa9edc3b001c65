"""Lamson's ``testing`` helpers: the same as Salmon's (Lamson's spell checker is not here)."""

from __future__ import annotations

from mailrouter.compat.salmon.testing import (
    TEST_QUEUE,
    RouterConversation,
    TestConversation,
    assert_in_state,
    clear_queue,
    delivered,
    queue,
    relay,
)

__all__ = [
    "TEST_QUEUE",
    "RouterConversation",
    "TestConversation",
    "assert_in_state",
    "clear_queue",
    "delivered",
    "queue",
    "relay",
]
