"""The commands the console uses, in the running server's table and over its real control
socket: messages, activity, the queues (one entry at a time), routes, and ``deliver``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from consoles import APP, commands_of, forget_copy, message
from helpers import Sink, running, sink_server, until

from mailrouter import MailResponse
from mailrouter.inbound.outcome import DeliveryRecord
from mailrouter.message import delivery_id
from mailrouter.outbound import sender as outgoing
from mailrouter.runtime import control
from mailrouter.runtime.control import ControlError, ControlServer
from mailrouter.runtime.copies import THREAD, MessageCopies

__all__ = ["APP"]  # the conftest's ``app`` fixture loads it

SENDER = "joe@example.org"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def test_deliver_goes_through_the_receiver_over_the_control_socket(
    tmp_path: Path, app: str
) -> None:
    async with running(tmp_path, app) as server:
        socket_path = tmp_path / "run" / "control.sock"
        listener = ControlServer(socket_path, commands_of(server))
        await listener.start()

        def ask(name: str, **args: Any) -> Any:
            return control.request(socket_path, name, 30, **args)

        try:
            big = message("big") + b"x" * (2 * 1024 * 1024) + b"\r\n"  # over 64 KiB in base64
            args = {"sender": SENDER, "recipients": ["ok@example.com", "bad\r@example.com"]}
            done = await asyncio.to_thread(ask, "deliver", data=_b64(big), **args)
            assert done["reply"].startswith("250 2.0.0 Ok: queued as")
            assert done["refused"] == {
                "bad\r@example.com": "501 5.1.3 Bad recipient address syntax"
            }
            assert done["id"] == delivery_id(SENDER, big)
            shown = await asyncio.to_thread(ask, "messages.show", id=done["id"][:8])
            assert shown["peer"] == "console" and shown["helo"] == "console"
            assert shown["outcomes"][0]["handlers"] == [f"{app}.RECORD"]

            nobody = await asyncio.to_thread(
                ask, "deliver", data=_b64(big), sender=SENDER, recipients=["\n"]
            )
            assert nobody["reply"] == "554 5.5.1 Error: no valid recipients"
            with pytest.raises(ControlError, match="base64"):
                await asyncio.to_thread(ask, "deliver", data="%%%", sender="", recipients=["a@b"])
        finally:
            await listener.stop()


async def test_messages_activity_and_raw_bytes(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app) as server:
        server.keep_copies()  # as a server with its console does
        table = commands_of(server)
        for subject, rcpt in (("kept", "ok@example.com"), ("queued", "nobody@example.com")):
            data = message(subject)
            await table["deliver"]({"data": _b64(data), "sender": SENDER, "recipients": [rcpt]})
        listed = await table["messages.list"]({"status": "queued"})
        assert [entry["headers"]["Subject"] for entry in listed] == ["queued"]
        assert await table["messages.list"]({"sender": "JOE@example.org", "limit": 1})
        assert await table["messages.list"]({"since": 4102444800}) == []  # 2100
        with pytest.raises(Exception, match="unknown status"):
            await table["messages.list"]({"status": "lost"})

        queued = listed[0]
        forget_copy(tmp_path / "run" / "messages.db", queued["id"])  # the copy deliver kept
        raw = await table["messages.raw"]({"id": queued["id"]})  # no copy: the queue's entry
        assert base64.b64decode(raw["data"]) == message("queued")
        assert (await table["messages.show"]({"id": queued["id"]}))["kept"] is True
        key = queued["outcomes"][0]["queue_key"]
        await table["queue.remove"]({"box": "undeliverable", "key": key})
        assert (await table["messages.raw"]({"id": queued["id"]}))["data"] is None

        chart = await table["activity"]({})
        assert len(chart["minutes"]) == 60 and chart["total"] == 2
        assert sum(chart["counts"]["delivered"]) == 1 and sum(chart["counts"]["queued"]) == 1


async def test_queue_entries_one_at_a_time(tmp_path: Path, app: str) -> None:
    sink = Sink()
    sink.data_reply = "451 4.3.0 Try later"
    async with (
        sink_server(sink) as sink_port,
        running(tmp_path, app, relay_host="127.0.0.1", relay_port=sink_port) as server,
    ):
        relay = outgoing.from_settings(server.settings)
        table = commands_of(server, relay)
        mail = MailResponse(to="bob@example.net", sender="list@example.com", subject="out")
        for _ in range(2):
            await relay.send_async(mail)
        first, second = await table["queue.list"]({"box": "outbox"})
        assert first["attempts"] == 1
        assert first["replies"]["bob@example.net"]["reply"].endswith("451 4.3.0 Try later")
        shown = await table["queue.show"]({"box": "outbox", "key": first["key"]})
        assert base64.b64decode(shown["data"]).startswith(b"From: list@example.com")

        sink.data_reply = None
        report = await table["queue.retry"]({"key": first["key"]})
        assert (report["entries"], report["delivered"]) == (1, 1)
        (left,) = await table["queue.list"]({"box": "outbox"})
        assert left["key"] == second["key"]  # the other entry was not tried

        await table["deliver"](
            {"data": _b64(message("q")), "sender": SENDER, "recipients": ["nobody@example.com"]}
        )
        (entry,) = await table["queue.list"]({})
        assert entry["reasons"] == {"nobody@example.com": "no route"}
        report = await table["queue.replay"]({"key": entry["key"]})
        assert report["replayed"] == 1 and report["kept"][0][1] == "no route"
        with pytest.raises(Exception, match="no message 'nope' in the undeliverable queue"):
            await table["queue.replay"]({"key": "nope"})
        with pytest.raises(Exception, match="unknown box 'spool'"):
            await table["queue.list"]({"box": "spool"})
        with pytest.raises(Exception, match="no message 'nope' in the failed maildir"):
            await table["queue.remove"]({"box": "failed", "key": "nope"})


async def test_routes_and_the_tester(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app) as server:
        table = commands_of(server)
        routes = await table["routes"]({})
        assert routes["machines"] == {app: ["ERROR", "START", "TAKEN"]}
        patterns = [route["pattern"] for route in routes["routes"]]
        assert patterns == ["(name)@(host)", "order@(host)"]
        trial = await table["routes.test"]({"address": "Hello@example.com", "sender": SENDER})
        assert trial["plan"] == [
            {
                "handler": f"{app}.RECORD",
                "pattern": "(name)@(host)",
                "stateless": True,
                "captures": {"name": "hello", "host": "example.com"},
            }
        ]
        (tmp_path / "handler_modules" / "broken").write_text("")
        await table["deliver"](
            {"data": _b64(message()), "sender": SENDER, "recipients": ["order@example.com"]}
        )
        await until(lambda: server.router.store.get(app, SENDER) == "ERROR")
        stuck = await table["routes.test"]({"address": "order@example.com", "sender": SENDER})
        assert stuck["plan"] == [] and len(stuck["matching"]) == 2
        (why,) = stuck["errors"]
        assert why["key"] == app and why["error"] == "RuntimeError: the order desk is down"


def test_kept_copies_are_purged_with_the_journals_retention(tmp_path: Path) -> None:
    copies = MessageCopies(tmp_path / "messages.db", retention_days=30)
    old, new = delivery_id("old@example.org", b"old"), delivery_id("new@example.org", b"new")
    copies.keep([(old, b"old"), (new, b"new")])
    with contextlib.closing(sqlite3.connect(copies.path)) as db, db:
        db.execute("UPDATE copies SET kept_at = ? WHERE id = ?", (time.time() - 31 * 86400, old))
    assert copies.purge(time.time() - copies.retention) == 1
    assert copies.read(old) is None and copies.read(new) == b"new"
    assert copies.read("../" + "b" * 29) is None  # only delivery ids name a copy
    copies.stop()


async def test_the_server_keeps_copies_in_one_store_under_the_journals_id(
    tmp_path: Path, app: str
) -> None:
    records: list[DeliveryRecord] = []
    kept = tmp_path / "run" / "messages.db"
    async with running(tmp_path, app) as server:
        server.handler.observers.append(records.append)
        server.keep_copies()
        table = commands_of(server)
        data = message("kept once")
        done = await table["deliver"](
            {"data": _b64(data), "sender": SENDER, "recipients": ["ok@example.com"]}
        )
        assert records[-1].delivery_id == done["id"] == delivery_id(SENDER, data)
        raw = await table["messages.raw"]({"id": done["id"]})  # written before deliver answered
        assert base64.b64decode(raw["data"]) == data
        assert any(t.name.startswith(THREAD) for t in threading.enumerate())
    assert not any(t.name.startswith(THREAD) for t in threading.enumerate())
    assert kept.exists() and not kept.with_name("messages.db-wal").exists()  # closed at stop


async def test_without_a_journal_no_id_is_computed_and_no_copy_kept(
    tmp_path: Path, app: str
) -> None:
    records: list[DeliveryRecord] = []
    async with running(tmp_path, app, journal_url="") as server:
        server.handler.observers.append(records.append)
        server.keep_copies()
        await commands_of(server)["deliver"](
            {"data": _b64(message()), "sender": SENDER, "recipients": ["ok@example.com"]}
        )
        assert records[-1].delivery_id == ""
    assert not (tmp_path / "run" / "messages.db").exists()
