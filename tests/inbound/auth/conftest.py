"""Fixtures of the sender authentication tests: a DNS server per test, keys made once per run,
a verifier asking that server, and messages signed by dkimpy."""

from __future__ import annotations

from collections.abc import Iterator
from email.utils import formatdate, make_msgid

import dkim
import pytest
from dnszone import Zone, serving

from mailrouter.inbound.auth.resolver import Resolver
from mailrouter.inbound.auth.verifier import Verifier
from mailrouter.outbound.signing import Signer, dns_record, generate_key

TIMEOUT = 0.5  # seconds per DNS question: what a dropped question costs a test


@pytest.fixture
def zone() -> Iterator[Zone]:
    """A zone, served by a DNS server of its own on 127.0.0.1."""
    with serving(Zone()) as served:
        yield served


@pytest.fixture
def verifier(zone: Zone) -> Verifier:
    return Verifier(Resolver([zone.address], TIMEOUT), time_limit=5 * TIMEOUT)


@pytest.fixture(scope="session")
def rsa_pem() -> bytes:
    return generate_key("rsa", 2048)


@pytest.fixture(scope="session")
def ed25519_pem() -> bytes:
    return generate_key("ed25519")


def publish(zone: Zone, selector: str, domain: str, pem: bytes) -> None:
    """Publish the public key of ``pem`` at ``selector._domainkey.domain``."""
    zone.dkim_key(selector, domain, dns_record(pem))


def message(
    sender: str = "joe@x.org",
    to: str = "news@example.com",
    subject: str = "Hello",
    body: str = "Hi all.\r\n",
    headers: str = "",
) -> bytes:
    """A plain message, CRLF line ends."""
    head = (
        f"{headers}From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain='x.org')}\r\n"
    )
    return (head + "\r\n" + body).encode()


def sign(data: bytes, domain: str, selector: str, pem: bytes) -> bytes:
    """``data`` with a DKIM-Signature of ``domain`` on top, made by dkimpy."""
    return Signer.from_pem(domain, selector, pem).sign(data)


def arc_seal(data: bytes, domain: str, selector: str, pem: bytes, authserv_id: str) -> bytes:
    """``data`` with an ARC set of ``domain`` on top (what a forwarder adds), made by dkimpy;
    the ARC-Authentication-Results come from the top Authentication-Results header."""
    key = Signer.from_pem(domain, selector, pem).key
    headers = dkim.arc_sign(data, selector.encode(), domain.encode(), key, authserv_id.encode())
    return b"".join(headers) + data
