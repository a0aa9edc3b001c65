"""FastSMTP's DATA reader and path parser give exactly what aiosmtpd's own give, on any input.

aiosmtpd's own is held to RFC 5321's data line limit for the comparison: it allows 1,001 octets.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosmtpd.smtp
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from helpers import running
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mailrouter.inbound.wire import (
    DATA_LINE_LIMIT,
    LINE_TOO_LONG,
    TOO_MUCH_DATA,
    FastSMTP,
    read_data,
    simple_path,
)


class StockSMTP(SMTP):
    """aiosmtpd's session with a data line limit of 1,000 octets, CRLF included."""

    line_length_limit = DATA_LINE_LIMIT


class FastUnderTest(FastSMTP):
    """FastSMTP with the same line limit for its command reader as ``StockSMTP``: only the DATA
    readers differ (junk after an early end of data is read as commands by both)."""

    line_length_limit = DATA_LINE_LIMIT


class Recorder:
    """Keeps the content of every message a server accepts."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(envelope.original_content)
        return "250 OK"


@asynccontextmanager
async def smtp_server(
    session_class: type[SMTP], size_limit: int | None
) -> AsyncIterator[tuple[int, Recorder]]:
    recorder = Recorder()

    def factory() -> SMTP:
        return session_class(
            recorder, data_size_limit=size_limit, hostname="h", ident="i", decode_data=False
        )

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], recorder
    finally:
        server.close()
        await server.wait_closed()


async def transcript(port: int, chunks: list[bytes]) -> bytes:
    """Everything the server says to a client that sends ``chunks`` after a DATA command."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"EHLO client\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n")
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0)  # a turn of the loop between chunks: the splits are the test
    writer.write(b"\r\n.\r\nQUIT\r\n")
    received = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return received


async def both(chunks: list[bytes], size_limit: int | None) -> list[tuple[bytes, list[bytes]]]:
    """What aiosmtpd's SMTP and FastSMTP answer and keep for the same input."""
    results = []
    for session_class in (StockSMTP, FastUnderTest):
        async with smtp_server(session_class, size_limit) as (port, recorder):
            results.append((await transcript(port, chunks), recorder.messages))
    return results


_PIECES = [
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"..",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"Subject: x",
    b"x" * 997,
    b"x" * 998,
    b"x" * 999,
    b"y" * 1000,
    b"y" * 1001,
    b"z" * 1500,
    b"\x00\xff",
]


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pieces=st.lists(st.sampled_from(_PIECES), max_size=12),
    splits=st.lists(st.integers(min_value=1, max_value=3000), max_size=4),
    size_limit=st.sampled_from([None, 0, 8, 100, 1004, 3000]),
)
def test_the_data_reader_answers_exactly_like_aiosmtpd(
    pieces: list[bytes], splits: list[int], size_limit: int | None
) -> None:
    stream = b"".join(pieces)
    chunks, rest = [], stream
    for split in splits:
        chunks.append(rest[:split])
        rest = rest[split:]
    chunks.append(rest)
    with pytest.MonkeyPatch.context() as patch:
        # junk after an early end of data is read as commands: let neither server hang up on it
        patch.setattr(aiosmtpd.smtp, "BOGUS_LIMIT", 10**6)
        stock, fast = asyncio.run(both(chunks, size_limit))
    assert fast == stock


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (b"first\n.\r\nsecond", b"first\n.\r\nsecond\r\n"),  # <LF>.<CR><LF>
        (b"first\r\n.\nsecond", b"first\r\n\nsecond\r\n"),  # <CR><LF>.<LF>: a dot-stuffed line
        (b"first\r.\r\nsecond", b"first\r.\r\nsecond\r\n"),  # <CR>.<CR><LF>
        (b"first\n.\nsecond", b"first\n.\nsecond\r\n"),  # <LF>.<LF>
    ],
)
async def test_only_crlf_dot_crlf_ends_the_data(sent: bytes, kept: bytes) -> None:
    async with smtp_server(FastSMTP, None) as (port, recorder):
        said = await transcript(port, [b"Subject: s\r\n\r\n" + sent])
    assert recorder.messages == [b"Subject: s\r\n\r\n" + kept]
    assert said.partition(b"354 ")[2].count(b"250 OK") == 1


async def test_dots_are_unstuffed_at_line_starts_only() -> None:
    async with smtp_server(FastSMTP, None) as (port, recorder):
        await transcript(port, [b"..one\r\n.two\r\nthree.\r\n...\r\nfour\n..five"])
    assert recorder.messages == [b".one\r\ntwo\r\nthree.\r\n..\r\nfour\n..five\r\n"]


@pytest.mark.parametrize(
    ("size_limit", "data", "reply"),
    [
        (None, b"x" * 999 + b"\r\n", LINE_TOO_LONG),  # 1,001 octets
        (None, b"x" * 1000 + b"\r\n", LINE_TOO_LONG),
        (100, b"x" * 200 + b"\r\n", TOO_MUCH_DATA),
        (100, b"x" * 2000 + b"\r\n", LINE_TOO_LONG),  # aiosmtpd's reader overruns first
    ],
)
async def test_limits_get_aiosmtpds_replies(
    size_limit: int | None, data: bytes, reply: str
) -> None:
    async with smtp_server(FastSMTP, size_limit) as (port, recorder):
        said = await transcript(port, [data.removesuffix(b"\r\n")])
    assert reply.encode() in said
    assert recorder.messages == []


async def _peak_memory_reading(stream: Callable[[int], bytes], size_limit: int | None) -> int:
    """Peak bytes allocated while ``read_data`` reads 24 MiB of ``stream`` then the end."""
    reader = asyncio.StreamReader(limit=SMTP.line_length_limit)

    async def feed() -> None:
        for i in range(384):
            while len(reader._buffer) > 256 * 1024:  # the socket's back-pressure
                await asyncio.sleep(0)
            reader.feed_data(stream(i))
            await asyncio.sleep(0)
        reader.feed_data(b"\r\n.\r\n")

    tracemalloc.start()
    try:
        feeding = asyncio.create_task(feed())
        result: Any = await read_data(reader, size_limit)
        await feeding
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result in (LINE_TOO_LONG, TOO_MUCH_DATA)
    return peak


async def test_an_endless_line_is_not_kept_in_memory() -> None:
    peak = await _peak_memory_reading(lambda i: b"x" * 65536, None)
    assert peak < 8 * 1024 * 1024  # of 24 MiB sent


async def test_data_over_the_size_limit_is_not_kept_in_memory() -> None:
    peak = await _peak_memory_reading(lambda i: (b"y" * 62 + b"\r\n") * 1024, 1024 * 1024)
    assert peak < 8 * 1024 * 1024  # of 24 MiB sent


_PATH_CHARS = st.sampled_from(
    [*"ab.@<> \t()\"\\[]:,;!#$%&'*+/=?^_`{|}~-", "é", "Z", "9", "SIZE=1", "\n", "=?"]
)


@settings(max_examples=2000)
@given(arg=st.lists(_PATH_CHARS, max_size=16).map("".join))
def test_simple_paths_parse_as_aiosmtpd_parses_them(arg: str) -> None:
    # aiosmtpd's parser RFC 2047-decodes encoded words; simple_path keeps them verbatim
    assume("=?" not in arg)
    fast = simple_path(arg)
    if fast is not None:
        assert fast == SMTP._getaddr(SMTP.__new__(SMTP), arg)


@pytest.mark.parametrize(
    ("arg", "parsed"),
    [
        ("<a@b.org>", ("a@b.org", "")),
        (
            "<first.last+tag@sub.example.com> SIZE=100",
            ("first.last+tag@sub.example.com", "SIZE=100"),
        ),
        ('<"quoted"@b.org>', None),
        ("<a@[127.0.0.1]>", None),
        ("<>", None),
        ("<a@b.org>\n", None),
        ("<jöe@b.org>", None),
    ],
)
def test_simple_path_takes_only_the_plain_form(arg: str, parsed: tuple[str, str] | None) -> None:
    assert simple_path(arg) == parsed


@pytest.mark.parametrize("protocol", ["smtp", "lmtp"])
async def test_hook_listing_gives_aiosmtpd_the_tables_a_full_listing_gives(
    tmp_path: Path, protocol: str
) -> None:
    """A session's commands, AUTH mechanisms and handler hooks are found as without the
    shortened ``dir()``."""
    async with running(tmp_path, protocol=protocol) as server:
        session = server._session()

    def everything(obj: object, prefix: str) -> set[str]:
        names = object.__dir__(obj)
        return {name.removeprefix(prefix) for name in names if name.startswith(prefix)}

    assert set(session._smtp_methods) == everything(session, "smtp_")
    assert set(session._handle_hooks) == everything(session.event_handler, "handle_")
    assert set(session._auth_methods) == everything(session, "auth_") >= {"PLAIN", "LOGIN"}
    assert {"DATA", "MAIL", "RCPT"} <= set(session._handle_hooks)
