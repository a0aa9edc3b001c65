"""The relay end to end: real aiosmtpd sinks on 127.0.0.1 port 0, real aiosmtplib sessions."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.rdata
import dns.resolver
import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword
from helpers import Sink, sink_server

from mailrouter.message import MailRequest
from mailrouter.outbound import sender as relay_module
from mailrouter.outbound.outbox import RetryPolicy, Schedule
from mailrouter.outbound.response import MailResponse
from mailrouter.outbound.sender import (
    ConnectionOptions,
    DeliveryError,
    Relay,
    RelayError,
    ResolveError,
    resolve_mx,
)
from mailrouter.queue import Queue

LATER = 10_000.0  # seconds: "now" for a retry pass that finds every entry due


def authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data == (b"relayuser", b"s3cret")
    return AuthResult(success=ok, handled=False, auth_data=data)


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def closed_port() -> Any:
    """A bound socket that does not listen: connections to its port are refused."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def response(**kw: Any) -> MailResponse:
    args: dict[str, Any] = {
        "to": "bob@example.com",
        "sender": "app@mailrouter.test",
        "subject": "Hello",
        "text": "Hi Bob.\n",
    }
    args.update(kw)
    return MailResponse(**args)


def make_relay(
    tmp_path: Path, port: int | None = None, *, retry: RetryPolicy | None = None, **kw: Any
) -> Relay:
    """A relay to the smarthost on ``port`` (None: to the MX), with ``kw`` connection options."""
    kw.setdefault("timeout", 5)
    kw.setdefault("local_hostname", "client.test")
    options = ConnectionOptions("127.0.0.1" if port is not None else None, port or 25, **kw)
    return Relay(options, outbox=tmp_path / "outbox", failed=tmp_path / "failed", retry=retry)


async def test_delivers_to_a_smarthost_with_the_right_envelope(tmp_path: Path, sink: Sink) -> None:
    async with sink_server(sink) as port:
        relay = make_relay(tmp_path, port)
        mail = response(cc="Carol <carol@example.org>", bcc="hidden@example.net")
        result = await relay.send_async(mail)
    assert result.status == "delivered" and result.ok
    assert result.delivered == ("bob@example.com", "carol@example.org", "hidden@example.net")
    assert result.message_id == mail.message_id
    [got] = sink.received
    assert got.sender == "app@mailrouter.test"
    assert got.recipients == ["bob@example.com", "carol@example.org", "hidden@example.net"]
    assert not got.tls and got.login is None
    parsed = message_from_bytes(got.data, policy=policy.default)
    assert parsed["Subject"] == "Hello"
    assert parsed["Message-ID"] == mail.message_id
    assert "Bcc" not in parsed and b"hidden" not in got.data
    assert relay.outbox.queue is not None and len(relay.outbox.queue) == 0


async def test_email_message_with_explicit_envelope(tmp_path: Path, sink: Sink) -> None:
    msg = EmailMessage()
    msg["From"] = "someone@example.org"
    msg["To"] = "header-only@example.org"
    msg["Bcc"] = "blind@example.org"
    msg["Subject"] = "raw"
    msg.set_content("body\n")
    async with sink_server(sink) as port:
        relay = make_relay(tmp_path, port)
        explicit = await relay.send_async(
            msg, sender="bounces@example.org", recipients=["real@example.org"]
        )
        implied = await relay.send_async(msg)
    assert explicit.delivered == ("real@example.org",)
    assert implied.delivered == ("header-only@example.org", "blind@example.org")
    first, second = sink.received
    assert (first.sender, first.recipients) == ("bounces@example.org", ["real@example.org"])
    assert second.sender == "someone@example.org"
    for got in (first, second):
        parsed = message_from_bytes(got.data, policy=policy.default)
        assert "Bcc" not in parsed and parsed["Message-ID"] and parsed["Date"]
    assert msg["Bcc"] == "blind@example.org"  # the caller's message is left alone


async def test_forwards_a_received_message_as_is(tmp_path: Path, sink: Sink) -> None:
    data = b"From: a@x.org\nSubject: fwd\nMessage-ID: <f@x.org>\n\nline\n.dot\n"
    request = MailRequest(("127.0.0.1", 1), "a@x.org", ["list@x.org"], data)
    async with sink_server(sink) as port:
        result = await make_relay(tmp_path, port).send_async(
            request, recipients=["member@example.com"]
        )
    assert result.delivered == ("member@example.com",) and result.message_id == "<f@x.org>"
    assert sink.received[0].data.replace(b"\r\n", b"\n") == data
    assert sink.received[0].sender == "a@x.org"


async def test_auth_login_in_the_clear_when_explicitly_allowed(tmp_path: Path, sink: Sink) -> None:
    async with sink_server(sink, authenticator=authenticator, auth_require_tls=False) as port:
        relay = make_relay(tmp_path, port, username="relayuser", password="s3cret", starttls=False)
        good = await relay.send_async(response())
        bad_relay = make_relay(
            tmp_path, port, username="relayuser", password="wrong", starttls=False
        )
        bad = await bad_relay.send_async(response())
    assert good.status == "delivered"
    assert sink.received[0].login == b"relayuser"
    assert bad.status == "failed" and "535" in bad.failed["bob@example.com"]
    assert bad.failed_key is not None
    assert len(sink.received) == 1


async def test_starttls_with_auth(
    tmp_path: Path, sink: Sink, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    smtp_kw = {"tls_context": server_tls, "require_starttls": True, "authenticator": authenticator}
    async with sink_server(sink, **smtp_kw) as port:
        relay = make_relay(
            tmp_path, port, username="relayuser", password="s3cret", tls_context=client_tls
        )
        assert relay.transport.options.starttls is True  # credentials never go out in the clear
        result = await relay.send_async(response())
        opportunistic = await make_relay(tmp_path, port, tls_context=client_tls).send_async(
            response(to="second@example.com")
        )
        untrusted = await make_relay(tmp_path, port).send_async(response(to="x@example.com"))
    assert result.status == "delivered"
    assert opportunistic.status == "delivered"
    assert untrusted.status == "deferred"  # the system CAs do not trust the test CA
    assert "certificate" in untrusted.deferred["x@example.com"].lower()
    first, second = sink.received
    assert first.tls and first.login == b"relayuser"
    assert second.tls and second.login is None


async def test_credentials_are_not_sent_without_tls(tmp_path: Path, sink: Sink) -> None:
    seen: list[Any] = []

    def spy(*args: Any) -> AuthResult:
        seen.append(args)
        return AuthResult(success=True)

    async with sink_server(sink, authenticator=spy, auth_require_tls=False) as port:
        relay = make_relay(tmp_path, port, username="relayuser", password="s3cret")
        result = await relay.send_async(response())
    assert result.status == "deferred" and "STARTTLS" in result.deferred["bob@example.com"]
    assert seen == [] and sink.received == []


async def test_implicit_tls(
    tmp_path: Path, sink: Sink, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    async with sink_server(sink, tls=server_tls) as port:
        relay = make_relay(tmp_path, port, tls=True, tls_context=client_tls)
        result = await relay.send_async(response())
    assert result.status == "delivered"
    assert sink.received[0].tls


def outbox_entries(relay: Relay) -> list[tuple[list[str], dict[str, str]]]:
    queue = relay.outbox.queue
    assert queue is not None
    entries = [queue.read(key) for key in queue.keys()]  # noqa: SIM118
    return [(entry.message.recipients, entry.reasons) for entry in entries]


async def test_a_4xx_goes_to_the_outbox_and_a_retry_delivers(tmp_path: Path, sink: Sink) -> None:
    sink.mail_reply = "451 4.3.0 Try again later"
    async with sink_server(sink) as port:
        relay = make_relay(tmp_path, port)
        before = time.time()
        result = await relay.send_async(response())
        assert result.status == "deferred" and result.ok and result.outbox_key
        assert "451 4.3.0 Try again later" in result.deferred["bob@example.com"]
        [(rcpts, reasons)] = outbox_entries(relay)
        schedule, reply = Schedule.decode(reasons["bob@example.com"], 0)
        assert rcpts == ["bob@example.com"] and "451" in reply
        assert schedule.attempts == 1
        assert before + 59 <= schedule.next <= time.time() + 61

        not_yet = await relay.retry_once()
        assert not_yet.entries == 0 and not_yet.next_due == pytest.approx(schedule.next, abs=1)

        still_down = await relay.retry_once(now=time.time() + 61)
        assert (still_down.entries, still_down.deferred) == (1, 1)
        [(_, reasons)] = outbox_entries(relay)
        second, _ = Schedule.decode(reasons["bob@example.com"], 0)
        assert second.attempts == 2 and second.first == schedule.first
        assert second.next == pytest.approx(time.time() + 61 + 120, abs=2)  # backoff doubled

        sink.mail_reply = None
        # A relay built afresh on the same folders, as after a restart.
        restarted = make_relay(tmp_path, port)
        report = await restarted.retry_once(now=time.time() + LATER)
    assert (report.entries, report.delivered, report.deferred) == (1, 1, 0)
    assert report.next_due is None
    assert outbox_entries(relay) == []
    [got] = sink.received
    assert got.recipients == ["bob@example.com"]
    assert message_from_bytes(got.data)["Message-ID"] == result.message_id


async def test_only_temporarily_failed_recipients_are_retried(tmp_path: Path, sink: Sink) -> None:
    sink.rcpt_replies = {
        "later@example.com": "450 4.2.1 Mailbox busy",
        "gone@example.com": "550 5.1.1 No such user",
    }
    async with sink_server(sink) as port:
        relay = make_relay(tmp_path, port)
        result = await relay.send_async(
            response(to=["ok@example.com", "later@example.com", "gone@example.com"])
        )
        assert result.status == "failed"
        assert result.delivered == ("ok@example.com",)
        assert list(result.deferred) == ["later@example.com"]
        assert list(result.failed) == ["gone@example.com"]
        assert [rcpts for rcpts, _ in outbox_entries(relay)] == [["later@example.com"]]
        failed = Queue(tmp_path / "failed")
        [key] = failed.keys()
        entry = failed.read(key)
        assert entry.message.recipients == ["gone@example.com"]
        assert "550 5.1.1 No such user" in entry.reasons["gone@example.com"]

        sink.rcpt_replies = {}
        report = await relay.retry_once(now=time.time() + LATER)
    assert report.delivered == 1
    assert [got.recipients for got in sink.received] == [
        ["ok@example.com"],
        ["later@example.com"],
    ]
    assert outbox_entries(relay) == []


async def test_a_smarthost_that_is_down_then_up(
    tmp_path: Path, sink: Sink, closed_port: socket.socket
) -> None:
    port = closed_port.getsockname()[1]
    relay = make_relay(tmp_path, port)
    result = await relay.send_async(response())
    assert result.status == "deferred" and "connect" in result.deferred["bob@example.com"]
    closed_port.listen()
    async with sink_server(sink, sock=closed_port):
        report = await relay.retry_once(now=time.time() + LATER)
    assert report.delivered == 1
    assert [got.recipients for got in sink.received] == [["bob@example.com"]]
    assert outbox_entries(relay) == []


async def test_a_5xx_goes_to_the_failed_maildir(tmp_path: Path, sink: Sink) -> None:
    sink.data_reply = "554 5.7.1 Rejected as spam"
    async with sink_server(sink) as port:
        relay = make_relay(tmp_path, port)
        result = await relay.send_async(response())
        with pytest.raises(DeliveryError) as info:
            await relay.send_async(response(), check=True)
    assert result.status == "failed" and not result.ok
    assert "554 5.7.1 Rejected as spam" in result.failed["bob@example.com"]
    assert info.value.result.status == "failed"
    failed = Queue(tmp_path / "failed")
    assert len(failed) == 2
    entry = failed.read(result.failed_key or "")
    assert entry.message.sender == "app@mailrouter.test"
    assert message_from_bytes(entry.data)["Subject"] == "Hello"
    assert outbox_entries(relay) == []


async def test_giving_up_after_the_expiry(tmp_path: Path, closed_port: socket.socket) -> None:
    port = closed_port.getsockname()[1]
    relay = make_relay(tmp_path, port, retry=RetryPolicy(expire=3600))
    first = await relay.send_async(response())
    assert first.status == "deferred"
    report = await relay.retry_once(now=time.time() + 3601)
    assert (report.entries, report.failed, report.deferred) == (1, 1, 0)
    assert outbox_entries(relay) == []
    [key] = Queue(tmp_path / "failed").keys()
    reason = Queue(tmp_path / "failed").read(key).reasons["bob@example.com"]
    assert reason.startswith("gave up after 2 attempts:")


async def test_without_an_outbox_a_deferral_is_not_ok(tmp_path: Path, sink: Sink) -> None:
    sink.mail_reply = "421 4.3.2 Shutting down"
    async with sink_server(sink) as port:
        relay = Relay(ConnectionOptions("127.0.0.1", port, timeout=5, local_hostname="client.test"))
        result = await relay.send_async(response())
        with pytest.raises(DeliveryError):
            await relay.send_async(response(), check=True)
        assert (await relay.retry_once()).entries == 0
    assert result.status == "deferred" and not result.ok and result.outbox_key is None


async def test_direct_to_mx_with_an_injected_resolver(
    tmp_path: Path, sink: Sink, closed_port: socket.socket
) -> None:
    dead = closed_port.getsockname()[1]
    asked: list[str] = []
    async with sink_server(sink) as port:

        async def resolver(domain: str) -> list[tuple[str, int]]:
            asked.append(domain)
            if domain == "nowhere.example":
                raise ResolveError("nowhere.example: no such domain", temporary=False)
            if domain == "nomx.example":
                return []
            return [("127.0.0.1", dead), ("127.0.0.1", port)]  # the first MX is down

        relay = make_relay(tmp_path, resolver=resolver)
        result = await relay.send_async(
            response(
                to=["a@one.example", "b@two.example", "c@one.example", "d@bücher.example"],
                cc=["x@nowhere.example", "y@nomx.example"],
            )
        )
    assert sorted(asked) == sorted(
        ["one.example", "two.example", "xn--bcher-kva.example", "nowhere.example", "nomx.example"]
    )
    assert set(result.delivered) == {
        "a@one.example",
        "b@two.example",
        "c@one.example",
        "d@xn--bcher-kva.example",
    }
    assert set(result.failed) == {"x@nowhere.example", "y@nomx.example"}
    grouped = sorted(sorted(got.recipients) for got in sink.received)
    assert grouped == [
        ["a@one.example", "c@one.example"],
        ["b@two.example"],
        ["d@xn--bcher-kva.example"],
    ]


async def test_a_failing_resolver_defers(tmp_path: Path) -> None:
    def resolver(domain: str) -> list[tuple[str, int]]:
        raise OSError("DNS is down")

    relay = make_relay(tmp_path, resolver=resolver)
    result = await relay.send_async(response())
    assert result.status == "deferred" and "DNS is down" in result.deferred["bob@example.com"]


async def test_smtputf8_addresses(tmp_path: Path, sink: Sink) -> None:
    mail = response(to="Jörg <jörg@bücher.example>", text="Grüße\n")
    async with sink_server(sink, enable_SMTPUTF8=True) as port:
        result = await make_relay(tmp_path, port).send_async(mail)
    async with sink_server(Sink()) as port:
        refused = await make_relay(tmp_path, port).send_async(mail)
    assert result.delivered == ("jörg@xn--bcher-kva.example",)
    [got] = sink.received
    assert "SMTPUTF8" in got.mail_options
    assert got.recipients == ["jörg@xn--bcher-kva.example"]
    assert refused.status == "failed" and "SMTPUTF8" in refused.failed[result.delivered[0]]


async def test_send_from_a_worker_thread_while_the_loop_runs(tmp_path: Path, sink: Sink) -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    async with sink_server(sink) as port:

        def resolver(domain: str) -> list[tuple[str, int]]:
            loops.append(asyncio.get_running_loop())
            return [("127.0.0.1", port)]

        relay = make_relay(tmp_path, resolver=resolver)
        unbound = await asyncio.to_thread(relay.send, response(to="one@example.com"))
        relay.bind()
        bound = await asyncio.to_thread(relay.send, response(to="two@example.com"))
        with pytest.raises(RelayError, match="block the event loop"):
            relay.send(response())
    assert unbound.status == bound.status == "delivered"
    this_loop = asyncio.get_running_loop()
    assert loops[0] is not this_loop  # a private loop in the worker thread
    assert loops[1] is this_loop  # the relay's own loop
    assert [got.recipients for got in sink.received] == [["one@example.com"], ["two@example.com"]]


async def test_module_level_proxy(tmp_path: Path, sink: Sink) -> None:
    with pytest.raises(RelayError, match="no relay configured"):
        relay_module.current()
    async with sink_server(sink) as port:
        with relay_module.using(make_relay(tmp_path, port)) as relay:
            assert relay_module.current() is relay
            result = await relay_module.send_async(response())
            threaded = await asyncio.to_thread(relay_module.send, response(to="t@example.com"))
        with pytest.raises(RelayError, match="no relay configured"):
            await relay_module.send_async(response())
    assert result.status == threaded.status == "delivered"
    assert len(sink.received) == 2


async def test_using_sets_the_relay_of_its_own_context_only(tmp_path: Path) -> None:
    outer, inner, other = (make_relay(tmp_path / name) for name in ("outer", "inner", "other"))
    entered, checked = asyncio.Event(), asyncio.Event()

    async def elsewhere() -> Any:
        with relay_module.using(other):
            entered.set()
            await checked.wait()
            return relay_module.current()

    with relay_module.using(outer):
        task = asyncio.create_task(elsewhere())  # a copy of this context: outer, then other
        await entered.wait()
        assert relay_module.current() is outer
        with relay_module.using(inner):
            assert relay_module.current() is inner
        assert relay_module.current() is outer
        checked.set()
        assert await task is other
    with pytest.raises(RelayError):
        relay_module.current()


async def test_run_retries_until_stopped(tmp_path: Path, sink: Sink) -> None:
    sink.mail_reply = "452 4.3.1 Out of space"
    async with sink_server(sink) as port:
        relay = make_relay(tmp_path, port, retry=RetryPolicy(initial=0))
        result = await relay.send_async(response())
        assert result.status == "deferred"
        sink.mail_reply = None
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run_retries(stop, interval=0.05))
        try:
            await asyncio.wait_for(sink.arrived.wait(), 10)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    assert [got.recipients for got in sink.received] == [["bob@example.com"]]
    assert outbox_entries(relay) == []


async def test_one_retry_pass_at_a_time(tmp_path: Path, closed_port: socket.socket) -> None:
    from mailrouter.outbound.outbox import _try_lock

    relay = make_relay(tmp_path, closed_port.getsockname()[1])
    await relay.send_async(response())
    queue = relay.outbox.queue
    assert queue is not None
    held = _try_lock(Path(queue.path) / "retry.lock")
    assert held is not None
    try:
        busy = await relay.retry_once(now=time.time() + LATER)
    finally:
        os.close(held)
    assert busy.busy and busy.entries == 0
    assert (await relay.retry_once(now=time.time() + LATER)).entries == 1


def test_from_settings(tmp_path: Path) -> None:
    from mailrouter.config import Settings

    settings = Settings(
        relay_host="smtp.example.com",
        relay_port=587,
        relay_starttls="require",
        relay_username="u",
        relay_password="p",
        hostname="mx.example.com",
        config_dir=str(tmp_path / "config"),
    )
    relay = relay_module.from_settings(settings)
    options = relay.transport.options
    assert (options.host, options.port, options.starttls) == ("smtp.example.com", 587, True)
    assert options.username == "u" and options.local_hostname == "mx.example.com"
    assert "'p'" not in repr(options)  # the password stays out of logs
    assert relay.outbox.queue is not None
    assert relay.outbox.queue.path == str(tmp_path / "run" / "outbox")
    direct = relay_module.from_settings(
        Settings(config_dir=str(tmp_path / "config"), relay_starttls="off")
    )
    assert direct.transport.options.host is None and direct.transport.options.starttls is False
    assert repr(direct) == "Relay(MX)" and repr(relay) == "Relay(smtp.example.com:587)"


def test_retry_policy_backoff() -> None:
    backoff = RetryPolicy()
    delays = [backoff.delay(n) for n in range(1, 10)]
    assert delays[:4] == [60, 120, 240, 480]
    assert max(delays) == 3600 and delays[-1] == 3600


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"tls": True, "starttls": True}, ValueError),
        ({"username": "u"}, ValueError),
    ],
)
def test_bad_connection_options(kw: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        ConnectionOptions("smtp.example.com", **kw)


async def test_bad_envelopes_raise(tmp_path: Path) -> None:
    relay = make_relay(tmp_path, 1)
    msg = EmailMessage()
    msg["From"] = "a@x.org"
    msg.set_content("no recipients")
    with pytest.raises(ValueError, match="no recipients"):
        await relay.send_async(msg)
    with pytest.raises(ValueError, match="invalid envelope"):
        await relay.send_async(msg, recipients=["Bob <bob@x.org>"])


def fake_dns(monkeypatch: pytest.MonkeyPatch, zone: dict[tuple[str, str], Any]) -> None:
    """Answer DNS queries from ``zone``: (name, type) -> record texts or an exception."""

    async def resolve(name: str, rdtype: str, **kw: Any) -> list[Any]:
        found = zone.get((name, rdtype), dns.resolver.NoAnswer())
        if isinstance(found, Exception):
            raise found
        return [dns.rdata.from_text("IN", rdtype, text) for text in found]

    monkeypatch.setattr(dns.asyncresolver, "resolve", resolve)


async def test_resolve_mx_orders_by_preference(monkeypatch: pytest.MonkeyPatch) -> None:
    records = ["20 backup.example.com.", "10 mx1.example.com.", "30 last.example.net."]
    fake_dns(monkeypatch, {("example.com", "MX"): records})
    assert await resolve_mx("example.com") == [
        ("mx1.example.com", 25),
        ("backup.example.com", 25),
        ("last.example.net", 25),
    ]


async def test_resolve_mx_falls_back_to_the_address(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(
        monkeypatch,
        {("v4.example", "A"): ["192.0.2.1"], ("v6.example", "AAAA"): ["2001:db8::1"]},
    )
    assert await resolve_mx("v4.example", port=2525) == [("v4.example", 2525)]
    assert await resolve_mx("v6.example") == [("v6.example", 25)]
    with pytest.raises(ResolveError, match="no MX and no address") as info:
        await resolve_mx("empty.example")
    assert not info.value.temporary


@pytest.mark.parametrize(
    ("answer", "temporary", "match"),
    [
        (["0 ."], False, "null MX"),
        (dns.resolver.NXDOMAIN(), False, "no such domain"),
        (dns.resolver.LifetimeTimeout(timeout=1.0, errors={}), True, "DNS lookup failed"),
        (dns.resolver.NoNameservers(), True, "DNS lookup failed"),
    ],
)
async def test_resolve_mx_errors(
    monkeypatch: pytest.MonkeyPatch, answer: Any, temporary: bool, match: str
) -> None:
    fake_dns(monkeypatch, {("bad.example", "MX"): answer})
    with pytest.raises(ResolveError, match=match) as info:
        await resolve_mx("bad.example")
    assert info.value.temporary is temporary


async def test_dns_failures_decide_deferred_or_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(
        monkeypatch,
        {
            ("gone.example", "MX"): dns.resolver.NXDOMAIN(),
            ("flaky.example", "MX"): dns.resolver.NoNameservers(),
        },
    )
    relay = make_relay(tmp_path)  # no smarthost, no resolver: DNS
    result = await relay.send_async(response(to=["a@gone.example", "b@flaky.example"]))
    assert list(result.failed) == ["a@gone.example"]
    assert list(result.deferred) == ["b@flaky.example"]
