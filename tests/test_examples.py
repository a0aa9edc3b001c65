"""The example handler apps: conversations in memory (``mailrouter.testing``), then the mailing
list end to end: a real ``mailrouter start`` relaying to a loopback sink, smtplib clients."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import smtplib
import threading
import tomllib
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import helpers
import pytest
from dnszone import Zone, quiet_nameserver
from dnszone import serving as serving_dns
from helpers import Project, Received, Sink, serving, sink_server

from mailrouter import MailRequest, Reply, Router
from mailrouter.config import FIELDS, Settings, load_settings
from mailrouter.outbound.verp import verp_address
from mailrouter.testing import Conversation, Outbox, authenticated_as

ROOT = Path(__file__).resolve().parent.parent
LIST = "handlers_example.mailinglist"
LOG = "handlers_example.log"
JOE, ANN, BOB = "joe@x.org", "ann@y.org", "bob@z.org"
BOUNCES = "news-bounces@example.com"


@pytest.fixture(autouse=True)
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the examples importable and keep their files under ``tmp_path/data``."""
    monkeypatch.syspath_prepend(str(ROOT))  # also restores what build_router adds to sys.path
    import handlers_example.lists
    import handlers_example.log

    folder = tmp_path / "data"
    monkeypatch.setattr(handlers_example.lists, "LISTS_DIR", folder / "lists")
    monkeypatch.setattr(handlers_example.log, "MAIL_DIR", folder / "mail")
    return folder


@pytest.fixture
def talk(conversation: Conversation) -> Conversation:
    """The ``conversation`` fixture with the mailing list loaded for example.com."""
    conversation.router.defaults["host"] = r"example\.com"
    conversation.router.load([LIST])
    return conversation


def say(talk: Conversation, sender: str, to: str, subject: str = "Hello") -> Reply:
    """Deliver one message from ``sender`` to ``to``; the reply."""
    (reply,) = talk.say(to, subject, "Hi all.\n", sender=sender).replies
    return reply


def accepted(talk: Conversation, sender: str, to: str, subject: str = "Hello") -> None:
    reply = say(talk, sender, to, subject)
    assert reply.code == 250, reply


def deliver(router: Router, sender: str, to: str, headers: str = "", body: str = "x\r\n") -> Reply:
    """Deliver a message with extra ``headers`` (which ``Conversation.say`` cannot add)."""
    data = f"From: {sender or 'daemon@x.org'}\r\nSubject: Hi\r\n{headers}\r\n{body}".encode()
    request = MailRequest(None, sender, [to], data)
    request.auth = authenticated_as(sender or "daemon@x.org")  # as Conversation.say does
    (reply,) = asyncio.run(router.deliver(request)).replies
    return reply


def last(outbox: Outbox, to: str) -> EmailMessage:
    """The last message sent to ``to``."""
    return outbox.delivered(to=to)[-1]


def returned(member: str, status: str) -> bytes:
    """A Postfix-style delivery status notification (RFC 3464) of a copy of a post to
    ``member``: a hard bounce for a ``5.x.x`` status, a delay for a ``4.x.x`` one. Each has
    its own Message-ID: the same bytes again would be an MTA's retry, received once."""
    action = "failed" if status.startswith("5") else "delayed"
    reply = f"{status[0]}50 {status} <{member}>: Recipient address rejected"
    return (
        "From: MAILER-DAEMON@mx.x.org (Mail Delivery System)\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: {make_msgid()}\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Description: Notification\r\nContent-Type: text/plain\r\n\r\n"
        f"This is the mail system at host mx.x.org.\r\n\r\n<{member}>: host mx.x.org said: "
        f"{reply}\r\n\r\n--B\r\nContent-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.x.org\r\n\r\n"
        f"Final-Recipient: rfc822; {member}\r\nOriginal-Recipient: rfc822;{member}\r\n"
        f"Action: {action}\r\nStatus: {status}\r\nRemote-MTA: dns; mx.x.org\r\n"
        f"Diagnostic-Code: smtp; {reply}\r\n\r\n--B\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\nFrom: ann@y.org\r\nSubject: [news] Hi\r\n"
        "\r\n--B--\r\n"
    ).encode()


def vacation(member: str) -> bytes:
    """An automatic reply (RFC 3834) of ``member`` to a copy of a post."""
    return (
        f"From: {member}\r\nSubject: Out of office: [news] Hi\r\nMessage-ID: {make_msgid()}\r\n"
        "Auto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n"
    ).encode()


def verp(member: str) -> str:
    """The return path of the copies of news@ posts to ``member``."""
    return verp_address(BOUNCES, member)


def token_in(confirmation: EmailMessage) -> str:
    found = re.fullmatch(r"[a-z0-9.]+-confirm-([a-z0-9]+)@example\.com", confirmation["From"])
    assert found, confirmation["From"]
    return found.group(1)


def join(talk: Conversation, sender: str, name: str = "news") -> None:
    """Subscribe and confirm ``sender``."""
    accepted(talk, sender, f"{name}-subscribe@example.com")
    token = token_in(last(talk.outbox, sender))
    accepted(talk, sender, f"{name}-confirm-{token}@example.com")


def test_subscribe_confirm_post_unsubscribe(talk: Conversation) -> None:
    from handlers_example import lists

    accepted(talk, JOE, "news-subscribe@example.com", "join")
    (sent,) = talk.outbox.sent
    confirmation = sent.message
    assert (sent.sender, sent.recipients) == (BOUNCES, (JOE,))
    assert confirmation["To"] == JOE and confirmation["Subject"] == (
        "Confirm your subscription to news@example.com"
    )
    assert confirmation["Auto-Submitted"] == "auto-replied"
    assert confirmation["In-Reply-To"] is not None
    token = token_in(confirmation)
    assert f"news-confirm-{token}@example.com" in confirmation.get_content()
    assert lists.status("news", JOE) == "pending"
    talk.assert_in_state(LIST, JOE, "CONFIRMING", to="news@example.com")

    accepted(talk, JOE, f"news-confirm-{token}@example.com", "Re: join")
    assert last(talk.outbox, JOE)["Subject"] == "Welcome to news@example.com"
    talk.assert_in_state(LIST, JOE, "POSTING", to="news@example.com")

    accepted(talk, JOE, "news@example.com", "First post")
    sent = talk.outbox.sent[-1]
    copy = sent.message
    assert (sent.sender, sent.recipients) == ("news-bounces+joe=x.org@example.com", (JOE,))
    assert copy["From"] == JOE and copy["Subject"] == "[news] First post"
    assert copy["List-Id"] == "<news.example.com>"
    assert copy["List-Post"] == "<mailto:news@example.com>"
    assert copy["List-Unsubscribe"] == "<mailto:news-unsubscribe@example.com>"
    assert copy["Precedence"] == "list"
    assert copy.get_content().strip() == "Hi all."

    accepted(talk, JOE, "news-unsubscribe@example.com")
    assert last(talk.outbox, JOE)["Subject"] == "Goodbye from news@example.com"
    talk.assert_in_state(LIST, JOE, "START", to="news@example.com")
    reply = say(talk, JOE, "news@example.com")
    assert reply.code == 550
    assert reply.text.startswith("5.7.1 You are not a member of news@example.com")
    assert len(talk.outbox.sent) == 4
    assert lists.read("news") == lists.Roster()


def test_every_member_gets_every_post_and_outsiders_are_refused(talk: Conversation) -> None:
    from handlers_example import lists

    join(talk, JOE)
    join(talk, "ANN@y.org")  # the normalised address is the member
    talk.outbox.clear()
    accepted(talk, ANN, "news@example.com", "[news] Re: hi")
    copies = talk.outbox.sent  # one copy per member, each from its own return path
    assert [(sent.sender, sent.recipients) for sent in copies] == [
        (verp(ANN), (ANN,)),
        (verp(JOE), (JOE,)),
    ]
    assert {sent.message["Subject"] for sent in copies} == {"[news] Re: hi"}  # no second tag
    reply = say(talk, BOB, "news@example.com")
    assert (reply.code, reply.text[:5]) == (550, "5.7.1")
    assert "news-subscribe@example.com" in reply.text
    assert lists.read("news").members == {JOE, ANN}
    assert len(talk.outbox.sent) == 2


def test_wrong_or_foreign_tokens_are_refused_and_subscribing_again_resends(
    talk: Conversation,
) -> None:
    accepted(talk, JOE, "news-subscribe@example.com")
    token = token_in(last(talk.outbox, JOE))
    reply = say(talk, JOE, "news-confirm-0badc0de@example.com")
    assert (reply.code, reply.text) == (550, "5.7.1 Wrong confirmation token for news@example.com")
    assert say(talk, JOE, "news@example.com").text == (
        "5.7.1 Confirm your subscription to news@example.com first"
    )
    reply = say(talk, ANN, f"news-confirm-{token}@example.com")
    assert reply.text.startswith("5.7.1 No subscription to news@example.com")
    accepted(talk, JOE, "news-subscribe@example.com")
    assert token_in(last(talk.outbox, JOE)) == token  # the same token, sent again
    talk.assert_in_state(LIST, JOE, "CONFIRMING", to="news@example.com")
    accepted(talk, JOE, f"news-confirm-{token}@example.com")
    talk.assert_in_state(LIST, JOE, "POSTING", to="news@example.com")
    accepted(talk, JOE, f"news-confirm-{token}@example.com")  # a second click: harmless
    accepted(talk, JOE, "news-subscribe@example.com")
    assert last(talk.outbox, JOE)["Subject"] == "You are already on news@example.com"


def test_one_sender_has_a_state_per_list(talk: Conversation) -> None:
    accepted(talk, JOE, "chat-subscribe@example.com")
    token = token_in(last(talk.outbox, JOE))
    accepted(talk, JOE, "news-subscribe@example.com")
    accepted(talk, JOE, f"chat-confirm-{token}@example.com")
    talk.assert_in_state(LIST, JOE, "POSTING", to="chat@example.com")
    talk.assert_in_state(LIST, JOE, "CONFIRMING", to="news-anything@example.com")
    talk.outbox.clear()
    result = talk.say(["chat@example.com", "news@example.com"], "both", sender=JOE)
    assert [reply.code for reply in result.replies] == [250, 550]
    assert result.replies[1].text.startswith("5.7.1 Confirm your subscription to news@example.com")
    (sent,) = talk.outbox.sent
    assert sent.message["List-Id"] == "<chat.example.com>"


def test_bounces_auto_replies_and_list_mail_are_ignored(
    talk: Conversation, caplog: pytest.LogCaptureFixture
) -> None:
    from handlers_example import lists

    router = talk.router
    report = 'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n'
    assert deliver(router, "", "news-subscribe@example.com").code == 250  # MAIL FROM:<>
    assert deliver(router, "", "news@example.com").code == 250
    assert talk.outbox.sent == [] and lists.read("news") == lists.Roster()
    join(talk, JOE)
    talk.outbox.clear()
    for headers in (
        "Auto-Submitted: auto-replied\r\n",
        "Precedence: bulk\r\n",
        "List-Id: News <news.example.com>\r\n",  # a copy of a post, come back
    ):
        assert deliver(router, JOE, "news@example.com", headers).code == 250
    assert deliver(router, JOE, "news-unsubscribe@example.com", report, "--b--\r\n").code == 250
    assert talk.outbox.sent == []
    talk.assert_in_state(LIST, JOE, "POSTING", to="news@example.com")

    caplog.set_level(logging.INFO, logger=LIST)
    result = asyncio.run(router.deliver(helpers.mail("", [BOUNCES], subject="Undelivered")))
    assert [reply.code for reply in result.replies] == [250] and not result.reasons
    assert caplog.text == "" and talk.outbox.sent == []  # no bounce: dropped quietly


def bounce(talk: Conversation, to: str, data: bytes) -> None:
    """Deliver ``data`` from the null sender to ``to``; it must be accepted."""
    result = asyncio.run(talk.router.deliver(MailRequest(None, "", [to], data)))
    assert [reply.code for reply in result.replies] == [250] and not result.reasons


def test_a_members_second_hard_bounce_unsubscribes_it(
    talk: Conversation, caplog: pytest.LogCaptureFixture
) -> None:
    from handlers_example import lists

    caplog.set_level(logging.INFO, logger=LIST)
    join(talk, JOE)
    join(talk, ANN)
    bounce(talk, verp(JOE), returned(JOE, "5.1.1"))
    assert lists.read("news") == lists.Roster({JOE, ANN}, bounces={JOE: 1})
    assert "'news@example.com': hard bounce 1 for 'joe@x.org': 550 5.1.1" in caplog.text
    for _ in range(2):  # neither counts
        bounce(talk, verp(ANN), returned(ANN, "4.2.2"))
        bounce(talk, verp(ANN), vacation(ANN))
        bounce(talk, verp(BOB), returned(BOB, "5.1.1"))  # no member
    assert lists.read("news") == lists.Roster({JOE, ANN}, bounces={JOE: 1})
    assert "soft bounce for ('ann@y.org',): 4.2.2" in caplog.text

    bounce(talk, BOUNCES, returned(JOE, "5.1.1"))  # no VERP: the report names the member
    assert lists.read("news") == lists.Roster({ANN})
    assert "'joe@x.org' unsubscribed after 2 hard bounces" in caplog.text
    assert talk.outbox.sent[-1].recipients == (ANN,)  # nothing sent to the dead address
    reply = say(talk, JOE, "news@example.com")
    assert reply.text.startswith("5.7.1 You are not a member of news@example.com")
    join(talk, JOE)  # back, with no bounces counted
    assert lists.read("news") == lists.Roster({JOE, ANN})


def test_the_list_file_wins_after_a_lost_state_or_a_crash(talk: Conversation) -> None:
    from handlers_example import lists

    join(talk, JOE)
    talk.router.clear_states()  # as after restarting with memory://
    accepted(talk, JOE, "news@example.com", "still here")
    assert last(talk.outbox, JOE)["Subject"] == "[news] still here"
    talk.assert_in_state(LIST, JOE, "POSTING", to="news@example.com")

    good = lists.path("news").read_bytes()
    lists.path("news").write_text("{not json")
    failed = talk.say("news@example.com", "lost", sender=JOE)  # the handler fails: ERROR
    assert [reply.code for reply in failed.replies] == [451] and failed.reasons
    talk.assert_in_state(LIST, JOE, "ERROR", to="news@example.com")
    lists.path("news").write_bytes(good)
    accepted(talk, JOE, "news@example.com", "recovered")
    assert last(talk.outbox, JOE)["Subject"] == "[news] recovered"
    talk.assert_in_state(LIST, JOE, "POSTING", to="news@example.com")


def test_an_expired_token_is_refused_and_a_new_request_gets_a_new_one(
    talk: Conversation, monkeypatch: pytest.MonkeyPatch
) -> None:
    from handlers_example import lists

    monkeypatch.setattr(lists, "CONFIRM_TTL", 0.0)  # expired as soon as it is made
    accepted(talk, JOE, "news-subscribe@example.com")
    stale = token_in(last(talk.outbox, JOE))
    reply = say(talk, JOE, f"news-confirm-{stale}@example.com")
    assert reply.text.startswith("5.7.1 No subscription to news@example.com")
    monkeypatch.setattr(lists, "CONFIRM_TTL", 3600.0)
    accepted(talk, JOE, "news-subscribe@example.com")
    fresh = token_in(last(talk.outbox, JOE))
    assert fresh != stale
    accepted(talk, JOE, f"news-confirm-{fresh}@example.com")
    assert lists.status("news", JOE) == "member"


def test_a_used_token_does_not_subscribe_again_after_leaving(talk: Conversation) -> None:
    from handlers_example import lists

    accepted(talk, JOE, "news-subscribe@example.com")
    token = token_in(last(talk.outbox, JOE))
    accepted(talk, JOE, f"news-confirm-{token}@example.com")
    accepted(talk, JOE, "news-unsubscribe@example.com")
    reply = say(talk, JOE, f"news-confirm-{token}@example.com")
    assert reply.text.startswith("5.7.1 No subscription to news@example.com")
    assert lists.status("news", JOE) is None


def test_concurrent_list_edits_lose_nothing(data: Path) -> None:
    from handlers_example import lists

    senders = [f"user{i}@x.org" for i in range(32)]
    threads = [threading.Thread(target=lists.request, args=("news", s)) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {lists.status("news", s) for s in senders} == {"pending"}
    assert lists.read("news") == lists.Roster()  # no member yet
    assert (data / "lists").stat().st_mode & 0o777 == 0o700  # pending secrets: the server's only
    with pytest.raises(ValueError, match="bad list name"):
        lists.path("../etc")


def test_list_names_and_tokens_are_ascii() -> None:
    router = Router(defaults={"host": r"example\.com"})
    router.load([LIST])
    names = [m.handler.name for m in router.match("news-confirm-ab12@example.com")]
    assert names == ["START", "CONFIRMING", "POSTING", "ERROR"]
    assert router.match("n\u0131ws@example.com") == []  # dotless i: [a-z] would match it
    assert router.match("news-confirm-\u0131@example.com") == []


def _sendmail(port: int, sender: str, rcpt: str, data: bytes) -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(sender, [rcpt], data)


async def transmit(port: int, sender: str, rcpt: str, data: bytes) -> None:
    """Send ``data`` over SMTP; it must be accepted."""
    refused = await asyncio.to_thread(_sendmail, port, sender, rcpt, data)
    assert refused == {}


async def send(port: int, sender: str, rcpt: str, subject: str, message_id: str = "") -> None:
    """Send one small message over SMTP; it must be accepted."""
    head = f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
    head += f"Message-ID: {message_id}\r\n" if message_id else ""
    await transmit(port, sender, rcpt, f"{head}\r\nHi all.\r\n".encode())


async def test_log_handler_stores_a_copy_and_logs_one_escaped_line(
    tmp_path: Path, data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    subject = "=?utf-8?q?evil=0D=0AFAKE_LINE?="  # decodes to a CR LF
    async with helpers.running(tmp_path, LOG) as server:
        await send(server.port, JOE, "Someone@Example.com", subject)
        await send(server.port, JOE, "nobody@elsewhere.org", "Hi")  # not the host: queued
        queue = server.router.undeliverable
        assert queue is not None and len(queue) == 1
    new = data / "mail" / "new"
    (stored,) = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in new.iterdir()]
    assert stored["Delivered-To"] == "Someone@Example.com"
    assert stored["Subject"] == "evil\r\nFAKE LINE" and stored.get_content() == "Hi all.\n"
    (record,) = [r for r in caplog.records if r.name == LOG]
    line = record.getMessage()
    assert record.levelno == logging.INFO and "\r" not in line and "\n" not in line
    assert "'joe@x.org'" in line and "'Someone@Example.com'" in line
    assert "'evil\\r\\nFAKE LINE'" in line and " bytes" in line


async def test_the_default_config_parses_and_runs(
    tmp_path: Path, data: Path, outbox: Outbox
) -> None:
    overrides = {
        "port": 0,
        "state_url": "memory://",
        "undeliverable": str(tmp_path / "queue"),
        "journal_url": f"sqlite://{tmp_path}/journal.db",
        "dns_nameservers": [quiet_nameserver()],
    }
    settings = load_settings(ROOT / "config", overrides=overrides, environ={})
    assert settings.handlers == (LIST, LOG)
    assert settings.defaults == {"host": r"localhost|example\.com"}
    assert settings.port == 0 and settings.root == ROOT

    documented: dict[str, Any] = {}
    for line in (ROOT / "config" / "mailrouter.toml").read_text().splitlines():
        if re.match(r"# (\w+) = ", line) and line[2:].split()[0] in FIELDS:
            documented.update(tomllib.loads(line[2:]))
    documented = {k: tuple(v) if isinstance(v, list) else v for k, v in documented.items()}
    built_in = Settings()
    assert documented == {
        name: getattr(built_in, name)
        for name in FIELDS
        if name not in ("handlers", "defaults", "config_dir")
    }

    async with serving(settings) as server:
        assert server.router.modules[:2] == (LIST, LOG)
        await send(server.port, JOE, "news-subscribe@localhost", "join")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            await send(server.port, BOB, "news@localhost", "Hi")
    assert refused.value.smtp_code == 550
    (confirmation,) = outbox.delivered(to=JOE)
    assert confirmation["From"].startswith("news-confirm-")
    (stored,) = (data / "mail" / "new").iterdir()
    assert stored.read_bytes().startswith(b"Delivered-To: news-subscribe@localhost\n")


CONFIG = """
handlers = ["handlers_example.mailinglist"]
relay_host = "127.0.0.1"
relay_port = {port}
dns_nameservers = ["{dns}"]
[defaults]
host = 'example\\.com'
"""


async def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {condition}")
        await asyncio.sleep(0.02)


def parse(received: Received) -> EmailMessage:
    message = message_from_bytes(received.data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def found(sink: Sink, to: str, subject: str) -> list[Received]:
    """What the sink received for ``to`` with ``subject``."""
    return [r for r in sink.received if to in r.recipients and parse(r)["Subject"] == subject]


async def arrived(sink: Sink, to: str, subject: str, sender: str = BOUNCES) -> EmailMessage:
    """The one message for ``to`` with ``subject`` (waited for), sent from ``sender``."""
    await wait_for(lambda: bool(found(sink, to, subject)))
    (received,) = found(sink, to, subject)
    assert received.sender == sender
    return parse(received)


async def test_the_whole_conversation_over_smtp_through_the_relay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT), prepend=os.pathsep)  # for handlers_example
    sink = Sink()
    project = Project(tmp_path / "project")
    (project.folder / "config").mkdir(parents=True)
    zone = Zone()
    for member in (JOE, ANN, BOB):  # the members' own domains send their mail: DMARC passes
        domain = member.partition("@")[2]
        zone.spf(domain, "v=spf1 ip4:127.0.0.1 -all")
        zone.dmarc(domain, "v=DMARC1; p=reject")
    with serving_dns(zone):
        await converse(project, sink, zone.address)


async def converse(project: Project, sink: Sink, dns: str) -> None:
    """Subscribe three members, post, unsubscribe one, bounce another twice, post between: each
    step's mail arrives, each copy from its member's VERP address."""
    async with sink_server(sink) as sink_port:
        config = CONFIG.format(port=sink_port, dns=dns)
        (project.folder / "config" / "mailrouter.toml").write_text(config)
        port, _ = await asyncio.to_thread(project.start)
        try:
            for member in (JOE, ANN, BOB):
                await send(port, member, "news-subscribe@example.com", "join", f"<join.{member}>")
                confirmation = await arrived(
                    sink, member, "Confirm your subscription to news@example.com"
                )
                assert confirmation["Auto-Submitted"] == "auto-replied"
                assert confirmation["In-Reply-To"] == f"<join.{member}>"
                confirm = confirmation["From"]
                assert confirm in confirmation.get_content()
                await send(port, member, confirm, "Re: Confirm")
                await arrived(sink, member, "Welcome to news@example.com")

            await send(port, ANN, "news@example.com", "First post", "<first@y.org>")
            for member in (JOE, ANN, BOB):
                copy = await arrived(sink, member, "[news] First post", verp(member))
                assert copy["From"] == ANN and copy["Message-ID"] == "<first@y.org>"
                assert copy["List-Id"] == "<news.example.com>"
                assert copy["List-Unsubscribe"] == "<mailto:news-unsubscribe@example.com>"
                assert copy["Precedence"] == "list"

            await send(port, BOB, "news-unsubscribe@example.com", "leave")
            await arrived(sink, BOB, "Goodbye from news@example.com")
            await transmit(port, "", verp(JOE), returned(JOE, "5.1.1"))  # the first hard bounce
            for _ in range(2):  # neither counts
                await transmit(port, "", verp(ANN), returned(ANN, "4.2.2"))
                await transmit(port, "", verp(ANN), vacation(ANN))
            await send(port, JOE, "news@example.com", "Second post")
            for member in (JOE, ANN):
                await arrived(sink, member, "[news] Second post", verp(member))
            # the list sends before it answers DATA: a copy for Bob would be here by now
            assert found(sink, BOB, "[news] Second post") == []

            await transmit(port, "", verp(JOE), returned(JOE, "5.1.1"))  # the second
            await send(port, ANN, "news@example.com", "Third post")
            await arrived(sink, ANN, "[news] Third post", verp(ANN))
            assert found(sink, JOE, "[news] Third post") == []  # unsubscribed
            with pytest.raises(smtplib.SMTPDataError) as refused:
                await send(port, JOE, "news@example.com", "Fourth post")
            assert b"not a member of news@example.com" in refused.value.smtp_error
            every = sorted((r, parse(m)["Subject"]) for m in sink.received for r in m.recipients)
            # 3 confirmations, 3 welcomes, 3 + 2 + 1 copies and a goodbye; nothing twice
            assert len(every) == len(set(every)) == 13
            stopped = await asyncio.to_thread(project.run, "stop")
            assert stopped.returncode == 0, stopped.stderr
        finally:
            project.kill_all()
