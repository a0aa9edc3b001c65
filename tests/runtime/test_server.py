"""The receiver end to end: a real server on 127.0.0.1 port 0, real SMTP and LMTP clients."""

from __future__ import annotations

import asyncio
import smtplib
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import OUTCOMES, lmtp_send, running, small_disk

from mailrouter.queue import Queue

APP = (
    """
from mailrouter import route

seen = []


@route("(list)-subscribe@(host)", list="[a-z]+")
def START(message, list=None, host=None):
    seen.append(("START", message.recipient, list))
    return MEMBER


@route("(list)@(host)", list="[a-z]+")
def MEMBER(message, list=None, host=None):
    seen.append(("MEMBER", message.recipient, list))
"""
    + OUTCOMES
)

MESSAGE = b"From: a@x.org\r\nSubject: test\r\nMessage-ID: <1@x.org>\r\n\r\nHello.\r\n"


def smtp_send(port: int, sender: str, rcpts: list[str], data: bytes = MESSAGE) -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(sender, rcpts, data)


def seen(app: str) -> list[tuple[str, str, str]]:
    return sys.modules[app].seen  # type: ignore[no-any-return]


async def test_every_recipient_of_a_message_is_routed(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app) as server:
        rcpts = ["news-subscribe@example.com", "chat@example.com"]
        refused = await asyncio.to_thread(smtp_send, server.port, "joe@x.org", rcpts)
        assert refused == {}
    assert seen(app) == [
        ("START", "news-subscribe@example.com", "news"),
        ("MEMBER", "chat@example.com", "chat"),
    ]


async def test_the_state_machine_is_walked_over_several_messages(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app) as server:
        await asyncio.to_thread(smtp_send, server.port, "joe@x.org", ["news-subscribe@example.com"])
        await asyncio.to_thread(smtp_send, server.port, "Joe@X.org", ["news@example.com"])
        await asyncio.to_thread(smtp_send, server.port, "ann@x.org", ["news@example.com"])
        queue = server.router.undeliverable
        assert queue is not None and len(queue) == 1  # ann is not subscribed: no handler in state
    assert [s[0] for s in seen(app)] == ["START", "MEMBER"]


async def test_unroutable_recipient_is_queued(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app) as server:
        await asyncio.to_thread(smtp_send, server.port, "joe@x.org", ["nobody@elsewhere.org"])
    queue = Queue(tmp_path / "run" / "undeliverable")
    (key,) = queue.keys()
    entry = queue.read(key)
    assert entry.message.recipients == ["nobody@elsewhere.org"]
    assert entry.message.sender == "joe@x.org"
    assert entry.message.data == MESSAGE
    assert entry.reasons == {"nobody@elsewhere.org": "no route"}


async def test_reject_unroutable_refuses_at_rcpt_time(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, reject_unroutable=True) as server:

        def talk() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                client.ehlo()
                client.mail("joe@x.org")
                return client.rcpt("nobody@elsewhere.org"), client.rcpt("news@example.com")

        bad, good = await asyncio.to_thread(talk)
    assert bad[0] == 550 and bad[1].startswith(b"5.1.1")
    assert good[0] == 250


async def test_handler_smtp_error_is_the_reply(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app) as server:
        with pytest.raises(smtplib.SMTPDataError) as info:
            await asyncio.to_thread(smtp_send, server.port, "joe@x.org", ["refuse@example.com"])
    assert (info.value.smtp_code, info.value.smtp_error) == (550, b"5.7.1 Not here")


async def test_lmtp_gives_one_reply_per_recipient(tmp_path: Path, app: str) -> None:
    rcpts = [
        "news-subscribe@example.com",
        "refuse@example.com",
        "later@example.com",
        "nobody@elsewhere.org",
    ]
    async with running(tmp_path, app, protocol="lmtp") as server:
        replies = await asyncio.to_thread(lmtp_send, server.port, "joe@x.org", rcpts, MESSAGE)
    assert [(code, text[:5]) for code, text in replies] == [
        (250, b"2.0.0"),
        (550, b"5.7.1"),
        (450, b"4.2.1"),
        (250, b"2.0.0"),
    ]
    assert seen(app)[0] == ("START", "news-subscribe@example.com", "news")


async def test_lmtp_over_a_unix_socket(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, protocol="lmtp", unix_socket="run/lmtp.sock") as server:
        sock = str(tmp_path / "run" / "lmtp.sock")
        assert server.address == f"unix:{sock}"
        replies = await asyncio.to_thread(
            lmtp_send, sock, "joe@x.org", ["news-subscribe@example.com"], MESSAGE
        )
        assert [code for code, _ in replies] == [250]
    assert seen(app)[0][0] == "START"


async def test_handler_exception_is_queued_and_acknowledged(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app) as server:
        await asyncio.to_thread(smtp_send, server.port, "joe@x.org", ["boom@example.com"])
    queue = Queue(tmp_path / "run" / "undeliverable")
    (key,) = queue.keys()
    assert "RuntimeError: handler bug" in queue.read(key).reasons["boom@example.com"]


async def test_internal_failure_is_temporary_and_the_server_keeps_serving(
    tmp_path: Path, app: str
) -> None:
    async with running(tmp_path, app) as server:
        server.router.store.close()  # every state lookup now fails
        with pytest.raises(smtplib.SMTPDataError) as info:
            await asyncio.to_thread(smtp_send, server.port, "joe@x.org", ["news@example.com"])
        assert info.value.smtp_code == 451 and info.value.smtp_error.startswith(b"4.3.0")
        # a message that needs no state is still served on a new connection
        assert (
            await asyncio.to_thread(smtp_send, server.port, "joe@x.org", ["nobody@elsewhere.org"])
            == {}
        )


async def test_limits_size_and_recipients(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, max_message_size=1000, max_recipients=2) as server:

        def talk() -> dict[str, Any]:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                _, features = client.ehlo()
                out: dict[str, Any] = {"ehlo": features.decode()}
                client.mail("joe@x.org")
                out["rcpts"] = [client.rcpt(f"r{i}@example.com")[0] for i in range(3)]
                client.rset()
                out["declared"] = client.mail("joe@x.org", ["SIZE=5000"])
                client.rset()
                client.mail("joe@x.org")
                client.rcpt("news@example.com")
                out["data"] = client.data(MESSAGE + (b"x" * 70 + b"\r\n") * 30)
                return out

        out = await asyncio.to_thread(talk)
    assert "SIZE 1000" in out["ehlo"] and "8BITMIME" in out["ehlo"] and "SMTPUTF8" in out["ehlo"]
    assert out["rcpts"] == [250, 250, 452]
    assert out["declared"][0] == 552 and out["declared"][1].startswith(b"5.3.4")
    assert out["data"][0] == 552 and out["data"][1].startswith(b"5.3.4")


async def test_null_sender_and_8bit_utf8_mail(tmp_path: Path, app: str) -> None:
    data = "Subject: café\r\nFrom: <>\r\n\r\nnaïve ünïcode\r\n".encode()
    async with running(tmp_path, app) as server:

        def talk() -> Any:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                client.ehlo()
                return client.sendmail(
                    "<>", ["jöe@exämple.org"], data, ["SMTPUTF8", "BODY=8BITMIME"]
                )

        assert await asyncio.to_thread(talk) == {}
    entry = Queue(tmp_path / "run" / "undeliverable").read(
        Queue(tmp_path / "run" / "undeliverable").keys()[0]
    )
    assert entry.message.sender == ""
    assert entry.message.recipients == ["jöe@exämple.org"]
    assert entry.message.data == data


async def test_errors_carry_enhanced_status_codes(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app) as server:

        def talk() -> list[tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                client.ehlo()
                return [client.docmd("RCPT TO:<a@b>"), client.docmd("BOGUS"), client.docmd("DATA")]

        replies = await asyncio.to_thread(talk)
    assert [code for code, _ in replies] == [503, 500, 503]
    assert all(text[:1] == b"5" and text[1:2] == b"." for _, text in replies)


async def test_port_zero_binds_loopback(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app) as server:
        assert server.port > 0
        assert server.address == f"127.0.0.1:{server.port}"


async def test_unwritable_queue_is_a_temporary_failure_and_nothing_is_half_written(
    tmp_path: Path, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    async with running(tmp_path, app) as server:
        queue_dir = tmp_path / "run" / "undeliverable"
        shutil.rmtree(queue_dir / "tmp")
        (queue_dir / "tmp").write_text("not a directory")
        with pytest.raises(smtplib.SMTPDataError) as info:
            await asyncio.to_thread(smtp_send, server.port, "joe@x.org", ["nobody@elsewhere.org"])
        assert info.value.smtp_code == 451 and info.value.smtp_error.startswith(b"4.3.0")
        with pytest.raises(smtplib.SMTPDataError):
            await asyncio.to_thread(smtp_send, server.port, "ann@x.org", ["nobody@elsewhere.org"])
        assert list((queue_dir / "new").iterdir()) == []
        errors = [r for r in caplog.records if r.levelname == "ERROR" and "cannot queue" in r.msg]
        assert len(errors) == 1  # once per burst
        (queue_dir / "tmp").unlink()
        (queue_dir / "tmp").mkdir()  # repaired: the server serves again, without a restart
        assert (
            await asyncio.to_thread(smtp_send, server.port, "joe@x.org", ["nobody@elsewhere.org"])
            == {}
        )
        assert len(list((queue_dir / "new").iterdir())) == 1


async def test_full_disk_is_452_and_nothing_is_half_written(tmp_path: Path, app: str) -> None:
    with small_disk(tmp_path / "run" / "undeliverable") as queue_dir:
        async with running(tmp_path, app) as server:
            big = MESSAGE + (b"x" * 76 + b"\r\n") * 2000  # ~156 KB, more than the 64 KB disk
            with pytest.raises(smtplib.SMTPDataError) as info:
                await asyncio.to_thread(smtp_send, server.port, "joe@x.org", ["nobody@x.org"], big)
            assert info.value.smtp_code == 452 and info.value.smtp_error.startswith(b"4.3.1")
            assert list((queue_dir / "new").iterdir()) == []
            assert list((queue_dir / "tmp").iterdir()) == []
            # a small message still fits: the server kept serving
            assert await asyncio.to_thread(smtp_send, server.port, "joe@x.org", ["no@x.org"]) == {}


async def test_lmtp_data_errors_get_one_reply_per_recipient(tmp_path: Path, app: str) -> None:
    big = MESSAGE + (b"x" * 76 + b"\r\n") * 30
    async with running(tmp_path, app, protocol="lmtp", max_message_size=1000) as server:
        replies = await asyncio.to_thread(
            lmtp_send, server.port, "joe@x.org", ["a@example.com", "b@example.com"], big
        )
        assert [(code, text[:5]) for code, text in replies] == [(552, b"5.3.4")] * 2
        # the session is still in step: the next message on a new connection is served
        ok = await asyncio.to_thread(
            lmtp_send, server.port, "joe@x.org", ["c@example.com"], MESSAGE
        )
        assert [code for code, _ in ok] == [250]


async def test_lmtp_errors_before_data_starts_are_single_replies(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, protocol="lmtp") as server:

        def talk() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
            with smtplib.LMTP("127.0.0.1", server.port, timeout=10) as client:
                client.ehlo()
                client.mail("joe@x.org")
                client.rcpt("a@example.com")
                client.rcpt("b@example.com")
                return client.docmd("DATA", "junk"), client.noop()

        syntax, noop = await asyncio.to_thread(talk)
    assert syntax[0] == 501 and noop[0] == 250  # one 501, then the session is in step
