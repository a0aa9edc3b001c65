"""The console's security rules, over HTTP against a real server's console: the login token and
session, CSRF with the Origin, the secure headers, and the refusals at start."""

from __future__ import annotations

import logging
import ssl
import stat
from pathlib import Path

import httpx
import pytest
import trustme
from consoles import APP, TOKEN, Browser, browser, commands_of, console
from helpers import running

__all__ = ["APP"]  # the conftest's ``app`` fixture loads it

from mailrouter.config import ConfigError, Settings
from mailrouter.console.auth import CSP, Tokens, is_loopback
from mailrouter.console.client import LocalCommands
from mailrouter.console.service import ConsoleServer
from mailrouter.console.throttle import Throttle
from mailrouter.errors import MailRouterError

STATE_CHANGES = [
    ("/compose", {"to": "ok@example.com", "sender": "joe@example.org", "subject": "x"}),
    ("/states/reset", {"sender": "joe@example.org", "key": "app"}),
    ("/states/set", {"sender": "joe@example.org", "key": "app", "state": "START"}),
    ("/queues/undeliverable/1.M1P1Q1.x/replay", {}),
    ("/queues/outbox/1.M1P1Q1.x/retry", {}),
    ("/queues/failed/1.M1P1Q1.x/remove", {}),
    ("/logout", {}),
]


async def test_pages_need_a_login_and_a_wrong_token_is_refused(tmp_path: Path, app: str) -> None:
    async with console(tmp_path, app) as live, browser(live.url, logged_in=False) as visitor:
        page = await visitor.get("/messages?status=queued")
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=%2Fmessages%3Fstatus%3Dqueued"
        live_rows = await visitor.get("/messages/rows", headers={"hx-request": "true"})
        assert live_rows.status_code == 401
        for path in ("/messages/0123/raw", "/queues/undeliverable", "/activity/chart"):
            assert (await visitor.get(path)).status_code == 303, path

        wrong = await visitor.log_in("not-the-token")
        assert wrong.status_code == 401 and "wrong token" in wrong.text
        assert (await visitor.get("/messages")).status_code == 303

        right = await visitor.log_in()
        assert right.status_code == 303 and right.headers["location"] == "/messages"
        cookie = right.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
        assert (await visitor.get("/messages")).status_code == 200

        await visitor.post("/logout", {})
        assert (await visitor.get("/messages")).status_code == 303


async def test_a_login_replaces_the_session_and_goes_only_to_local_paths(
    tmp_path: Path, app: str
) -> None:
    async with console(tmp_path, app) as live, browser(live.url, logged_in=False) as visitor:
        await visitor.get("/login")
        before = visitor.csrf
        for target, landing in [("//evil.example/x", "/"), ("https://evil.example/", "/")]:
            response = await visitor.post("/login", {"token": TOKEN, "next": target})
            assert response.headers["location"] == landing
            await visitor.get("/messages")
        assert visitor.csrf != before  # the token planted before the login is worthless


@pytest.mark.parametrize(("path", "data"), STATE_CHANGES)
async def test_every_state_change_needs_the_csrf_token_and_the_origin(
    tmp_path: Path, app: str, path: str, data: dict[str, str]
) -> None:
    async with console(tmp_path, app) as live, browser(live.url) as visitor:
        good = visitor.csrf
        refusals = [
            ({"csrf": ""}, {}),  # no token
            ({"csrf": good[:-2] + "xx"}, {}),  # another token
            ({}, {"origin": "http://evil.example"}),  # another site
            ({}, {"origin": "null"}),
            ({}, {"origin": "", "referer": "http://evil.example/page"}),
        ]
        for fields, headers in refusals:
            response = await visitor.post(path, {**data, **fields}, headers=headers)
            assert response.status_code == 403, (path, fields, headers, response.text)
        no_origin = await visitor.client.post(path, data={"csrf": good, **data})
        assert no_origin.status_code == 403
        by_referer = await visitor.client.post(
            path, data={"csrf": good, **data}, headers={"referer": f"{live.url}/states"}
        )
        assert by_referer.status_code != 403, by_referer.text


async def test_headers_forbid_inline_scripts_framing_and_sniffing(tmp_path: Path, app: str) -> None:
    async with console(tmp_path, app) as live, browser(live.url) as visitor:
        for path in ("/login", "/messages", "/static/console.css", "/no-such-page"):
            response = await visitor.get(path)
            headers = response.headers
            assert headers["content-security-policy"] == CSP, path
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "same-origin"
        script = CSP.split("script-src ")[1].split(";")[0]
        assert script == "'self'" and "unsafe-inline" not in CSP and "frame-ancestors 'none'" in CSP


async def test_a_made_token_is_printed_once_and_only_its_hash_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(config_dir=str(tmp_path / "config"))
    with caplog.at_level(logging.WARNING, logger="mailrouter.console.auth"):
        tokens = Tokens.of_settings(settings)
    (line,) = [r.getMessage() for r in caplog.records if "console login token" in r.getMessage()]
    token = line.rsplit(": ", 1)[1]
    kept = tmp_path / "run" / "console.token"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert token not in kept.read_text() and len(kept.read_text().strip()) == 64
    assert tokens.valid(token) and not tokens.valid(token + "x")

    caplog.clear()
    again = Tokens.of_settings(settings)  # a restart: the same token, and nothing printed
    assert again.valid(token)
    assert not [r for r in caplog.records if "console login token" in r.getMessage()]


def test_a_console_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "192.0.2.10", "::", "mail.example.com"):
        settings = Settings(config_dir=str(tmp_path / "config"), console_host=host)
        with pytest.raises(ConfigError) as refused:
            ConsoleServer(settings, LocalCommands({}))
        assert "console_host" in str(refused.value) and "console_token" in str(refused.value)
    assert all(map(is_loopback, ("127.0.0.1", "127.5.0.1", "::1", "[::1]", "localhost")))
    ConsoleServer(
        Settings(config_dir=str(tmp_path), console_host="0.0.0.0", console_token=TOKEN),
        LocalCommands({}),
    )


async def test_the_sessions_cookie_alone_is_not_enough_from_another_site(
    tmp_path: Path, app: str
) -> None:
    async with console(tmp_path, app) as live, browser(live.url) as visitor:
        cookies = httpx.Cookies(visitor.client.cookies)
        async with httpx.AsyncClient(base_url=live.url, cookies=cookies) as forged:
            response = await forged.post(
                "/states/reset",
                data={"sender": "joe@example.org", "key": "app"},
                headers={"origin": live.url},
            )
        assert response.status_code == 403


async def test_failed_logins_are_throttled_per_client_address(tmp_path: Path, app: str) -> None:
    now = [1000.0]
    throttle = Throttle(limit=5, window=300, clock=lambda: now[0])
    async with running(tmp_path, app, console_token=TOKEN) as server:
        served = ConsoleServer(
            server.settings, LocalCommands(commands_of(server)), throttle=throttle
        )
        await served.start()
        url = served.url.rstrip("/")
        try:
            async with browser(url, logged_in=False) as guesser:
                for _ in range(5):
                    assert (await guesser.log_in("a-guess")).status_code == 401
                refused = await guesser.log_in()  # even the right token, now
                assert refused.status_code == 429 and refused.headers["retry-after"] == "300"
                assert "too many failed logins" in refused.text
                now[0] += 100
                assert (await guesser.log_in()).headers["retry-after"] == "200"

                other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
                async with httpx.AsyncClient(base_url=url, transport=other) as client:
                    neighbour = Browser(client, url)
                    assert (await neighbour.log_in()).status_code == 303  # its own count

                now[0] += 200  # the window since the first failure has passed
                assert (await guesser.log_in()).status_code == 303
                for _ in range(4):
                    assert (await guesser.log_in("a-guess")).status_code == 401
                assert (await guesser.log_in()).status_code == 303  # a success resets the count
                for _ in range(5):
                    assert (await guesser.log_in("a-guess")).status_code == 401
                assert (await guesser.log_in()).status_code == 429
        finally:
            await served.stop()


def test_an_ipv6_client_is_throttled_by_its_64() -> None:
    throttle = Throttle(limit=1, window=60, clock=lambda: 0.0)
    throttle.failed("2001:db8:1:2::10")
    assert throttle.wait("2001:db8:1:2:ffff::1") == 60
    assert throttle.wait("2001:db8:1:3::10") == 0
    throttle.failed("::ffff:192.0.2.1")
    assert throttle.wait("192.0.2.1") == 60


async def test_the_session_cookie_is_secure_when_the_request_is_https(
    tmp_path: Path, app: str
) -> None:
    async with console(tmp_path, app) as live, browser(live.url, logged_in=False) as visitor:
        https = live.url.replace("http://", "https://")
        proxied = {"x-forwarded-proto": "https", "origin": https}  # a TLS proxy on loopback
        form = await visitor.get("/login", headers=proxied)
        assert "; secure" in form.headers["set-cookie"].lower()
        session = form.headers["set-cookie"].split(";")[0]  # httpx keeps Secure ones for https
        response = await visitor.post(
            "/login", {"token": TOKEN}, headers={**proxied, "cookie": session}
        )
        assert response.status_code == 303, response.text
        assert "; secure" in response.headers["set-cookie"].lower()


async def test_the_console_over_tls_sets_a_secure_cookie(tmp_path: Path, app: str) -> None:
    ca = trustme.CA()
    pem = tmp_path / "console.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    async with console(tmp_path, app, console_tls_cert=str(pem)) as live:
        assert live.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context()
        ca.configure_trust(trusted)
        async with httpx.AsyncClient(base_url=live.url, verify=trusted) as client:
            visitor = Browser(client, live.url)
            response = await visitor.log_in()
            assert response.status_code == 303
            assert "; secure" in response.headers["set-cookie"].lower()
            assert (await visitor.get("/messages")).status_code == 200

    broken = Settings(config_dir=str(tmp_path / "config"), console_tls_cert="missing.pem")
    with pytest.raises(MailRouterError) as refused:
        await ConsoleServer(broken, LocalCommands({})).start()
    assert "console_tls_cert" in str(refused.value) and "missing.pem" in str(refused.value)
