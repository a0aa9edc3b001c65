"""The Prometheus endpoint: a real server, real SMTP clients, then a scrape over HTTP."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import OUTCOMES, running, until
from prometheus_client.parser import text_string_to_metric_families

from mailrouter.config import ConfigError, Settings, load_settings
from mailrouter.errors import MailRouterError
from mailrouter.runtime.server import Server
from mailrouter.runtime.workers import check_workers

APP = OUTCOMES  # ok@ accepted (by OK and REFUSE), refuse@ refused with 550, boom@ fails
MESSAGE = b"From: a@x.org\r\nSubject: test\r\n\r\nHello.\r\n"
LOOP = b"Received: from a\r\nReceived: from b\r\n" + MESSAGE

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample the endpoint exposes, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def value(server: Server, name: str, **labels: str) -> float:
    assert server.metrics is not None
    samples = await asyncio.to_thread(scrape, server.metrics.port)
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def eventually(server: Server, name: str, expected: float) -> None:
    """Scrape until ``name`` has the expected value; fail after a deadline."""
    found: float | None = None

    async def reached() -> bool:
        nonlocal found
        found = await value(server, name)
        return found == expected

    await until(reached, 10, message=lambda: f"{name} is {found}, not {expected}")


def send(port: int, rcpt: str, data: bytes = MESSAGE) -> int:
    """Send one message; the reply code after DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        try:
            client.sendmail("a@x.org", [rcpt], data)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code
    return 250


@asynccontextmanager
async def metered(tmp_path: Path, *handlers: str, **overrides: Any) -> AsyncIterator[Server]:
    """A running server with its metrics endpoint on a free port."""
    async with running(tmp_path, *handlers, **overrides) as server:
        server.serve_metrics(0)
        yield server


async def test_counters_follow_the_mail(tmp_path: Path, app: str) -> None:
    async with metered(tmp_path, app, max_received_headers=1) as server:
        sent = {
            rcpt: await asyncio.to_thread(send, server.port, f"{rcpt}@example.com")
            for rcpt in ("ok", "refuse", "nobody", "boom")
        }
        sent["loop"] = await asyncio.to_thread(send, server.port, "ok@example.com", LOOP)
        assert sent == {"ok": 250, "refuse": 550, "nobody": 250, "boom": 250, "loop": 554}

        assert await value(server, "mailrouter_messages_received_total") == 5
        assert await value(server, "mailrouter_messages_accepted_total") == 3
        assert await value(server, "mailrouter_messages_refused_total", code="550") == 1
        assert await value(server, "mailrouter_messages_refused_total", code="554") == 1
        assert await value(server, "mailrouter_messages_undeliverable_total") == 2
        assert await value(server, "mailrouter_handler_errors_total") == 1
        assert await value(server, "mailrouter_delivery_duration_seconds_count") == 5
        assert await value(server, "mailrouter_queue_depth") == 2
        assert await value(server, "mailrouter_outbox_depth") == 0


async def test_open_connections_are_a_gauge(tmp_path: Path, app: str) -> None:
    async with metered(tmp_path, app) as server:
        client = await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", server.port, timeout=10)
        await eventually(server, "mailrouter_connections", 1)
        await asyncio.to_thread(client.quit)
        await eventually(server, "mailrouter_connections", 0)


async def test_each_server_has_its_own_registry(tmp_path: Path, app: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        metered(tmp_path / "a", app) as first,
        metered(tmp_path / "b", app) as second,
    ):
        assert await asyncio.to_thread(send, first.port, "ok@example.com") == 250
        assert await value(first, "mailrouter_messages_received_total") == 1
        assert await value(second, "mailrouter_messages_received_total") == 0


async def test_without_metrics_nothing_observes_the_mail(tmp_path: Path, app: str) -> None:
    async with running(tmp_path, app) as server:
        assert server.metrics is None and server.handler.observers == []
        assert await asyncio.to_thread(send, server.port, "ok@example.com") == 250


async def test_stop_closes_the_endpoint(tmp_path: Path, app: str) -> None:
    async with metered(tmp_path, app) as server:
        assert server.metrics is not None
        port = server.metrics.port
    with pytest.raises(OSError):
        await asyncio.to_thread(scrape, port)


async def test_a_taken_metrics_port_fails_the_start(tmp_path: Path, app: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MailRouterError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            async with running(tmp_path, app, metrics_port=port):
                pass


async def test_metrics_without_prometheus_client_is_a_clear_error(
    tmp_path: Path, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mailrouter.runtime.metrics", None)
    with pytest.raises(MailRouterError, match=r"pip install 'mailrouter\[metrics\]'"):
        async with running(tmp_path, app, metrics_port=9):
            pass


def test_workers_refuse_metrics(tmp_path: Path) -> None:
    settings = Settings(workers=2, metrics_port=9100, state_url=f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(MailRouterError, match="metrics_port needs workers = 1"):
        check_workers(settings)


def test_the_metrics_table_sets_the_metrics_settings(tmp_path: Path) -> None:
    toml = tmp_path / "mailrouter.toml"
    toml.write_text('port = 2525\n[metrics]\nport = 9100\nhost = "0.0.0.0"\n')
    settings = load_settings(tmp_path, environ={})
    assert (settings.port, settings.metrics_port, settings.metrics_host) == (2525, 9100, "0.0.0.0")
    env = load_settings(tmp_path, environ={"MAILROUTER_METRICS_PORT": "9200"})
    assert env.metrics_port == 9200
    toml.write_text("metrics_port = 9100\n[metrics]\nport = 9101\n")
    with pytest.raises(ConfigError, match="setting 'metrics_port' is set twice"):
        load_settings(tmp_path, environ={})
    toml.write_text("[metrics]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'metrics_bogus'"):
        load_settings(tmp_path, environ={})
