"""The example mailing list over SMTP, end to end, with real verification: a member whose mail
is DKIM-signed by its domain joins and posts; a forged post in that member's name (the same
envelope sender and From:, from the same address) never reaches the list."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, message, publish, sign
from dnszone import Zone
from helpers import serving

from mailrouter.config import Settings
from mailrouter.queue import Queue
from mailrouter.testing import Outbox

ROOT = Path(__file__).resolve().parents[3]
JOE, ANN = "joe@x.org", "ann@y.org"


@pytest.fixture(autouse=True)
def lists_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    import handlers_example.lists

    monkeypatch.setattr(handlers_example.lists, "LISTS_DIR", tmp_path / "lists")


def list_settings(tmp_path: Path, zone: Zone, **overrides: Any) -> Settings:
    (tmp_path / "config").mkdir(exist_ok=True)
    return Settings(
        handlers=("handlers_example.mailinglist",),
        defaults={"host": r"example\.com"},
        port=0,
        config_dir=str(tmp_path / "config"),
        dns_nameservers=(zone.address,),
        dns_timeout=TIMEOUT,
        **overrides,
    )


async def send(port: int, data: bytes, to: str, sender: str = JOE) -> None:
    def talk() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail(sender, [to], data)

    await asyncio.to_thread(talk)


@pytest.fixture
def joe_signs(zone: Zone, rsa_pem: bytes) -> Any:
    """x.org signs Joe's mail; its SPF does not cover this machine; DMARC p=none."""
    publish(zone, "mail", "x.org", rsa_pem)
    zone.spf("x.org", "v=spf1 ip4:192.0.2.25 -all")
    zone.dmarc("x.org", "v=DMARC1; p=none")
    return lambda data: sign(data, "x.org", "mail", rsa_pem)


async def join(port: int, outbox: Outbox, signed: Any) -> None:
    await send(
        port,
        signed(message(to="news-subscribe@example.com", subject="join")),
        "news-subscribe@example.com",
    )
    (confirmation,) = outbox.delivered(to=JOE)
    address = str(confirmation["From"])
    assert address.startswith("news-confirm-")
    await send(port, signed(message(to=address, subject="Re: join")), address)
    assert outbox.delivered(to=JOE, subject="Welcome")


async def test_a_forged_members_post_never_reaches_the_list(
    tmp_path: Path, zone: Zone, outbox: Outbox, joe_signs: Any
) -> None:
    async with serving(list_settings(tmp_path, zone)) as server:
        await join(server.port, outbox, joe_signs)
        outbox.clear()
        await send(server.port, joe_signs(message(subject="real")), "news@example.com")
        (copy,) = outbox.delivered(to=JOE, subject=r"\[news\] real")
        assert copy["Authentication-Results"].startswith("example.com;")
        assert "dmarc=pass" in copy["Authentication-Results"]

        forged = message(subject="forged")  # Joe's envelope and From:, not x.org's signature
        await send(server.port, forged, "news@example.com")
        assert outbox.delivered(subject="forged") == []
    queue = Queue(tmp_path / "run" / "undeliverable")
    (key,) = queue.keys()
    entry = queue.read(key)
    assert entry.message["Subject"] == "forged"
    assert entry.reasons == {"news@example.com": "unauthenticated sender"}


async def test_with_reject_unauthenticated_the_forger_is_refused(
    tmp_path: Path, zone: Zone, outbox: Outbox, joe_signs: Any
) -> None:
    settings = list_settings(tmp_path, zone, reject_unauthenticated=True)
    async with serving(settings) as server:
        await join(server.port, outbox, joe_signs)
        outbox.clear()
        with pytest.raises(smtplib.SMTPDataError) as refused:
            await send(server.port, message(subject="forged"), "news@example.com")
    assert refused.value.smtp_code == 550
    assert outbox.sent == []


async def test_a_forger_cannot_confirm_someone_elses_subscription(
    tmp_path: Path, zone: Zone, outbox: Outbox, joe_signs: Any
) -> None:
    async with serving(list_settings(tmp_path, zone)) as server:
        subscribe = joe_signs(message(to="news-subscribe@example.com", subject="join"))
        await send(server.port, subscribe, "news-subscribe@example.com")
        (confirmation,) = outbox.delivered(to=JOE)
        address = str(confirmation["From"])
        await send(server.port, message(to=address, subject="Re: join"), address)  # unsigned
        assert outbox.delivered(to=JOE, subject="Welcome") == []
    from handlers_example import lists

    assert lists.status("news", JOE) == "pending"
