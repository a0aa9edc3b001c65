"""Session limits and graceful shutdown, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

from test_server import running

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


class Client:
    """A line-level SMTP client on a real socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def reply(self) -> str:
        """One whole reply (the last line of a multi-line one)."""
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 30)).decode()
            if line[3:4] != "-":
                return line.rstrip("\r\n")

    async def command(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 30) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def test_connections_beyond_the_limit_get_421(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    async with running(tmp_path, make_module(APP), max_connections=2) as server:
        first, second = await Client.connect(server.port), await Client.connect(server.port)
        assert (await first.reply()).startswith("220")
        assert (await second.reply()).startswith("220")
        third = await Client.connect(server.port)
        assert (await third.reply()).startswith("421 4.7.0")
        assert await third.closed()
        await first.command("QUIT")
        await first.close()
        for _ in range(100):  # the freed slot is served again (poll until the server saw QUIT)
            fourth = await Client.connect(server.port)
            greeting = await fourth.reply()
            await fourth.close()
            if greeting.startswith("220"):
                break
            await asyncio.sleep(0.05)
        assert greeting.startswith("220")
        await second.close()
        await third.close()


async def test_too_many_errors_closes_the_session(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    async with running(tmp_path, make_module(APP), max_errors=3) as server:
        client = await Client.connect(server.port)
        await client.reply()
        assert (await client.command("BOGUS")).startswith("500 5.5.2")
        assert (await client.command("BOGUS")).startswith("500")
        assert (await client.command("BOGUS")).startswith("500")
        assert (await client.reply()).startswith("421 4.7.0")
        assert await client.closed()
        await client.close()


async def test_idle_client_is_dropped_with_421(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    async with running(tmp_path, make_module(APP), idle_timeout=0.3) as server:
        client = await Client.connect(server.port)
        await client.reply()
        assert (await client.reply()).startswith("421 4.4.2")
        assert await client.closed()
        await client.close()


async def test_slowloris_is_dropped_by_the_session_limit(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    async with running(tmp_path, make_module(APP), session_timeout=1.0) as server:
        client = await Client.connect(server.port)
        await client.reply()
        await client.command("EHLO slow.example")
        await client.command("MAIL FROM:<a@x.org>")
        await client.command("RCPT TO:<fast@example.com>")
        assert (await client.command("DATA")).startswith("354")
        farewell = asyncio.ensure_future(client.reply())
        for _ in range(300):  # trickle bytes, each well within the idle timeout
            if farewell.done():
                break
            client.writer.write(b"x")
            await client.writer.drain()
            await asyncio.sleep(0.05)
        assert (await farewell).startswith("421 4.4.2")
        await client.close()


async def test_shutdown_finishes_the_delivery_in_flight_and_turns_others_away(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    app = make_module(APP)
    async with running(tmp_path, app) as server:
        idle = await Client.connect(server.port)
        await idle.reply()
        await idle.command("EHLO idle.example")
        busy = await Client.connect(server.port)
        await busy.reply()
        for line in ("EHLO busy.example", "MAIL FROM:<a@x.org>", "RCPT TO:<slow@example.com>"):
            assert (await busy.command(line)).startswith("250")
        assert (await busy.command("DATA")).startswith("354")
        busy.writer.write(b"Subject: in flight\r\n\r\nhello\r\n.\r\n")
        await busy.writer.drain()
        while not server.handler.in_flight:  # the handler has the message
            await asyncio.sleep(0.01)

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


async def test_starttls_with_a_configured_certificate(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    import smtplib
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    app = make_module(APP)

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
