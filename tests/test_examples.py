"""The example handler apps end to end: a real server on 127.0.0.1 port 0, smtplib clients."""

from __future__ import annotations

import asyncio
import logging
import re
import smtplib
import threading
import tomllib
from contextlib import AbstractAsyncContextManager
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import lmtp_send, serving

from mailrouter import MailRequest, Router
from mailrouter.config import FIELDS, Settings, load_settings
from mailrouter.server import Server

ROOT = Path(__file__).resolve().parent.parent
LIST = "handlers_example.mailinglist"
LOG = "handlers_example.log"
JOE, ANN, BOB = "joe@x.org", "ann@y.org", "bob@z.org"


@pytest.fixture(autouse=True)
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the examples importable and keep their files under ``tmp_path/data``."""
    monkeypatch.syspath_prepend(str(ROOT))  # also restores what build_router adds to sys.path
    import handlers_example.lists
    import handlers_example.log
    import handlers_example.outbox

    folder = tmp_path / "data"
    monkeypatch.setattr(handlers_example.lists, "LISTS_DIR", folder / "lists")
    monkeypatch.setattr(handlers_example.outbox, "OUTBOX_DIR", folder / "outbox")
    monkeypatch.setattr(handlers_example.log, "MAIL_DIR", folder / "mail")
    return folder


def running(
    tmp_path: Path, *handlers: str, **overrides: Any
) -> AbstractAsyncContextManager[Server]:
    """A server for ``handlers`` (the mailing list by default) with its files under tmp_path."""
    return helpers.running(tmp_path, *(handlers or (LIST,)), **overrides)


def _sendmail(port: int, sender: str, rcpt: str, subject: str, headers: str, body: str) -> Any:
    data = f"From: {sender or 'daemon@x.org'}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n{headers}"
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(sender, [rcpt], f"{data}\r\n{body}".encode())


async def send(
    server: Server,
    sender: str,
    rcpt: str,
    subject: str = "Hello",
    headers: str = "",
    body: str = "Hi all.\r\n",
) -> None:
    """Send one message; it must be accepted."""
    assert (
        await asyncio.to_thread(_sendmail, server.port, sender, rcpt, subject, headers, body) == {}
    )


async def refusal(server: Server, sender: str, rcpt: str) -> tuple[int, str]:
    """Send one message; it must be refused after DATA: the reply."""
    with pytest.raises(smtplib.SMTPDataError) as info:
        await asyncio.to_thread(_sendmail, server.port, sender, rcpt, "Hello", "", "Hi.\r\n")
    error = info.value.smtp_error
    return info.value.smtp_code, error.decode() if isinstance(error, bytes) else error


def maildir(folder: Path) -> list[EmailMessage]:
    """The messages in a maildir's ``new/``, oldest first."""
    new = folder / "new"
    paths = sorted(new.iterdir()) if new.is_dir() else []
    return [message_from_bytes(p.read_bytes(), policy=policy.default) for p in paths]


def token_in(confirmation: EmailMessage) -> str:
    found = re.fullmatch(r"[a-z0-9.]+-confirm-([0-9a-f]+)@example\.com", confirmation["From"])
    assert found, confirmation["From"]
    return found.group(1)


def state(server: Server, sender: str, rcpt: str) -> str:
    return server.router.get_state(LIST, MailRequest(None, sender, [rcpt], b""))


async def join(server: Server, data: Path, sender: str, name: str = "news") -> None:
    """Subscribe and confirm ``sender``."""
    await send(server, sender, f"{name}-subscribe@example.com")
    token = token_in(maildir(data / "outbox")[-1])
    await send(server, sender, f"{name}-confirm-{token}@example.com")


async def test_subscribe_confirm_post_unsubscribe(tmp_path: Path, data: Path) -> None:
    from handlers_example import lists

    async with running(tmp_path) as server:
        await send(server, JOE, "news-subscribe@example.com")
        (confirmation,) = maildir(data / "outbox")
        assert confirmation["X-Outbox-To"] == JOE and confirmation["To"] == JOE
        assert confirmation["Auto-Submitted"] == "auto-replied"
        token = token_in(confirmation)
        assert f"news-confirm-{token}@example.com" in confirmation.get_content()
        assert lists.status("news", JOE) == "pending"
        assert state(server, JOE, "news@example.com") == "CONFIRMING"

        await send(server, JOE, f"news-confirm-{token}@example.com")
        assert maildir(data / "outbox")[-1]["Subject"] == "Welcome to news@example.com"
        assert state(server, JOE, "news@example.com") == "POSTING"

        await send(server, JOE, "news@example.com", subject="First post")
        copy = maildir(data / "outbox")[-1]
        assert copy["X-Outbox-To"] == JOE and copy["From"] == JOE
        assert copy["Subject"] == "[news] First post"
        assert copy["List-Id"] == "<news.example.com>"
        assert copy["List-Unsubscribe"] == "<mailto:news-unsubscribe@example.com>"
        assert copy.get_content() == "Hi all.\n"

        await send(server, JOE, "news-unsubscribe@example.com")
        assert maildir(data / "outbox")[-1]["Subject"] == "Goodbye from news@example.com"
        assert state(server, JOE, "news@example.com") == "START"
        code, text = await refusal(server, JOE, "news@example.com")
        assert code == 550
        assert text.startswith("5.7.1 You are not a member of news@example.com")
        assert len(maildir(data / "outbox")) == 4
        assert server.router.undeliverable is not None and len(server.router.undeliverable) == 0
    assert lists.read("news") == lists.Roster()


async def test_every_member_gets_every_post_and_outsiders_are_refused(
    tmp_path: Path, data: Path
) -> None:
    from handlers_example import lists

    async with running(tmp_path) as server:
        await join(server, data, JOE)
        await join(server, data, "Ann <ANN@y.org>")  # the normalised address is the member
        before = len(maildir(data / "outbox"))
        await send(server, ANN, "news@example.com", subject="[news] Re: hi")
        copies = maildir(data / "outbox")[before:]
        assert sorted(c["X-Outbox-To"] for c in copies) == [ANN, JOE]
        assert {c["Subject"] for c in copies} == {"[news] Re: hi"}  # no second tag
        code, text = await refusal(server, BOB, "news@example.com")
        assert (code, text[:5]) == (550, "5.7.1") and "news-subscribe@example.com" in text
    assert lists.read("news").members == {JOE, ANN}
    assert len(maildir(data / "outbox")) == before + 2


async def test_wrong_or_foreign_tokens_are_refused_and_subscribing_again_resends(
    tmp_path: Path, data: Path
) -> None:
    async with running(tmp_path) as server:
        await send(server, JOE, "news-subscribe@example.com")
        token = token_in(maildir(data / "outbox")[-1])
        code, text = await refusal(server, JOE, "news-confirm-0badc0de@example.com")
        assert (code, text) == (550, "5.7.1 Wrong confirmation token for news@example.com")
        code, text = await refusal(server, JOE, "news@example.com")
        assert text == "5.7.1 Confirm your subscription to news@example.com first"
        code, text = await refusal(server, ANN, f"news-confirm-{token}@example.com")
        assert text.startswith("5.7.1 No subscription to news@example.com")
        await send(server, JOE, "news-subscribe@example.com")
        assert token_in(maildir(data / "outbox")[-1]) == token  # the same token, sent again
        assert state(server, JOE, "news@example.com") == "CONFIRMING"
        await send(server, JOE, f"news-confirm-{token}@example.com")
        assert state(server, JOE, "news@example.com") == "POSTING"
        await send(server, JOE, f"news-confirm-{token}@example.com")  # a second click: harmless
        await send(server, JOE, "news-subscribe@example.com")
        assert maildir(data / "outbox")[-1]["Subject"] == "You are already on news@example.com"


async def test_one_sender_has_a_state_per_list(tmp_path: Path, data: Path) -> None:
    async with running(tmp_path, protocol="lmtp") as server:

        def subscribe(name: str) -> None:
            lmtp_send(server.port, JOE, [f"{name}-subscribe@example.com"], b"Subject: join\r\n\r\n")

        await asyncio.to_thread(subscribe, "chat")
        token = token_in(maildir(data / "outbox")[-1])
        await asyncio.to_thread(subscribe, "news")
        await asyncio.to_thread(
            lmtp_send, server.port, JOE, [f"chat-confirm-{token}@example.com"], b"\r\nyes\r\n"
        )
        assert state(server, JOE, "chat@example.com") == "POSTING"
        assert state(server, JOE, "news-anything@example.com") == "CONFIRMING"
        post = b"From: joe@x.org\r\nSubject: both\r\n\r\nHi.\r\n"
        replies = await asyncio.to_thread(
            lmtp_send, server.port, JOE, ["chat@example.com", "news@example.com"], post
        )
    assert [code for code, _ in replies] == [250, 550]
    assert replies[1][1].startswith(b"5.7.1 Confirm your subscription to news@example.com")
    assert maildir(data / "outbox")[-1]["List-Id"] == "<chat.example.com>"


async def test_bounces_auto_replies_and_loops_are_ignored(tmp_path: Path, data: Path) -> None:
    from handlers_example import lists

    report = 'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n'
    async with running(tmp_path) as server:
        await send(server, "", "news-subscribe@example.com")  # MAIL FROM:<>
        await send(server, "", "news@example.com")
        assert maildir(data / "outbox") == [] and lists.read("news") == lists.Roster()
        await join(server, data, JOE)
        before = len(maildir(data / "outbox"))
        await send(server, JOE, "news@example.com", headers="Auto-Submitted: auto-replied\r\n")
        await send(server, JOE, "news@example.com", headers=report, body="--b--\r\n")
        await send(server, JOE, "news@example.com", headers="List-Id: News <news.example.com>\r\n")
        await send(server, JOE, "news-unsubscribe@example.com", headers=report, body="--b--\r\n")
        assert len(maildir(data / "outbox")) == before
        assert state(server, JOE, "news@example.com") == "POSTING"


async def test_the_list_file_wins_after_a_lost_state_or_a_crash(tmp_path: Path, data: Path) -> None:
    from handlers_example import lists

    async with running(tmp_path, state_url="memory://") as server:
        await join(server, data, JOE)
        server.router.clear_states()  # as after restarting with memory://
        await send(server, JOE, "news@example.com", subject="still here")
        assert maildir(data / "outbox")[-1]["Subject"] == "[news] still here"
        assert state(server, JOE, "news@example.com") == "POSTING"

        good = lists.path("news").read_bytes()
        lists.path("news").write_text("{not json")
        await send(server, JOE, "news@example.com")  # the handler fails: queued, ERROR
        queue = server.router.undeliverable
        assert queue is not None and len(queue) == 1
        assert state(server, JOE, "news@example.com") == "ERROR"
        lists.path("news").write_bytes(good)
        await send(server, JOE, "news@example.com", subject="recovered")
        assert maildir(data / "outbox")[-1]["Subject"] == "[news] recovered"
        assert state(server, JOE, "news@example.com") == "POSTING"


def test_concurrent_list_edits_lose_nothing(data: Path) -> None:
    from handlers_example import lists

    senders = [f"user{i}@x.org" for i in range(32)]
    threads = [threading.Thread(target=lists.request, args=("news", s)) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(lists.read("news").pending) == sorted(senders)
    assert [p.name for p in (data / "lists").iterdir()] == ["news.json"]  # no temporary files
    with pytest.raises(ValueError, match="bad list name"):
        lists.path("../etc")


def test_list_names_and_tokens_are_ascii() -> None:
    router = Router(defaults={"host": r"example\.com"})
    router.load([LIST])
    names = [m.handler.name for m in router.match("news-confirm-ab12@example.com")]
    assert names == ["START", "CONFIRMING", "POSTING", "ERROR"]
    assert router.match("n\u0131ws@example.com") == []  # dotless i: [a-z] would match it
    assert router.match("news-confirm-\u0131@example.com") == []


async def test_log_handler_stores_a_copy_and_logs_one_escaped_line(
    tmp_path: Path, data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    subject = "=?utf-8?q?evil=0D=0AFAKE_LINE?="  # decodes to a CR LF
    async with running(tmp_path, LOG) as server:
        await send(server, JOE, "Someone@Example.com", subject=subject)
        await send(server, JOE, "nobody@elsewhere.org")  # not the host: no route, queued
        queue = server.router.undeliverable
        assert queue is not None and len(queue) == 1
    (stored,) = maildir(data / "mail")
    assert stored["Delivered-To"] == "Someone@Example.com"
    assert stored["Subject"] == "evil\r\nFAKE LINE" and stored.get_content() == "Hi all.\n"
    (record,) = [r for r in caplog.records if r.name == LOG]
    line = record.getMessage()
    assert record.levelno == logging.INFO and "\r" not in line and "\n" not in line
    assert "'joe@x.org'" in line and "'Someone@Example.com'" in line
    assert "'evil\\r\\nFAKE LINE'" in line and " bytes" in line


async def test_the_default_config_parses_and_runs(tmp_path: Path, data: Path) -> None:
    overrides = {"port": 0, "state_url": "memory://", "undeliverable": str(tmp_path / "queue")}
    settings = load_settings(ROOT / "config", overrides=overrides, environ={})
    assert settings.handlers == (LIST, LOG)
    assert settings.defaults == {"host": r"localhost|example\.com"}
    assert settings.port == 0 and settings.root == ROOT

    documented: dict[str, Any] = {}
    for line in (ROOT / "config" / "mailrouter.toml").read_text().splitlines():
        if re.match(r"# (\w+) = ", line) and line[2:].split()[0] in FIELDS:
            documented.update(tomllib.loads(line[2:]))
    built_in = Settings()
    assert documented == {
        name: getattr(built_in, name)
        for name in FIELDS
        if name not in ("handlers", "defaults", "config_dir")
    }

    async with serving(settings) as server:
        assert server.router.modules[:2] == (LIST, LOG)
        await send(server, JOE, "news-subscribe@localhost")
        code, _ = await refusal(server, BOB, "news@localhost")
    assert code == 550
    (confirmation,) = maildir(data / "outbox")
    assert confirmation["From"].startswith("news-confirm-")
    assert [m["Delivered-To"] for m in maildir(data / "mail")] == ["news-subscribe@localhost"]
