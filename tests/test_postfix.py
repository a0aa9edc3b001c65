"""mailrouter behind a real Postfix: SMTP and LMTP next hop (LMTP also over a Unix socket),
deferral and retry, bounces.

Each test runs its own throw-away Postfix (``tests/postfix.py``) that relays ``router.test`` over
SMTP and ``lmtp.test`` over LMTP to a mailrouter ``Server`` running on the test's event loop, and
reads the outcome of each delivery from Postfix's own log. Skipped without Postfix or root,
except under ``CI=true`` where that is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal

import pytest
from helpers import Sink, running, sink_server
from postfix import (
    LMTP_DOMAIN,
    SMTP_DOMAIN,
    PostfixInstance,
    free_port,
    require_postfix,
)

from mailrouter.outbound import sender
from mailrouter.outbound.transport import ConnectionOptions
from mailrouter.runtime.server import Server

APP = """
from mailrouter import route, stateless, SMTPError

delivered = []

@route("bounce@(host)")
@stateless
def BOUNCE(message, host=None):
    raise SMTPError(550, "5.1.1 No such user here")

@route("(user)@(host)", user="[a-z0-9.+-]+")
def START(message, user=None, host=None):
    delivered.append((message.recipient, message["Subject"]))
"""

SENDER = "alice@example.org"
StartPostfix = Callable[..., Awaitable[PostfixInstance]]


def message(subject: str) -> bytes:
    """A small message with a Subject that tells this test's mail apart."""
    return (
        f"From: {SENDER}\r\nTo: someone@{SMTP_DOMAIN}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\n\r\nHello.\r\n"
    ).encode()


def delivered(app: str) -> list[tuple[str, str]]:
    """What the handler module recorded: (recipient, Subject) per delivered recipient."""
    return sys.modules[app].delivered  # type: ignore[no-any-return]


@pytest.fixture
def start_postfix(tmp_path: Path) -> Iterator[StartPostfix]:
    """Start a Postfix (in a worker thread) whose next hops are the given ports; always stopped.

    The instance lives in a private temporary folder, not under ``tmp_path``: every new pytest
    session resets ``/tmp/pytest-of-<user>`` to 0700, and if another session starts while this
    Postfix starts, its master (running as the ``postfix`` user there) cannot reach its data
    folder. Its log is copied to ``tmp_path`` afterwards, for post-mortems.
    """
    require_postfix()
    instances: list[PostfixInstance] = []
    with tempfile.TemporaryDirectory(prefix="mailrouter-postfix-") as folder:

        async def start(
            next_hop_port: int, *, lmtp_port: int | None = None, lmtp_socket: Path | None = None
        ) -> PostfixInstance:
            assert not instances, "one Postfix per test"
            instance = PostfixInstance(
                Path(folder), next_hop_port, lmtp_port=lmtp_port, lmtp_socket=lmtp_socket
            )
            instances.append(instance)
            await asyncio.to_thread(instance.start)
            return instance

        try:
            yield start
        finally:
            for instance in instances:
                instance.stop()
                if instance.log_path.exists():
                    shutil.copyfile(instance.log_path, tmp_path / "postfix.log")


@pytest.fixture
def socket_folder() -> Iterator[Path]:
    """A folder for a Unix socket that Postfix's lmtp client, running as ``postfix``, can search
    (not under ``tmp_path``, whose parents are 0700)."""
    with tempfile.TemporaryDirectory(prefix="mailrouter-socket-") as folder:
        Path(folder).chmod(0o711)
        yield Path(folder)


def mailrouter(
    tmp_path: Path,
    app: str,
    *,
    port: int = 0,
    protocol: Literal["smtp", "lmtp"] = "smtp",
    **settings: Any,
) -> AbstractAsyncContextManager[Server]:
    """mailrouter's real server for ``app`` on 127.0.0.1 (or ``unix_socket``), serving both
    test domains; ``settings`` are further settings."""
    domains = {"host": r"router\.test|lmtp\.test"}
    return running(tmp_path, app, port=port, protocol=protocol, defaults=domains, **settings)


async def test_postfix_relays_over_smtp_to_the_handler(
    tmp_path: Path, app: str, start_postfix: StartPostfix
) -> None:
    async with mailrouter(tmp_path, app) as server:
        port = server.port
        postfix = await start_postfix(port)
        rcpt = f"bob@{SMTP_DOMAIN}"
        queue_id = await postfix.asend(SENDER, rcpt, message("over smtp"))
        line = await postfix.await_status(queue_id, rcpt, "sent")
    assert f"relay=127.0.0.1[127.0.0.1]:{port}" in line
    assert "250 2.0.0 Ok: queued as" in line
    assert delivered(app) == [(rcpt, "over smtp")]


async def test_postfix_relays_over_lmtp_with_one_reply_per_recipient(
    tmp_path: Path, app: str, start_postfix: StartPostfix
) -> None:
    async with mailrouter(tmp_path, app, protocol="lmtp") as server:
        port = server.port
        postfix = await start_postfix(free_port(), lmtp_port=port)
        both = [f"a@{LMTP_DOMAIN}", f"b@{LMTP_DOMAIN}"]
        first = await postfix.asend(SENDER, both, message("two recipients"))
        sent = [await postfix.await_status(first, rcpt, "sent") for rcpt in both]

        ok, bounce = f"ok@{LMTP_DOMAIN}", f"bounce@{LMTP_DOMAIN}"
        mark = postfix.log_mark()
        second = await postfix.asend(SENDER, [ok, bounce], message("one of two bounces"))
        ok_line = await postfix.await_status(second, ok, "sent", since=mark)
        bounce_line = await postfix.await_status(second, bounce, "bounced", since=mark)
        await postfix.await_log(rf"\b{second}: removed\b", since=mark)

    for rcpt, line in zip(both, sent, strict=True):
        assert f"relay=127.0.0.1[127.0.0.1]:{port}" in line
        assert f"250 2.0.0 <{rcpt}>" in line
    assert f"250 2.0.0 <{ok}>" in ok_line
    assert "550 5.1.1 No such user here" in bounce_line
    assert postfix.log_text().count(f"{second}: to=<{ok}>") == 1  # delivered once, not retried
    assert delivered(app) == [
        (both[0], "two recipients"),
        (both[1], "two recipients"),
        (ok, "one of two bounces"),
    ]


async def test_postfix_lmtp_reaches_a_unix_socket_in_its_group_and_not_otherwise(
    tmp_path: Path, app: str, start_postfix: StartPostfix, socket_folder: Path
) -> None:
    sock = socket_folder / "lmtp.sock"
    postfix = await start_postfix(free_port(), lmtp_socket=sock)
    rcpt = f"bob@{LMTP_DOMAIN}"
    # Mode 0660 in the server's own group (root's here): Postfix's lmtp client may not connect.
    async with mailrouter(tmp_path, app, protocol="lmtp", unix_socket=str(sock)):
        queue_id = await postfix.asend(SENDER, rcpt, message("over a unix socket"))
        deferred = await postfix.await_status(queue_id, rcpt, "deferred")
    assert "Permission denied" in deferred
    assert delivered(app) == []

    async with mailrouter(
        tmp_path, app, protocol="lmtp", unix_socket=str(sock), unix_socket_group="postfix"
    ):
        mark = postfix.log_mark()
        await postfix.aflush()
        line = await postfix.await_status(queue_id, rcpt, "sent", since=mark)
        await postfix.await_log(rf"\b{queue_id}: removed\b", since=mark)
    assert str(sock) in line
    assert f"250 2.0.0 <{rcpt}>" in line
    assert delivered(app) == [(rcpt, "over a unix socket")]


async def test_postfix_defers_while_mailrouter_is_down_then_delivers_once(
    tmp_path: Path, app: str, start_postfix: StartPostfix
) -> None:
    port = free_port()
    postfix = await start_postfix(port)
    rcpt = f"bob@{SMTP_DOMAIN}"
    queue_id = await postfix.asend(SENDER, rcpt, message("while down"))
    deferred = await postfix.await_status(queue_id, rcpt, "deferred")
    assert "Connection refused" in deferred
    assert not postfix.queue_empty()

    async with mailrouter(tmp_path, app, port=port):
        mark = postfix.log_mark()
        await postfix.aflush()
        await postfix.await_status(queue_id, rcpt, "sent", since=mark)
        await postfix.await_log(rf"\b{queue_id}: removed\b", since=mark)
        assert await asyncio.to_thread(postfix.queue_empty)
    assert delivered(app) == [(rcpt, "while down")]
    assert postfix.log_text().count(f"{queue_id}: to=<{rcpt}>") == 2  # deferred once, sent once


async def test_handler_smtp_error_bounces_the_recipient_over_smtp(
    tmp_path: Path, app: str, start_postfix: StartPostfix
) -> None:
    async with mailrouter(tmp_path, app) as server:
        postfix = await start_postfix(server.port)
        rcpt = f"bounce@{SMTP_DOMAIN}"
        queue_id = await postfix.asend(SENDER, rcpt, message("refused"))
        line = await postfix.await_status(queue_id, rcpt, "bounced")
    assert "said: 550 5.1.1 No such user here" in line
    assert delivered(app) == []


CONTRACT_APP = """
from pathlib import Path
from mailrouter import route, stateless, SMTPError

EFFECTS = Path({effects!r})


@route("bounce@(host)")
@stateless
def BOUNCE(message, host=None):
    raise SMTPError(550, "5.1.1 No such user here")


@route("later@(host)")
@stateless
def LATER(message, host=None):
    tried = EFFECTS.parent / "tried"
    if not tried.exists():
        tried.touch()
        raise SMTPError(451, "4.3.0 Try again later")
    with EFFECTS.open("a") as effects:
        effects.write(f"{{message.recipient}}\\n")


@route("(user)@(host)", user="(?!later|bounce)[a-z0-9.+-]+")
@stateless
def DELIVER(message, user=None, host=None):
    with EFFECTS.open("a") as effects:
        effects.write(f"{{message.recipient}}\\n")
"""


async def test_a_550_beside_deliveries_sends_them_and_reports_the_third_to_the_sender(
    tmp_path: Path, make_module: Callable[..., str], start_postfix: StartPostfix
) -> None:
    effects = tmp_path / "effects.txt"
    app = make_module(CONTRACT_APP.format(effects=str(effects)))
    sink = Sink()
    rcpts = [f"a@{SMTP_DOMAIN}", f"b@{SMTP_DOMAIN}", f"bounce@{SMTP_DOMAIN}"]
    async with sink_server(sink) as sink_port:
        with sender.using(sender.Relay(ConnectionOptions("127.0.0.1", sink_port))):
            async with mailrouter(tmp_path, app) as server:
                postfix = await start_postfix(server.port)
                queue_id = await postfix.asend(SENDER, rcpts, message("three recipients"))
                lines = [await postfix.await_status(queue_id, rcpt, "sent") for rcpt in rcpts]
                await postfix.await_log(rf"\b{queue_id}: removed\b")
    assert all("250 2.0.0 Ok: queued as" in line for line in lines)
    assert "status=bounced" not in postfix.log_text()  # Postfix bounced nobody
    assert effects.read_text().splitlines() == rcpts[:2]
    (report,) = sink.received
    assert (report.sender, report.recipients) == ("<>", [SENDER])
    text = report.data.decode()
    assert f"Final-Recipient: rfc822; bounce@{SMTP_DOMAIN}" in text
    assert "Diagnostic-Code: smtp; 550 5.1.1 No such user here" in text


async def test_a_451_is_retried_by_postfix_and_every_side_effect_happens_once(
    tmp_path: Path, make_module: Callable[..., str], start_postfix: StartPostfix
) -> None:
    effects = tmp_path / "effects.txt"
    app = make_module(CONTRACT_APP.format(effects=str(effects)))
    rcpts = [f"ok@{SMTP_DOMAIN}", f"later@{SMTP_DOMAIN}"]
    async with mailrouter(tmp_path, app) as server:
        postfix = await start_postfix(server.port)
        queue_id = await postfix.asend(SENDER, rcpts, message("one deferred"))
        deferred = await postfix.await_status(queue_id, rcpts[1], "deferred")
        await postfix.await_status(queue_id, rcpts[0], "deferred")  # one reply: both deferred
        mark = postfix.log_mark()
        for _ in range(5):  # a flush that lands while qmgr still holds the message is a no-op
            await postfix.aflush()
            with contextlib.suppress(AssertionError):
                await postfix.await_status(queue_id, rcpts[1], "sent", 5.0, since=mark)
                break
        for rcpt in rcpts:
            await postfix.await_status(queue_id, rcpt, "sent", since=mark)
        await postfix.await_log(rf"\b{queue_id}: removed\b", since=mark)
    assert "451 4.3.0 Try again later" in deferred
    assert sorted(effects.read_text().splitlines()) == sorted(rcpts)  # each exactly once
