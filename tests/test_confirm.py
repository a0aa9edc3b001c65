"""The confirmation engine on every state store (memory, shelve, sqlite, and the real Redis and
PostgreSQL), and a "reply to confirm" flow over SMTP through a running server and a sink."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from email import message_from_bytes, policy
from pathlib import Path

import aiosmtplib
import pytest
from helpers import Sink, mail, run_threads, running, sink_server
from state.test_stores import every_store  # noqa: F401 (the store fixture)

from mailrouter import reply
from mailrouter.confirm import NAMESPACE, Confirmations, Pending, StatePendingStore, new_secret
from mailrouter.outbound import sender as outbound
from mailrouter.outbound.response import MailResponse
from mailrouter.outbound.transport import ConnectionOptions
from mailrouter.state import MemoryStorage, StateStorage
from mailrouter.testing import Outbox

JOIN = "news-subscribe"
JOE = "joe@example.org"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(store: StateStorage, clock: Clock) -> Confirmations:
    return Confirmations(store, ttl=3600, clock=clock)


def test_a_secret_confirms_once(engine: Confirmations) -> None:
    pending = engine.create(JOIN, "Joe <JOE@example.org>", {"list": "news"})
    assert (pending.target, pending.address) == (JOIN, JOE)
    assert len(pending.secret) == 32 and pending.secret.isalnum() and pending.secret.islower()
    found = engine.verify(JOIN, JOE, pending.secret)
    assert found == pending and found.data == {"list": "news"}
    assert engine.verify(JOIN, JOE, pending.secret) is None  # used up
    assert engine.pending(JOIN, JOE) is None


def test_only_the_right_secret_from_the_right_address_for_the_right_action(
    engine: Confirmations,
) -> None:
    pending = engine.create(JOIN, JOE)
    assert engine.verify(JOIN, JOE, new_secret()) is None
    assert engine.verify(JOIN, JOE, "") is None
    assert engine.verify(JOIN, "eve@example.net", pending.secret) is None
    assert engine.verify("news-unsubscribe", JOE, pending.secret) is None
    assert engine.verify(JOIN, JOE, f" {pending.secret.upper()} ") == pending  # MTAs change case


def test_a_confirmation_expires(engine: Confirmations, clock: Clock) -> None:
    pending = engine.create(JOIN, JOE)
    assert pending.expires == clock.now + 3600
    clock.now += 3599
    assert engine.pending(JOIN, JOE) == pending
    clock.now += 1
    assert engine.verify(JOIN, JOE, pending.secret) is None
    assert engine.pending(JOIN, JOE) is None  # and it is gone


def test_asking_again_keeps_the_secret_and_starts_the_time_anew(
    engine: Confirmations, clock: Clock
) -> None:
    first = engine.create(JOIN, JOE, {"try": 1})
    clock.now += 3000
    again = engine.create(JOIN, JOE, {"try": 2})
    assert again.secret == first.secret and again.expires == clock.now + 3600
    clock.now += 3000
    assert engine.verify(JOIN, JOE, first.secret) == again and again.data == {"try": 2}
    clock.now += 3600
    assert engine.create(JOIN, JOE).secret != first.secret  # after expiry: a new secret


def test_cancel(engine: Confirmations) -> None:
    pending = engine.create(JOIN, JOE)
    assert engine.cancel(JOIN, JOE, "wrong") is None
    assert engine.cancel(JOIN, JOE, pending.secret) == pending
    assert engine.cancel(JOIN, JOE) is None
    engine.create(JOIN, JOE)
    assert engine.cancel(JOIN, JOE) is not None  # without a secret: the address itself asks
    assert engine.verify(JOIN, JOE, pending.secret) is None


def test_purge_drops_the_expired_and_keeps_the_rest(
    engine: Confirmations, store: StateStorage, clock: Clock
) -> None:
    engine.create(JOIN, "old@example.org")
    clock.now += 1800
    kept = engine.create(JOIN, JOE)
    store.set("handlers.lists", JOE, "POSTING")  # a state beside them is left alone
    clock.now += 1800
    assert engine.purge() == 1
    assert engine.pending(JOIN, JOE) == kept
    assert store.get("handlers.lists", JOE) == "POSTING"
    assert store.get(NAMESPACE + JOIN, JOE) == kept.to_json()  # a plain "state" in the store


def test_of_eight_racing_replies_one_confirms(engine: Confirmations) -> None:
    pending = engine.create(JOIN, JOE)
    won: list[Pending | None] = []
    guard = threading.Lock()

    def confirm() -> None:
        found = engine.verify(JOIN, JOE, pending.secret)
        with guard:
            won.append(found)

    run_threads([threading.Thread(target=confirm) for _ in range(8)], timeout=30)
    assert sorted(won, key=lambda p: p is None) == [pending] + [None] * 7


def test_the_engine_needs_one_place_to_keep_confirmations() -> None:
    with pytest.raises(TypeError, match="needs a state store"):
        Confirmations()
    store = MemoryStorage()
    with pytest.raises(TypeError, match="not both"):
        Confirmations(store, records=StatePendingStore(store))
    with pytest.raises(ValueError, match="not an address"):
        Confirmations(store).create(JOIN, "")
    with pytest.raises(ValueError, match="target"):
        Confirmations(store).create("", JOE)


def test_an_unreadable_record_is_no_confirmation() -> None:
    store = MemoryStorage()
    store.set(NAMESPACE + JOIN, JOE, "not json")
    assert Confirmations(store).pending(JOIN, JOE) is None
    assert Confirmations(store).purge() == 1


def test_send_asks_for_the_confirmation_by_mail() -> None:
    engine, outbox = Confirmations(MemoryStorage()), Outbox()
    request = mail(JOE, ["news-subscribe@example.com"], "join")
    seen: list[Pending | None] = []

    def compose(pending: Pending) -> MailResponse | None:
        seen.append(engine.pending(JOIN, JOE))  # not kept yet: kept only if this is sent
        return reply(request, "Reply to confirm.", sender=f"news-confirm-{pending.secret}@x.org")

    with outbound.using(outbox):
        pending = engine.send(JOIN, request.route_from, compose, data={"list": "news"})
    assert seen == [None] and pending is not None
    assert engine.pending(JOIN, JOE) == pending
    (sent,) = outbox.delivered(to=JOE)
    assert sent["From"] == f"news-confirm-{pending.secret}@x.org"


def test_nothing_is_kept_or_sent_for_automatic_mail() -> None:
    engine, outbox = Confirmations(MemoryStorage()), Outbox()
    bounce = mail("", ["news-subscribe@example.com"], "Undelivered Mail Returned to Sender")

    def compose(pending: Pending) -> MailResponse | None:
        return reply(bounce, "Reply to confirm.")  # None: never answer the null sender

    assert engine.send(JOIN, JOE, compose, relay=outbox) is None
    assert engine.pending(JOIN, JOE) is None and outbox.sent == []


FLOW = """
from mailrouter import SMTPError, reply, route, stateless
from mailrouter.confirm import Confirmations
from mailrouter.state.sqlite import SqliteStorage

CONFIRM = Confirmations(SqliteStorage({path!r}))
members = []


@route("(list)-subscribe@(host)", list="news")
@stateless
def SUBSCRIBE(message, list=None, host=None):
    CONFIRM.send(
        f"{{list}}-subscribe",
        message.route_from,
        lambda pending: reply(
            message, "Reply to this message to join.",
            sender=f"{{list}}-confirm-{{pending.secret}}@{{host}}", subject=f"Join {{list}}?",
        ),
    )


@route("(list)-confirm-(secret)@(host)", list="news", secret="[a-z2-7]+")
@stateless
def CONFIRM_REPLY(message, list=None, secret=None, host=None):
    if CONFIRM.verify(f"{{list}}-subscribe", message.route_from, secret) is None:
        raise SMTPError(550, "5.7.1 No such confirmation for you")
    members.append(message.route_from)
"""


async def test_reply_to_confirm_over_smtp(tmp_path: Path, make_module: Callable[..., str]) -> None:
    name = make_module(FLOW.format(path=str(tmp_path / "confirm.db")))
    sink = Sink()

    async def say(sender: str, to: str) -> None:
        data = mail(sender, [to], "join").data
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port) as client:
            await client.sendmail(sender, [to], data)

    async with sink_server(sink) as sink_port:
        with outbound.using(outbound.Relay(ConnectionOptions("127.0.0.1", sink_port))):
            async with running(tmp_path, name) as server:
                await say(JOE, "news-subscribe@example.com")
                (asked,) = sink.received
                assert asked.recipients == [JOE]
                question = message_from_bytes(asked.data, policy=policy.default)
                assert question["Subject"] == "Join news?"
                confirm_at = str(question["From"])
                with pytest.raises(aiosmtplib.SMTPDataError, match="No such confirmation"):
                    await say("eve@example.net", confirm_at)  # the secret, from someone else
                await say(JOE, confirm_at.upper())  # the answer, as some MTAs write it
                with pytest.raises(aiosmtplib.SMTPDataError, match="No such confirmation"):
                    await say(JOE, confirm_at)  # once only
    assert importlib.import_module(name).members == [JOE]
