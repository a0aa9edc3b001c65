"""compat.salmon's ConfirmationEngine, as Salmon apps use it, sending through a real relay to a
sink (Salmon's own tests mock smtplib for that part), over Salmon's storage and one's own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest
from helpers import Sink, sink_server

from mailrouter.compat.salmon import view
from mailrouter.compat.salmon.confirm import ConfirmationEngine, ConfirmationStorage
from mailrouter.compat.salmon.mail import MailRequest
from mailrouter.compat.salmon.testing import relay

ASKING = MailRequest("peer", "Joe <joe@localhost>", "testing-subscribe@localhost", "Sign me up.")


@pytest.fixture
def templates(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "confirm.msg").write_text("Reply to {{ confirm_address }} to {{ action }}.\n")
    view.LOADER = jinja2.Environment(loader=jinja2.FileSystemLoader(folder))
    yield folder
    view.LOADER = None


async def test_send_then_verify_the_reply(tmp_path: Path, templates: Path) -> None:
    engine = ConfirmationEngine(str(tmp_path / "pending"), ConfirmationStorage())
    sink = Sink()
    async with sink_server(sink) as port:
        variables = {"host": "localhost", "action": "join"}
        await asyncio.to_thread(
            engine.send, relay(port=port), "testing", ASKING, "confirm.msg", variables
        )
    (sent,) = sink.received
    confirm = MailRequest(None, None, None, sent.data)
    assert sent.recipients == ["joe@localhost"]
    assert confirm["Reply-To"] == confirm["From"] == f"{variables['confirm_address']}@localhost"
    assert f"Reply to {variables['confirm_address']} to join." in (confirm.body() or "")
    target, _, secret = confirm["Reply-To"].partition("@")[0].split("-")
    assert engine.verify(target, "eve@localhost", secret) is None
    pending = engine.verify(target, '"Joe" <joe@localhost>', secret)
    assert pending is not None and pending.To == "testing-subscribe@localhost"
    assert engine.verify(target, "joe@localhost", secret) is None  # used up


class OwnStorage:
    """A storage of one's own, as Salmon's docs invite: Salmon's four methods."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, str], tuple[str, str]] = {}

    def get(self, target: str, address: str) -> tuple[str | None, str | None]:
        return self.kept.get((target, address), (None, None))

    def store(self, target: str, address: str, secret: str, pending_id: str) -> None:
        self.kept[target, address] = (secret, pending_id)

    def delete(self, target: str, address: str) -> None:
        self.kept.pop((target, address), None)

    def clear(self) -> None:
        self.kept.clear()


def test_cancel_drops_the_pending_message_in_a_storage_of_ones_own(tmp_path: Path) -> None:
    storage = OwnStorage()
    engine = ConfirmationEngine(str(tmp_path / "pending"), storage)
    secret = engine.register("testing", ASKING).rpartition("-")[2]
    (pending_id,) = engine.pending.keys()
    assert storage.kept == {("testing", "joe@localhost"): (secret, pending_id)}
    engine.cancel("testing", "joe@localhost", "wrong")
    assert engine.pending.keys() == [pending_id]
    engine.cancel("testing", "joe@localhost", secret)
    assert engine.pending.keys() == [] and storage.kept == {}
