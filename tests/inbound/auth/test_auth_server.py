"""Sender authentication in a real server, over SMTP from 127.0.0.1 and ::1: the policies at
the end of DATA, what handlers see in ``message.auth``, the trusted MTA's headers, and how
``@authenticated``, ``reject_unauthenticated`` and ``state_sender`` route."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, message, publish, sign
from dnszone import Zone
from helpers import running, until

from mailrouter.queue import Queue
from mailrouter.runtime.commands import Operations
from mailrouter.runtime.server import build_router

APP = """
from mailrouter import authenticated, route, stateless

seen = []


@route("news@(host)")
@stateless
def NEWS(message, host=None):
    seen.append(message)


@route("members@(host)")
@authenticated
@stateless
def MEMBERS(message, host=None):
    seen.append(message)


@route("talk@(host)")
def START(message, host=None):
    seen.append((message.route_from, "START"))
    return TALKING


@route("talk@(host)")
def TALKING(message, host=None):
    seen.append((message.route_from, "TALKING"))
"""


def settings(zone: Zone, **overrides: Any) -> dict[str, Any]:
    return {"dns_nameservers": [zone.address], "dns_timeout": TIMEOUT, **overrides}


async def send(
    port: int, data: bytes, to: str, sender: str = "joe@x.org", host: str = "127.0.0.1"
) -> None:
    def talk() -> None:
        with smtplib.SMTP(host, port, timeout=30) as client:
            client.sendmail(sender, [to], data)

    await asyncio.to_thread(talk)


def seen(app: str) -> list[Any]:
    return list(sys.modules[app].seen)


def queued(tmp_path: Path) -> list[dict[str, str]]:
    """The reasons of each message in the undeliverable queue."""
    queue = Queue(tmp_path / "run" / "undeliverable")
    return [queue.read(key).reasons for key in sorted(queue.keys())]


async def test_annotate_attaches_results_and_keeps_the_bytes(
    tmp_path: Path, app: str, zone: Zone, rsa_pem: bytes
) -> None:
    publish(zone, "sel", "x.org", rsa_pem)
    zone.spf("x.org", "v=spf1 ip4:127.0.0.1 -all")
    zone.dmarc("x.org", "v=DMARC1; p=reject")
    data = sign(message(), "x.org", "sel", rsa_pem)
    async with running(tmp_path, app, **settings(zone)) as server:
        await send(server.port, data, "news@example.com")
    (got,) = seen(app)
    assert got.data == data
    assert (got.auth.spf.result, got.auth.dkim[0].result, got.auth.dmarc.result) == (
        "pass",
        "pass",
        "pass",
    )
    assert got.auth.aligned_domain == "x.org"


@pytest.mark.parametrize("policy", ["enforce", "annotate"])
async def test_a_dmarc_reject_is_refused_under_enforce_only(
    tmp_path: Path, app: str, zone: Zone, policy: str
) -> None:
    zone.spf("x.org", "v=spf1 ip4:192.0.2.1 -all")
    zone.dmarc("x.org", "v=DMARC1; p=reject")
    async with running(tmp_path, app, **settings(zone, auth_policy=policy)) as server:
        if policy == "enforce":
            with pytest.raises(smtplib.SMTPDataError) as refused:
                await send(server.port, message(), "news@example.com")
            assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (550, b"5.7.1")
            assert seen(app) == []  # refused before any handler ran
        else:
            await send(server.port, message(), "news@example.com")
            (got,) = seen(app)
            assert (got.auth.dmarc.result, got.auth.dmarc.disposition) == ("fail", "reject")


async def test_quarantine_reaches_the_handlers_flagged(
    tmp_path: Path, app: str, zone: Zone
) -> None:
    zone.spf("x.org", "v=spf1 -all")
    zone.dmarc("x.org", "v=DMARC1; p=quarantine")
    async with running(tmp_path, app, **settings(zone, auth_policy="enforce")) as server:
        await send(server.port, message(), "news@example.com")
    (got,) = seen(app)
    assert (got.auth.dmarc.disposition, got.auth.quarantined) == ("quarantine", True)


async def test_a_dns_timeout_never_rejects(
    tmp_path: Path, app: str, zone: Zone, rsa_pem: bytes
) -> None:
    zone.dmarc("x.org", "v=DMARC1; p=reject")
    zone.drop("x.org")
    zone.drop("sel._domainkey.x.org")
    data = sign(message(), "x.org", "sel", rsa_pem)
    async with running(tmp_path, app, **settings(zone, auth_policy="enforce")) as server:
        await send(server.port, data, "news@example.com")
    (got,) = seen(app)
    assert (got.auth.spf.result, got.auth.dkim[0].result, got.auth.dmarc.result) == (
        "temperror",
        "temperror",
        "temperror",
    )


async def test_spf_from_ipv6_loopback(tmp_path: Path, app: str, zone: Zone) -> None:
    zone.spf("x.org", "v=spf1 ip6:::1 -all")
    async with running(tmp_path, app, host="::1", **settings(zone)) as server:
        await send(server.port, message(), "news@example.com", host="::1")
    (got,) = seen(app)
    assert got.peer[0] == "::1" and got.auth.spf.result == "pass"


async def test_auth_policy_off_verifies_nothing(tmp_path: Path, app: str, zone: Zone) -> None:
    async with running(tmp_path, app, **settings(zone, auth_policy="off")) as server:
        await send(server.port, message(), "news@example.com")
    (got,) = seen(app)
    assert got.auth is None and zone.questions == []


# -- the MTA in front -------------------------------------------------------------------------

TRUSTED = (
    "Authentication-Results: mx.example.com;\r\n"
    "\tspf=fail smtp.mailfrom=joe@x.org;\r\n"
    "\tdkim=pass header.d=x.org header.s=s1;\r\n"
    "\tdmarc=pass (p=reject dis=none) header.from=x.org\r\n"
    "Received: from a.x.org by mx.example.com; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
)


async def test_a_trusted_mta_s_results_are_used(tmp_path: Path, app: str, zone: Zone) -> None:
    options = settings(zone, trusted_authserv_ids=["mx.example.com"])
    async with running(tmp_path, app, **options) as server:
        await send(server.port, message(headers=TRUSTED), "members@example.com")
    (got,) = seen(app)  # @authenticated ran: DMARC passed, says mx.example.com
    assert got.auth.authserv_id == "mx.example.com" and got.auth.aligned_domain == "x.org"
    assert (got.auth.spf.result, got.auth.dkim[0].selector, got.auth.dmarc.policy) == (
        "fail",
        "s1",
        "reject",
    )
    assert zone.questions == []  # nothing verified again


@pytest.mark.parametrize(
    "headers",
    [
        TRUSTED.replace("mx.example.com;", "mx.evil.example;"),  # not a trusted authserv-id
        "Received: from evil by relay.evil.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n" + TRUSTED,
        "Authentication-Results: mx.evil.example; none\r\n" + TRUSTED,
    ],
    ids=["untrusted-id", "below-a-received", "below-an-untrusted-one"],
)
async def test_untrusted_results_are_ignored(
    tmp_path: Path, app: str, zone: Zone, headers: str
) -> None:
    zone.dmarc("x.org", "v=DMARC1; p=none")
    options = settings(zone, trusted_authserv_ids=["mx.example.com"])
    async with running(tmp_path, app, **options) as server:
        await send(server.port, message(headers=headers), "news@example.com")
    (got,) = seen(app)
    assert got.auth.authserv_id == "" and got.auth.dmarc.result == "fail"  # verified here
    assert ("_dmarc.x.org", "TXT") in zone.questions


# -- routing ----------------------------------------------------------------------------------


def aligned(zone: Zone, domain: str = "x.org") -> None:
    zone.spf(domain, "v=spf1 ip4:127.0.0.1 -all")
    zone.dmarc(domain, "v=DMARC1; p=none")


async def test_authenticated_runs_only_for_an_aligned_sender(
    tmp_path: Path, app: str, zone: Zone
) -> None:
    aligned(zone)
    zone.dmarc("y.org", "v=DMARC1; p=none")
    async with running(tmp_path, app, **settings(zone)) as server:
        await send(server.port, message(), "members@example.com")
        forged = message(sender="ann@y.org", subject="forged")
        await send(server.port, forged, "members@example.com")
    (got,) = seen(app)
    assert got["Subject"] == "Hello"
    assert queued(tmp_path) == [{"members@example.com": "unauthenticated sender"}]
    (key,) = Queue(tmp_path / "run" / "undeliverable").keys()
    assert Queue(tmp_path / "run" / "undeliverable").get(key)["Subject"] == "forged"


async def test_reject_unauthenticated_refuses_with_550(
    tmp_path: Path, app: str, zone: Zone
) -> None:
    options = settings(zone, reject_unauthenticated=True)
    async with running(tmp_path, app, **options) as server:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            await send(server.port, message(), "members@example.com")
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 Sender not authenticated")
    assert seen(app) == []


@pytest.mark.parametrize(
    ("state_sender", "publish_records", "expected"),
    [
        ("envelope", aligned, [("bounce@lists.x.org", "START"), ("bounce@lists.x.org", "TALKING")]),
        ("from", lambda zone: None, [("joe@x.org", "START"), ("joe@x.org", "TALKING")]),
        ("authenticated", aligned, [("joe@x.org", "START"), ("joe@x.org", "TALKING")]),
        ("authenticated", lambda zone: None, []),
    ],
    ids=["envelope", "from", "authenticated", "unauthenticated"],
)
async def test_state_sender_picks_whose_state_it_is(
    tmp_path: Path,
    app: str,
    zone: Zone,
    state_sender: str,
    publish_records: Callable[[Zone], None],
    expected: list[tuple[str, str]],
) -> None:
    publish_records(zone)
    zone.spf("lists.x.org", "v=spf1 ip4:127.0.0.1 -all")
    options = settings(zone, state_sender=state_sender)
    async with running(tmp_path, app, **options) as server:
        for _ in range(2):
            await send(server.port, message(), "talk@example.com", sender="bounce@lists.x.org")
    assert seen(app) == expected
    assert queued(tmp_path) == (
        [] if expected else [{"talk@example.com": "unauthenticated sender"}] * 2
    )


async def test_spooled_mail_is_verified_when_it_is_routed(
    tmp_path: Path, app: str, zone: Zone
) -> None:
    aligned(zone)
    async with running(tmp_path, app, mode="spool", **settings(zone)) as server:
        await send(server.port, message(), "members@example.com")
        (got,) = await until(lambda: seen(app))  # the spool's worker routes it after the 250
    assert got.auth.aligned_domain == "x.org"


def test_without_the_extra_a_clear_error_names_it(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "for name in ('dkim', 'spf', 'authres', 'publicsuffixlist'):\n"
        "    sys.modules[name] = None\n"
        "import mailrouter\n"
        "from mailrouter.config import Settings\n"
        "from mailrouter.inbound.auth import verifier_for\n"
        "assert verifier_for(Settings(auth_policy='off')) is None\n"
        "try:\n"
        "    verifier_for(Settings())\n"
        "except mailrouter.MailRouterError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == (
        'auth_policy = "annotate" needs the sender authentication libraries (dkim): '
        "pip install 'mailrouter[auth]', or set auth_policy = \"off\""
    )


async def test_a_replay_with_the_server_stopped_verifies_too(
    tmp_path: Path, app: str, zone: Zone
) -> None:
    """Mail queued as ``unauthenticated sender`` is verified again when it is replayed."""
    zone.dmarc("x.org", "v=DMARC1; p=none")  # no SPF yet: not aligned
    async with running(tmp_path, app, **settings(zone)) as server:
        await send(server.port, message(), "members@example.com")
        stopped = server.settings
    assert queued(tmp_path) == [{"members@example.com": "unauthenticated sender"}]
    aligned(zone)  # the sender's domain publishes its records; the queue is replayed
    router = build_router(stopped)
    try:
        report = await Operations(stopped, router).replay()
    finally:
        router.close()
    assert (report["replayed"], report["delivered"]) == (1, 1)
    (got,) = seen(app)
    assert got.auth.aligned_domain == "x.org" and queued(tmp_path) == []
