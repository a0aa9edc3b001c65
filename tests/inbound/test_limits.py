"""Session limits and graceful shutdown, over real sockets."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from helpers import Client, running, until

APP = """
import threading
from mailrouter import route, stateless
release = threading.Event()
handled = []

@route("slow@(host)")
@stateless
def SLOW(message, host=None):
    release.wait(30)
    handled.append(message.recipient)

@route("fast@(host)")
@stateless
def FAST(message, host=None):
    handled.append(message.recipient)
"""


async def test_connections_beyond_the_limit_get_421(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, max_connections=2) as server:
        first, second = await Client.connect(server.port), await Client.connect(server.port)
        assert (await first.reply()).startswith("220")
        assert (await second.reply()).startswith("220")
        third = await Client.connect(server.port)
        assert (await third.reply()).startswith("421 4.7.0")
        assert await third.closed()
        await first.command("QUIT")
        await first.close()
        await until(lambda: len(server.sessions) < 2)  # the server saw the first client go
        fourth = await Client.connect(server.port)
        assert (await fourth.reply()).startswith("220")  # the freed slot is served again
        await fourth.close()
        await second.close()
        await third.close()


async def test_too_many_errors_closes_the_session(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, max_errors=3) as server:
        client = await Client.greeted(server.port)
        assert (await client.command("BOGUS")).startswith("500 5.5.2")
        assert (await client.command("BOGUS")).startswith("500")
        assert (await client.command("BOGUS")).startswith("500")
        assert (await client.reply()).startswith("421 4.7.0")
        assert await client.closed()
        await client.close()


async def test_idle_client_is_dropped_with_421(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, idle_timeout=0.3) as server:
        client = await Client.greeted(server.port)
        assert (await client.reply()).startswith("421 4.4.2")
        assert await client.closed()
        await client.close()


async def test_the_idle_timeout_counts_from_the_last_command(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, idle_timeout=1.0) as server:
        client = await Client.greeted(server.port)
        for _ in range(25):  # 2.5 s of commands, each well within the timeout
            assert (await client.command("NOOP")).startswith("250")
            await asyncio.sleep(0.1)
        assert (await client.reply()).startswith("421 4.4.2")  # then quiet: dropped
        assert await client.closed()
        await client.close()


async def test_slowloris_is_dropped_by_the_session_limit(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app, session_timeout=1.0) as server:
        client = await Client.greeted(server.port, "EHLO slow.example")
        await client.command("MAIL FROM:<a@x.org>")
        await client.command("RCPT TO:<fast@example.com>")
        assert (await client.command("DATA")).startswith("354")
        farewell = asyncio.ensure_future(client.reply())
        for _ in range(300):  # trickle bytes, each well within the idle timeout
            if farewell.done():
                break
            await client.send(b"x")
            await asyncio.sleep(0.05)  # the trickle is the test: not a wait for something
        assert (await farewell).startswith("421 4.4.2")
        await client.close()


async def test_shutdown_finishes_the_delivery_in_flight_and_turns_others_away(
    tmp_path: Path, app: str
) -> None:
    async with running(tmp_path, app) as server:
        idle = await Client.greeted(server.port, "EHLO idle.example")
        busy = await Client.greeted(server.port)
        for line in ("EHLO busy.example", "MAIL FROM:<a@x.org>", "RCPT TO:<slow@example.com>"):
            assert (await busy.command(line)).startswith("250")
        assert (await busy.command("DATA")).startswith("354")
        await busy.send(b"Subject: in flight\r\n\r\nhello\r\n.\r\n")
        await until(lambda: server.handler.in_flight)  # the handler has the message

        stopping = asyncio.ensure_future(server.stop(timeout=30))
        assert (await idle.reply()).startswith("421 4.3.2")  # idle session told at once
        try:
            await Client.connect(server.port)
            raise AssertionError("a new connection was accepted while stopping")
        except OSError:
            pass
        sys.modules[app].release.set()
        assert (await busy.reply()).startswith("250 2.0.0")  # the message in flight is answered
        assert (await busy.reply()).startswith("421 4.3.2")
        await stopping
        assert sys.modules[app].handled == ["slow@example.com"]
        await idle.close()
        await busy.close()


async def test_starttls_with_a_configured_certificate(tmp_path: Path, app: str) -> None:
    import smtplib
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async with running(
        tmp_path, app, tls_cert=str(tmp_path / "server.pem"), require_starttls=True
    ) as server:

        def talk() -> tuple[tuple[int, bytes], str, dict[str, tuple[int, bytes]]]:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                client.ehlo()
                before = client.docmd("MAIL FROM:<a@x.org>")
                client.starttls(context=client_context)
                cipher = client.sock.version()  # type: ignore[union-attr]
                refused = client.sendmail(
                    "a@x.org", ["fast@example.com"], b"Subject: tls\r\n\r\nx\r\n"
                )
                return before, cipher, refused

        before, version, refused = await asyncio.to_thread(talk)
    assert before[0] == 530 and before[1].startswith(b"5.7.0")
    assert version.startswith("TLS")
    assert refused == {}
    assert sys.modules[app].handled == ["fast@example.com"]
