"""Outgoing DKIM: what the relay sends is signed, and the signature verifies against the key
published in DNS; a forwarded message carries mailrouter's Authentication-Results; the
``dkim-keygen`` command writes the key and the record to publish."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import message, publish
from dnszone import Zone
from helpers import Sink, sink_server

from mailrouter import MailRequest, MailResponse
from mailrouter.cli import main
from mailrouter.config import ConfigError, Settings
from mailrouter.inbound.auth.verifier import Verifier
from mailrouter.outbound.sender import ConnectionOptions, Relay
from mailrouter.outbound.signing import Signer, signer_for, write_key


async def relayed(relay_signer: Signer | None, msg: MailResponse | MailRequest) -> bytes:
    """What a relay with ``relay_signer`` hands to a loopback smarthost for ``msg``."""
    sink = Sink()
    async with sink_server(sink) as port:
        relay = Relay(
            ConnectionOptions("127.0.0.1", port), signer=relay_signer, authserv_id="mr.x.org"
        )
        result = await relay.send_async(msg)
    assert result.delivered, result
    (received,) = sink.received
    return received.data


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
async def test_a_signed_reply_verifies_with_the_published_key(
    zone: Zone, verifier: Verifier, rsa_pem: bytes, ed25519_pem: bytes, algorithm: str
) -> None:
    pem = rsa_pem if algorithm == "rsa" else ed25519_pem
    publish(zone, "out", "lists.x.org", pem)
    zone.spf("lists.x.org", "v=spf1 -all")  # no SPF help: DKIM alone must carry DMARC
    zone.dmarc("lists.x.org", "v=DMARC1; p=reject")
    reply = MailResponse(
        to="ann@y.org", sender="news@lists.x.org", subject="Welcome", text="You are in.\n"
    )
    data = await relayed(Signer.from_pem("lists.x.org", "out", pem), reply)
    assert data.startswith(b"DKIM-Signature: v=1; a=" + (b"rsa" if algorithm == "rsa" else b"ed"))
    request = MailRequest(("127.0.0.1", 1), "news@lists.x.org", ["ann@y.org"], data)
    auth = await verifier.verify(request)
    assert [(d.result, d.domain, d.selector) for d in auth.dkim] == [("pass", "lists.x.org", "out")]
    assert auth.dmarc.result == "pass" and auth.aligned_domain == "lists.x.org"


async def test_a_forwarded_message_carries_the_authentication_results(
    zone: Zone, verifier: Verifier
) -> None:
    zone.spf("x.org", "v=spf1 ip4:127.0.0.1 -all")
    original = message()
    request = MailRequest(("127.0.0.1", 1), "joe@x.org", ["ann@y.org"], original)
    request.auth = auth = await verifier.verify(request)
    data = await relayed(None, request)
    header = auth.header("mr.x.org").encode()
    assert data == header + b"\r\n" + original
    assert header.startswith(b"Authentication-Results: mr.x.org;\r\n\tspf=pass ")
    assert request.data == original


def test_dkim_keygen_writes_a_private_key_and_prints_its_record(tmp_path: Path, zone: Zone) -> None:
    key = tmp_path / "keys" / "s1.example.com.key"
    args = ["dkim-keygen", "--selector", "s1", "--domain", "Example.COM", "--key-file", str(key)]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    record = next(line for line in done.output.splitlines() if " IN TXT " in line)
    assert record.startswith('s1._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=')
    assert f'dkim_key_file = "{key}"' in done.output
    settings = Settings(dkim_domain="example.com", dkim_selector="s1", dkim_key_file=str(key))
    signer = signer_for(settings)
    assert signer is not None and signer.algorithm == "rsa"

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1
    assert again.output == f"Error: {key} exists: not replacing a key (remove it first)\n"


async def test_the_keygen_record_verifies_what_the_key_signs(
    tmp_path: Path, zone: Zone, verifier: Verifier
) -> None:
    key = tmp_path / "ed.key"
    args = [
        "dkim-keygen",
        "--selector",
        "ed",
        "--domain",
        "x.org",
        "--key-file",
        str(key),
        "--algorithm",
        "ed25519",
    ]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    line = next(line for line in done.output.splitlines() if " IN TXT " in line)
    zone.dkim_key("ed", "x.org", "".join(line.split('"')[1::2]))
    signer = signer_for(Settings(dkim_domain="x.org", dkim_selector="ed", dkim_key_file=str(key)))
    assert signer is not None
    auth = await verifier.verify(MailRequest(None, "", ["a@b.org"], signer.sign(message())))
    assert [(d.result, d.selector) for d in auth.dkim] == [("pass", "ed")]


def test_the_dkim_settings_go_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DKIM signing needs dkim_selector and dkim_key_file"):
        signer_for(Settings(dkim_domain="x.org"))
    write_key(tmp_path / "bad.key", b"not a key")
    bad = Settings(dkim_domain="x.org", dkim_selector="s", dkim_key_file=str(tmp_path / "bad.key"))
    with pytest.raises(ConfigError, match="setting 'dkim_key_file': cannot read a key from"):
        signer_for(bad)
    assert signer_for(Settings()) is None
