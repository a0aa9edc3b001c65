"""``@bounce_to(soft=..., hard=...)``: bounces go to their own handlers. In-process with a
Router, and over SMTP: a list posts through the relay with VERP to a sink, and the bounces
that come back to each member's return path reach the right handler with the right member."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from email import message_from_bytes, policy
from pathlib import Path

import aiosmtplib
import pytest
from helpers import Sink, mail, running, sink_server

from mailrouter import MailRequest, Router, bounce_to
from mailrouter.errors import RouteError
from mailrouter.outbound import sender as outbound
from mailrouter.outbound.dsn import delivery_report
from mailrouter.outbound.transport import ConnectionOptions
from mailrouter.outbound.verp import verp_address
from mailrouter.replies import Reply

BOUNCES = Path(__file__).parents[1] / "bounce" / "samples"

LIST = """
from mailrouter import bounce_to, route, stateless
from mailrouter.outbound import sender as relay
from mailrouter.outbound import verp

MEMBERS = ["ann@example.org", "gone@example.net", "full@example.net"]
hard, soft, other = [], [], []


@route("(list)@(host)", list="news")
@stateless
def POST(message, list=None, host=None):
    relay.send(message, sender=f"{list}-bounces@{host}", recipients=MEMBERS, verp=True)


def HARD(message, list=None, member=None, host=None):
    hard.append((verp.DEFAULT.member(member), message.bounce.status.code))


def SOFT(message, list=None, member=None, host=None):
    soft.append((verp.DEFAULT.member(member), message.bounce.status.code))


@route(r"(list)-bounces\\+(member)@(host)", list="news", member=verp.MEMBER)
@stateless
@bounce_to(soft=SOFT, hard=HARD)
def BOUNCES(message, list=None, member=None, host=None):
    other.append((verp.DEFAULT.member(member), message["Subject"]))
"""

STATES = """
from mailrouter import bounce_to, route


def SOFT_BOUNCED(message, **captures):
    return START


def HARD_BOUNCED(message, **captures):
    return DEAD


@route("(anything)@(host)", anything=".+")
@bounce_to(soft=SOFT_BOUNCED, hard=HARD_BOUNCED)
def START(message, anything=None, host=None):
    return TALKING


@route("(anything)@(host)", anything=".+")
def TALKING(message, anything=None, host=None):
    pass


@route("(anything)@(host)", anything=".+")
def DEAD(message, anything=None, host=None):
    pass
"""

ASYNC = """
from mailrouter import bounce_to, route, stateless

seen = []


async def SOFT(message, **captures):
    seen.append("soft")


async def HARD(message, **captures):
    seen.append("hard")


@route("(anything)@(host)", anything=".+")
@stateless
@bounce_to(soft=SOFT, hard=HARD)
async def ANY(message, anything=None, host=None):
    seen.append("mail")
"""


def bounce_for(member: str, reply: str, to: str) -> bytes:
    """The delivery report an MTA sends to ``to`` when ``member`` refused with ``reply``."""
    post = mail("news-bounces@example.com", [member], "[news] hello")
    code, _, text = reply.partition(" ")
    report = delivery_report(
        post, [Reply(member, int(code), text)], reporting_host="mx.example.net"
    )
    assert report is not None
    del report["To"]
    report["To"] = to
    return report.as_bytes()


async def test_bounces_of_verp_mail_reach_their_handlers_over_smtp(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    name = make_module(LIST)
    handlers = importlib.import_module(name)
    sink = Sink()
    async with sink_server(sink) as sink_port:
        with outbound.using(outbound.Relay(ConnectionOptions("127.0.0.1", sink_port))):
            async with running(tmp_path, name) as server:

                async def deliver(data: bytes, sender: str, to: str) -> None:
                    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port) as client:
                        await client.sendmail(sender, [to], data)  # "": MAIL FROM:<>

                post = mail("ann@example.org", ["news@example.com"], "hello").data
                await deliver(post, "ann@example.org", "news@example.com")
                paths = {r.recipients[0]: r.sender for r in sink.received}
                assert paths == {
                    m: verp_address("news-bounces@example.com", m) for m in handlers.MEMBERS
                }
                gone, full = paths["gone@example.net"], paths["full@example.net"]
                await deliver(bounce_for("gone@example.net", "550 5.1.1 No user", gone), "", gone)
                await deliver(bounce_for("full@example.net", "452 4.2.2 Full", full), "", full)
                vacation = (BOUNCES / "vacation.eml").read_bytes()
                await deliver(vacation, "", paths["ann@example.org"])
    assert handlers.hard == [("gone@example.net", "5.1.1")]
    assert handlers.soft == [("full@example.net", "4.2.2")]
    assert handlers.other == [
        ("ann@example.org", "Out of Office: [news] Meeting moved to Thursday")
    ]


@pytest.mark.parametrize(
    ("reply", "state"), [("550 5.1.1 No such user", "DEAD"), ("451 4.4.1 No answer", "START")]
)
async def test_the_bounce_handlers_return_the_next_state(
    make_module: Callable[..., str], reply: str, state: str
) -> None:
    name = make_module(STATES)
    router = Router(defaults={"host": r"example\.com"})
    router.load([name])
    daemon = "mailer-daemon@mx.example.net"
    data = bounce_for("joe@example.net", reply, "list@example.com")
    message = MailRequest(None, daemon, ["list@example.com"], data)
    await router.deliver(message)
    assert router.get_state(name, message) == state
    plain = MailRequest(None, daemon, ["list@example.com"], b"Subject: hi\r\n\r\nhello\r\n")
    await router.deliver(plain)
    assert router.get_state(name, plain) == ("TALKING" if state == "START" else "DEAD")


async def test_async_handlers_have_async_bounce_handlers(make_module: Callable[..., str]) -> None:
    name = make_module(ASYNC)
    router = Router(defaults={"host": r"example\.com"})
    router.load([name])
    bounce = bounce_for("joe@example.net", "550 5.1.1 No such user", "list@example.com")
    for data in (bounce, b"Subject: hi\r\n\r\nhello\r\n"):
        await router.deliver(MailRequest(None, "", ["list@example.com"], data))
    assert importlib.import_module(name).seen == ["hard", "mail"]


def test_bounce_handlers_must_be_callables_of_the_handlers_kind() -> None:
    def plain(message: MailRequest) -> None: ...

    async def coroutine(message: MailRequest) -> None: ...

    with pytest.raises(TypeError, match="soft must be a callable"):
        bounce_to(None, plain)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hard must be a callable"):
        bounce_to(plain, "HARD")  # type: ignore[arg-type]
    with pytest.raises(RouteError, match="must be plain functions, like the handler"):
        bounce_to(plain, coroutine)(plain)
    with pytest.raises(RouteError, match="must be async def functions, like the handler"):
        bounce_to(plain, plain)(coroutine)


def test_a_parsed_bounce_names_the_member_its_return_path_encodes() -> None:
    to = verp_address("news-bounces@example.com", "gone@example.net")
    data = bounce_for("gone@example.net", "550 5.1.1 No such user", to)
    parsed = message_from_bytes(data, policy=policy.default)
    assert parsed["To"] == to
    request = MailRequest(None, "", [to], data)
    assert request.bounce is not None and request.bounce.addresses == ("gone@example.net",)
