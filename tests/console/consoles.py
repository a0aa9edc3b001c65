"""Helpers of the console's tests: a real server with its console on 127.0.0.1 port 0, and a
logged-in HTTP client that sends what a browser sends (the Origin, the session's CSRF token)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import smtplib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from helpers import running

from mailrouter.outbound import sender as outgoing
from mailrouter.runtime.commands import Operations, server_commands
from mailrouter.runtime.control import Command
from mailrouter.runtime.server import Server
from mailrouter.runtime.web import load_console

TOKEN = "a-long-random-console-token-for-the-tests"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')

#: Handlers the console's tests route to: ``ok@`` and ``hello@`` deliver (a stateless handler
#: that records each message); ``order@`` is a state machine whose START raises while the file
#: ``broken`` beside the module exists (the sender goes into ERROR, the message is queued).
APP = """
from pathlib import Path

from mailrouter import route, stateless

BROKEN = Path(__file__).with_name("broken")
received = []


@route("(name)@(host)", name="ok|hello")
@stateless
def RECORD(message, name=None, host=None):
    received.append(message)


@route("order@(host)")
def START(message, host=None):
    if BROKEN.exists():
        raise RuntimeError("the order desk is down")
    return TAKEN


@route("order@(host)")
def TAKEN(message, host=None):
    return TAKEN
"""


@dataclass
class Live:
    """A running server with its console."""

    server: Server
    url: str

    def send(self, sender: str, recipients: list[str], data: bytes) -> None:
        """One message over SMTP to the server (blocking: call it in a thread)."""
        with smtplib.SMTP("127.0.0.1", self.server.port, timeout=30) as client:
            client.sendmail(sender, recipients, data)


@asynccontextmanager
async def console(tmp_path: Path, *handlers: str, **overrides: Any) -> AsyncIterator[Live]:
    """A server for ``handlers`` and its console, as ``mailrouter start`` runs them."""
    settings: dict[str, Any] = {"console_token": TOKEN, **overrides}
    async with running(tmp_path, *handlers, **settings) as server:
        relay = outgoing.from_settings(server.settings)
        with outgoing.using(relay):
            server.keep_copies()
            served = await load_console()(server.settings, commands_of(server, relay))
            try:
                yield Live(server, served.url.rstrip("/"))
            finally:
                await served.stop()


def commands_of(server: Server, relay: outgoing.Relay | None = None) -> dict[str, Command]:
    """The command table of ``server`` (and ``relay``), as ``mailrouter start`` builds it."""
    operations = Operations(server.settings, server.router, relay)
    return server_commands(server, operations, stop=lambda: None, reload=_no_reload)


async def _no_reload() -> int:
    raise AssertionError("the console's tests do not reload")


class Browser:
    """An HTTP client with a browser's manners: it sends its Origin and the page's CSRF token."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url
        self.csrf = ""

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        response = await self.client.get(path, **kw)
        if found := _CSRF.search(response.text):
            self.csrf = found.group(1)
        return response

    async def post(self, path: str, data: dict[str, Any], **kw: Any) -> httpx.Response:
        headers = {"origin": self.url, **kw.pop("headers", {})}
        return await self.client.post(path, data={"csrf": self.csrf, **data}, headers=headers, **kw)

    async def log_in(self, token: str = TOKEN) -> httpx.Response:
        await self.get("/login")
        response = await self.post("/login", {"token": token, "next": "/messages"})
        await self.get("/messages")  # the session's new CSRF token
        return response


@asynccontextmanager
async def browser(url: str, *, logged_in: bool = True) -> AsyncIterator[Browser]:
    """A ``Browser`` on the console at ``url``, logged in unless told not to."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        visitor = Browser(client, url)
        if logged_in:
            response = await visitor.log_in()
            assert response.status_code == 303, response.text
        yield visitor


async def sent(live: Live, sender: str, recipients: list[str], data: bytes) -> None:
    """Send one message over SMTP, off the loop the server runs on."""
    await asyncio.to_thread(live.send, sender, recipients, data)


def message(subject: str = "hello", *, sender: str = "joe@example.org", to: str = "") -> bytes:
    """A multipart message: a text part, an HTML part with a script, a PDF attachment."""
    return (
        f"From: {sender}\r\nTo: {to or 'ok@example.com'}\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        "--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe text part.\r\n"
        "--XX\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<p id=x>The <b>HTML</b> part.</p><script>document.title='pwned'</script>\r\n"
        "--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment;"
        ' filename="report.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n'
        "--XX--\r\n"
    ).encode()


def forget_copy(path: Path, ident: str) -> None:
    """Drop the kept copy of message ``ident``, as if the console had been off when it came."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        assert db.execute("DELETE FROM copies WHERE id = ?", (ident,)).rowcount == 1


def log_in_sync(client: httpx.Client, url: str) -> str:
    """Log ``client`` in to the console at ``url``; the logged-in session's CSRF token."""
    first = _CSRF.search(client.get("/login").text)
    assert first is not None
    data = {"csrf": first.group(1), "token": TOKEN, "next": "/messages"}
    assert client.post("/login", data=data, headers={"origin": url}).status_code == 303
    after = _CSRF.search(client.get("/messages").text)
    assert after is not None
    return after.group(1)
