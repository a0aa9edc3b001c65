"""The bounce samples (``samples/*.eml``, written for these tests) as received messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mailrouter.message import MailRequest

SAMPLES = Path(__file__).parent / "samples"


@pytest.fixture
def sample() -> Callable[..., MailRequest]:
    """``sample(name, sender="")``: ``samples/NAME.eml`` received from ``sender``."""

    def read(name: str, sender: str = "") -> MailRequest:
        data = (SAMPLES / f"{name}.eml").read_bytes().replace(b"\n", b"\r\n")
        return MailRequest(("192.0.2.1", 25000), sender, ["news-bounces@lists.example.com"], data)

    return read
