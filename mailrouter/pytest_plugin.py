"""pytest fixtures for handler tests, registered as the ``mailrouter`` plugin.

``outbox``: outgoing mail captured in memory (the relay of ``mailrouter.outbound.sender``);
``router``: a fresh Router with a memory store; ``conversation``: both, as one sender.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailrouter.outbound import sender as relay
from mailrouter.routing.router import Router
from mailrouter.state import MemoryStorage
from mailrouter.testing import Conversation, Outbox


@pytest.fixture
def outbox() -> Iterator[Outbox]:
    """Outgoing mail of the handlers, kept in memory instead of relayed."""
    with relay.using(Outbox()) as captured:
        yield captured


@pytest.fixture
def router() -> Iterator[Router]:
    """A new Router with a memory state store and no undeliverable queue."""
    fresh = Router(store=MemoryStorage())
    try:
        yield fresh
    finally:
        fresh.close()


@pytest.fixture
def conversation(router: Router, outbox: Outbox) -> Conversation:
    """A sender talking to ``router``, with outgoing mail in ``outbox``."""
    return Conversation(router, outbox)
