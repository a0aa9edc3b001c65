"""The console's pages over HTTP against a real server's console: the journal and a message's
page (parts, sandboxed HTML, attachments, source), the queues' actions, the states, the routes
and their tester, compose, and the activity chart."""

from __future__ import annotations

import re
from pathlib import Path

from consoles import APP, Browser, Live, browser, console, forget_copy, message, sent
from helpers import until

from mailrouter.message import delivery_id
from mailrouter.runtime.copies import MessageCopies

__all__ = ["APP"]  # the conftest's ``app`` fixture loads it

SENDER = "joe@example.org"


async def _page_of(visitor: Browser, data: bytes, sender: str = SENDER) -> str:
    """The message's page, once its bytes are kept (written just after the reply)."""
    ident = delivery_id(sender, data)

    async def kept() -> str | None:
        page = await visitor.get(f"/messages/{ident}")
        return page.text if page.status_code == 200 and "The text part." in page.text else None

    page: str = await until(kept, message="the message's page never showed its bytes")
    return page


async def test_the_list_shows_new_messages_and_filters(tmp_path: Path, app: str) -> None:
    async with console(tmp_path, app) as live, browser(live.url) as visitor:
        page = await visitor.get("/messages")
        assert 'hx-trigger="every 2s"' in page.text and "No messages." in page.text
        await sent(live, SENDER, ["ok@example.com"], message("first"))
        await sent(live, "ann@example.org", ["nobody@example.com"], message("second"))
        rows = (await visitor.get("/messages/rows")).text
        assert rows.index("second") < rows.index("first")  # newest first
        queued = (await visitor.get("/messages/rows?status=queued")).text
        assert "second" in queued and "first" not in queued
        by_sender = (await visitor.get(f"/messages/rows?sender={SENDER}")).text
        assert "first" in by_sender and "second" not in by_sender
        by_rcpt = (await visitor.get("/messages/rows?recipient=nobody@example.com")).text
        assert "second" in by_rcpt and "first" not in by_rcpt
        future = (await visitor.get("/messages/rows?since=2999-01-01T00:00")).text
        assert "No messages." in future
        bad = await visitor.get("/messages?since=yesterday")
        assert bad.status_code == 400 and "YYYY-MM-DDTHH:MM" in bad.text


async def test_a_messages_page_shows_its_parts_and_never_runs_its_html(
    tmp_path: Path, app: str
) -> None:
    data = message("parts")
    async with console(tmp_path, app) as live, browser(live.url) as visitor:
        await sent(live, SENDER, ["ok@example.com", "nobody@example.com"], data)
        page = await _page_of(visitor, data)
        ident = delivery_id(SENDER, data)
        assert "<script>" not in page  # the HTML part is never in the console's page
        frame = re.search(r'<iframe class="html-part" sandbox src="([^"]+)"', page)
        assert frame is not None, page
        assert f"{app}.RECORD" in page and "queued" in page and "no route" in page
        assert "report.pdf" in page and "The text part." in page

        html = await visitor.get(frame.group(1))
        assert html.headers["content-type"] == "text/html; charset=utf-8"
        policy = html.headers["content-security-policy"]
        assert policy.startswith("sandbox;") and "allow-scripts" not in policy
        assert "<script>" in html.text  # as sent: the sandbox, not an edit, keeps it inert

        (link,) = re.findall(r'href="([^"]+/download)"', page)
        attachment = await visitor.get(link)
        assert attachment.content == b"%PDF-1.4\n"
        assert attachment.headers["content-type"] == "application/octet-stream"
        assert (
            attachment.headers["content-disposition"] == "attachment; filename*=UTF-8''report.pdf"
        )

        raw = await visitor.get(f"/messages/{ident}/raw")
        assert raw.content == data and raw.headers["content-type"].startswith("text/plain")
        assert raw.headers["content-security-policy"].startswith("sandbox")
        download = await visitor.get(f"/messages/{ident}/raw?download=1")
        assert download.headers["content-disposition"] == f'attachment; filename="{ident}.eml"'

        short = await visitor.get(f"/messages/{ident[:10]}")
        assert short.status_code == 303 and short.headers["location"] == f"/messages/{ident}"
        missing = await visitor.get("/messages/" + "0" * 32)
        assert missing.status_code == 404


async def test_a_message_received_with_the_console_off_says_its_bytes_were_not_kept(
    tmp_path: Path, app: str
) -> None:
    data = message("before")
    (tmp_path / "a").mkdir()
    async with console(tmp_path / "a", app) as first:
        await sent(first, SENDER, ["ok@example.com"], data)
    copies = MessageCopies(tmp_path / "a" / "run" / "messages.db", retention_days=30)
    await until(lambda: copies.read(delivery_id(SENDER, data)) is not None)
    forget_copy(copies.path, delivery_id(SENDER, data))  # as if the console had been off
    async with console(tmp_path / "a", app) as live, browser(live.url) as visitor:
        page = await visitor.get(f"/messages/{delivery_id(SENDER, data)}")
        assert "the message&#39;s bytes were not kept (the console was off" in page.text
        assert "before" in page.text and f"{app}.RECORD" in page.text
        assert (await visitor.get(f"/messages/{delivery_id(SENDER, data)}/raw")).status_code == 404


async def _error_then_queued(live: Live, app_dir: Path) -> None:
    (app_dir / "broken").write_text("")
    await sent(live, SENDER, ["order@example.com"], message("order"))


async def test_a_sender_in_error_is_reset_and_its_message_replayed(
    tmp_path: Path, app: str
) -> None:
    app_dir = tmp_path / "handler_modules"
    async with console(tmp_path, app) as live, browser(live.url) as visitor:
        await _error_then_queued(live, app_dir)
        stuck = await visitor.get("/states")
        assert SENDER in stuck.text and "the order desk is down" in stuck.text
        tester = await visitor.get(f"/routes?address=order@example.com&sender={SENDER}")
        assert "No handler for order@example.com" in tester.text
        assert "RuntimeError: the order desk is down" in tester.text

        queue = await visitor.get("/queues/undeliverable")
        (key,) = re.findall(r'data-key="([^"]+)"', queue.text)
        entry = await visitor.get(f"/queues/undeliverable/{key}")
        assert "Subject: order" in entry.text

        (app_dir / "broken").unlink()
        reset = await visitor.post("/states/reset", {"sender": SENDER, "key": app})
        assert reset.status_code == 303
        assert (
            f"{SENDER} under {app}: reset to START"
            in (await visitor.get(reset.headers["location"])).text
        )
        replayed = await visitor.post(f"/queues/undeliverable/{key}/replay", {})
        notice = (await visitor.get(replayed.headers["location"])).text
        assert f"replayed {key}: delivered" in notice and "is empty" in notice
        after = await visitor.get(f"/states?sender={SENDER}")
        assert "TAKEN" in after.text


async def test_states_are_set_by_key_and_the_routes_tester_shows_captures(
    tmp_path: Path, app: str
) -> None:
    async with console(tmp_path, app) as live, browser(live.url) as visitor:
        page = await visitor.get(f"/states?sender={SENDER.upper()}")
        assert f'data-key="{app}" data-sender="{SENDER}"' in page.text  # START: nothing stored
        moved = await visitor.post("/states/set", {"sender": SENDER, "key": app, "state": "TAKEN"})
        assert "START -&gt; TAKEN" in (await visitor.get(moved.headers["location"])).text
        wrong = await visitor.post("/states/set", {"sender": SENDER, "key": app, "state": "NOPE"})
        assert wrong.status_code == 400 and "not a state of" in wrong.text
        unnamed = await visitor.post("/states/reset", {"sender": SENDER, "key": ""})
        assert unnamed.status_code == 400  # a reset names its key: never every key at once

        routes = await visitor.get("/routes?address=Hello@Example.com")
        assert f"{app}.RECORD" in routes.text and "name=hello" in routes.text
        assert "host=example.com" in routes.text
        none = await visitor.get("/routes?address=nobody@example.org")
        assert "No handler for nobody@example.org" in none.text


async def test_compose_delivers_through_the_router_and_shows_the_outcome(
    tmp_path: Path, app: str
) -> None:
    async with console(tmp_path, app) as live, browser(live.url) as visitor:
        await visitor.get("/compose")
        composed = await visitor.client.post(
            "/compose",
            data={
                "csrf": visitor.csrf,
                "sender": "Ann <ann@example.org>",
                "to": "hello@example.com",
                "cc": "nobody@example.com",
                "subject": "composed",
                "text": "Written in the console.",
                "html": "<p>Written <i>in</i> the console.</p>",
            },
            files={"attachments": ("notes.txt", b"some notes\n", "text/plain")},
            headers={"origin": live.url},
        )
        assert composed.status_code == 303, composed.text
        page = await visitor.get(composed.headers["location"])
        assert "delivered: 250 2.0.0 Ok: queued as" in page.text
        assert f"{app}.RECORD" in page.text and "nobody@example.com" in page.text
        assert "console (HELO console)" in page.text and "notes.txt" in page.text

        raw = "From: bob@example.org\nTo: ok@example.com\nSubject: pasted\n\nRaw body.\n"
        pasted = await visitor.post("/compose", {"raw": raw})
        shown = await visitor.get(pasted.headers["location"])
        assert "pasted" in shown.text and f"{app}.RECORD" in shown.text

        nobody = await visitor.post("/compose", {"raw": "Subject: no recipient\n\nHi.\n"})
        assert nobody.status_code == 400 and "no recipient" in nobody.text


async def test_remove_takes_one_named_entry_and_activity_draws_the_hour(
    tmp_path: Path, app: str
) -> None:
    async with console(tmp_path, app) as live, browser(live.url) as visitor:
        for subject in ("one", "two"):
            await sent(live, SENDER, ["nobody@example.com"], message(subject))
        queue = await visitor.get("/queues/undeliverable")
        first, second = re.findall(r'data-key="([^"]+)"', queue.text)
        removed = await visitor.post(f"/queues/undeliverable/{first}/remove", {})
        left = await visitor.get(removed.headers["location"])
        assert f"removed {first}" in left.text and second in left.text
        gone = await visitor.post(f"/queues/undeliverable/{first}/remove", {})
        assert gone.status_code == 404
        assert (await visitor.get("/queues/nowhere")).status_code == 404

        chart = await visitor.get("/activity")
        assert "<svg" in chart.text and chart.text.count("<rect") >= 1
        assert "queued: 2" in chart.text and 'hx-trigger="every 10s"' in chart.text
