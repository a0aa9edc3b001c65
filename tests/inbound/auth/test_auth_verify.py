"""SPF, DKIM, DMARC and ARC verified for real: a DNS server on 127.0.0.1 answers from the
zone each test writes, keys are made per run, messages are signed by dkimpy."""

from __future__ import annotations

import asyncio

import pytest
from conftest import arc_seal, message, publish, sign
from dnszone import Zone, silent_port

from mailrouter import MailRequest
from mailrouter.inbound.auth import AuthResults
from mailrouter.inbound.auth.resolver import Resolver
from mailrouter.inbound.auth.verifier import THREAD_SIZE, Verifier

V4 = ("127.0.0.1", 40000)
V6 = ("::1", 40000, 0, 0)


async def verify(
    verifier: Verifier, data: bytes, sender: str = "joe@x.org", peer: object = V4, helo: str = ""
) -> AuthResults:
    return await verifier.verify(MailRequest(peer, sender, ["news@example.com"], data), helo)


# -- DKIM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
async def test_a_good_signature_passes(
    zone: Zone, verifier: Verifier, rsa_pem: bytes, ed25519_pem: bytes, algorithm: str
) -> None:
    pem = rsa_pem if algorithm == "rsa" else ed25519_pem
    publish(zone, "sel", "x.org", pem)
    auth = await verify(verifier, sign(message(), "x.org", "sel", pem))
    ((result),) = auth.dkim
    assert (result.result, result.domain, result.selector) == ("pass", "x.org", "sel")
    assert "dkim=pass" in auth.header("mx.test") and "header.s=sel" in auth.header("mx.test")


async def test_a_body_changed_after_signing_fails(
    zone: Zone, verifier: Verifier, rsa_pem: bytes
) -> None:
    publish(zone, "sel", "x.org", rsa_pem)
    signed = sign(message(body="Pay 10 euros.\r\n"), "x.org", "sel", rsa_pem)
    auth = await verify(verifier, signed.replace(b"10 euros", b"99 euros"))
    ((result),) = auth.dkim
    assert (result.result, result.reason) == ("fail", "body hash mismatch")


async def test_a_header_changed_after_signing_fails(
    zone: Zone, verifier: Verifier, rsa_pem: bytes
) -> None:
    publish(zone, "sel", "x.org", rsa_pem)
    signed = sign(message(subject="Invoice"), "x.org", "sel", rsa_pem)
    auth = await verify(verifier, signed.replace(b"Subject: Invoice", b"Subject: Urgent"))
    ((result),) = auth.dkim
    assert (result.result, result.reason) == ("fail", "signature did not verify")


async def test_no_signature_is_none(zone: Zone, verifier: Verifier) -> None:
    auth = await verify(verifier, message())
    assert auth.dkim == ()
    assert "dkim=none" in auth.header("mx.test")


async def test_a_missing_key_is_a_permerror(zone: Zone, verifier: Verifier, rsa_pem: bytes) -> None:
    auth = await verify(verifier, sign(message(), "x.org", "gone", rsa_pem))
    ((result),) = auth.dkim
    assert result.result == "permerror"
    assert result.reason == "no key at gone._domainkey.x.org"


async def test_a_dns_timeout_is_a_temperror(zone: Zone, verifier: Verifier, rsa_pem: bytes) -> None:
    zone.drop("sel._domainkey.x.org")
    auth = await verify(verifier, sign(message(), "x.org", "sel", rsa_pem))
    ((result),) = auth.dkim
    assert (result.result, result.reason) == ("temperror", "key sel._domainkey.x.org: DNS timeout")


async def test_every_signature_gets_a_result(
    zone: Zone, verifier: Verifier, rsa_pem: bytes, ed25519_pem: bytes
) -> None:
    publish(zone, "a", "x.org", rsa_pem)
    publish(zone, "b", "list.example", ed25519_pem)
    signed = sign(sign(message(), "x.org", "a", rsa_pem), "list.example", "b", ed25519_pem)
    auth = await verify(verifier, signed)
    assert [(r.domain, r.selector, r.result) for r in auth.dkim] == [
        ("list.example", "b", "pass"),
        ("x.org", "a", "pass"),
    ]


# -- SPF --------------------------------------------------------------------------------------

SPF_CASES = [
    ("v=spf1 ip4:127.0.0.1 ip6:::1 -all", "pass"),
    ("v=spf1 ip4:192.0.2.1 ip6:2001:db8::1 -all", "fail"),
    ("v=spf1 ip4:192.0.2.1 ~all", "softfail"),
    ("v=spf1 ?all", "neutral"),
    (None, "none"),
]


@pytest.mark.parametrize("peer", [V4, V6], ids=["127.0.0.1", "::1"])
@pytest.mark.parametrize(("record", "expected"), SPF_CASES)
async def test_spf_of_the_mail_from_domain(
    zone: Zone, verifier: Verifier, peer: object, record: str | None, expected: str
) -> None:
    if record is not None:
        zone.spf("x.org", record)
    auth = await verify(verifier, message(), peer=peer)
    assert (auth.spf.result, auth.spf.domain, auth.spf.scope) == (expected, "x.org", "mailfrom")
    assert f"spf={expected}" in auth.header("mx.test")


async def test_spf_follows_includes_and_a_mechanisms(zone: Zone, verifier: Verifier) -> None:
    zone.spf("x.org", "v=spf1 include:_spf.mailhost.example -all")
    zone.spf("_spf.mailhost.example", "v=spf1 a:out.mailhost.example mx -all")
    zone.a("out.mailhost.example", "127.0.0.1")
    auth = await verify(verifier, message())
    assert auth.spf.result == "pass"
    assert ("out.mailhost.example", "A") in zone.questions


async def test_the_null_sender_is_checked_by_its_helo_name(zone: Zone, verifier: Verifier) -> None:
    zone.spf("mta.x.org", "v=spf1 ip4:127.0.0.1 -all")
    auth = await verify(verifier, message(), sender="", helo="mta.x.org")
    assert (auth.spf.result, auth.spf.domain, auth.spf.scope) == ("pass", "mta.x.org", "helo")
    assert "smtp.helo=mta.x.org" in auth.header("mx.test")


async def test_a_broken_spf_record_is_a_permerror(zone: Zone, verifier: Verifier) -> None:
    zone.spf("x.org", "v=spf1 ip4:127.0.0.1 bogus:thing -all")
    auth = await verify(verifier, message())
    assert auth.spf.result == "permerror"


# -- DMARC ------------------------------------------------------------------------------------


async def test_dmarc_passes_by_spf_alignment_alone(zone: Zone, verifier: Verifier) -> None:
    zone.spf("mail.x.org", "v=spf1 ip4:127.0.0.1 -all")
    zone.dmarc("x.org", "v=DMARC1; p=reject")
    auth = await verify(verifier, message(), sender="bounces@mail.x.org")
    assert auth.dkim == () and auth.spf.result == "pass"
    assert (auth.dmarc.result, auth.dmarc.reason) == ("pass", "SPF aligned")
    assert (auth.dmarc.policy, auth.dmarc.disposition) == ("reject", "none")
    assert auth.aligned_domain == "x.org"


async def test_dmarc_passes_by_dkim_alignment_alone(
    zone: Zone, verifier: Verifier, rsa_pem: bytes
) -> None:
    publish(zone, "sel", "x.org", rsa_pem)
    zone.dmarc("x.org", "v=DMARC1; p=reject")
    zone.spf("forwarder.example", "v=spf1 ip4:192.0.2.1 -all")
    signed = sign(message(), "x.org", "sel", rsa_pem)
    auth = await verify(verifier, signed, sender="fwd@forwarder.example")
    assert auth.spf.result == "fail"
    assert (auth.dmarc.result, auth.dmarc.reason) == ("pass", "DKIM aligned")
    assert auth.aligned_domain == "x.org"


async def test_strict_alignment_wants_the_same_domain(
    zone: Zone, verifier: Verifier, rsa_pem: bytes
) -> None:
    publish(zone, "sel", "mail.x.org", rsa_pem)
    zone.dmarc("x.org", "v=DMARC1; p=quarantine; adkim=s")
    auth = await verify(verifier, sign(message(), "mail.x.org", "sel", rsa_pem))
    assert auth.dkim[0].result == "pass"
    assert (auth.dmarc.result, auth.dmarc.disposition) == ("fail", "quarantine")


@pytest.mark.parametrize("policy", ["reject", "quarantine", "none"])
async def test_a_dmarc_failure_takes_the_policy_as_disposition(
    zone: Zone, verifier: Verifier, policy: str
) -> None:
    zone.spf("x.org", "v=spf1 ip4:192.0.2.1 -all")
    zone.dmarc("x.org", f"v=DMARC1; p={policy}; rua=mailto:d@x.org")
    auth = await verify(verifier, message())
    assert (auth.dmarc.result, auth.dmarc.policy, auth.dmarc.disposition) == (
        "fail",
        policy,
        policy,
    )
    assert auth.aligned_domain is None
    assert f"dmarc=fail (p={policy} dis={policy}) " in auth.header("mx.test")


async def test_a_subdomain_takes_the_organizational_policy(zone: Zone, verifier: Verifier) -> None:
    zone.dmarc("x.org", "v=DMARC1; p=none; sp=reject")
    auth = await verify(verifier, message(sender="joe@eu.x.org"), sender="joe@eu.x.org")
    assert (auth.dmarc.domain, auth.dmarc.policy, auth.dmarc.disposition) == (
        "eu.x.org",
        "reject",
        "reject",
    )
    assert ("_dmarc.eu.x.org", "TXT") in zone.questions


async def test_a_valid_signature_of_another_domain_does_not_align(
    zone: Zone, verifier: Verifier, rsa_pem: bytes
) -> None:
    publish(zone, "sel", "evil.example", rsa_pem)
    zone.spf("evil.example", "v=spf1 ip4:127.0.0.1 -all")
    zone.dmarc("x.org", "v=DMARC1; p=reject")
    forged = sign(message(sender="joe@x.org"), "evil.example", "sel", rsa_pem)
    auth = await verify(verifier, forged, sender="spam@evil.example")
    assert auth.dkim[0].result == "pass" and auth.spf.result == "pass"
    assert (auth.dmarc.result, auth.dmarc.disposition) == ("fail", "reject")
    assert auth.aligned_domain is None


async def test_no_dmarc_record_is_none(zone: Zone, verifier: Verifier) -> None:
    zone.spf("x.org", "v=spf1 ip4:127.0.0.1 -all")
    auth = await verify(verifier, message())
    assert (auth.dmarc.result, auth.dmarc.policy, auth.aligned_domain) == ("none", None, None)


async def test_a_dns_failure_of_an_aligned_check_is_a_temperror(
    zone: Zone, verifier: Verifier, rsa_pem: bytes
) -> None:
    zone.dmarc("x.org", "v=DMARC1; p=reject")
    zone.drop("sel._domainkey.x.org")
    auth = await verify(verifier, sign(message(), "x.org", "sel", rsa_pem))
    assert (auth.dmarc.result, auth.dmarc.disposition) == ("temperror", "none")


async def test_two_from_addresses_are_a_permerror(zone: Zone, verifier: Verifier) -> None:
    auth = await verify(verifier, message(sender="joe@x.org, ann@y.org"))
    assert auth.dmarc.result == "permerror" and auth.aligned_domain is None


# -- ARC --------------------------------------------------------------------------------------


async def test_an_arc_chain_from_a_forwarder_passes_and_a_broken_one_fails(
    zone: Zone, verifier: Verifier, rsa_pem: bytes
) -> None:
    publish(zone, "sel", "x.org", rsa_pem)
    publish(zone, "arc", "forwarder.example", rsa_pem)
    original = sign(message(body="Original text.\r\n"), "x.org", "sel", rsa_pem)
    verified = b"Authentication-Results: forwarder.example; dkim=pass header.d=x.org\r\n"
    sealed = arc_seal(verified + original, "forwarder.example", "arc", rsa_pem, "forwarder.example")
    auth = await verify(verifier, sealed)
    assert (auth.arc.result, auth.arc.instances) == ("pass", 1)
    assert "arc=pass" in auth.header("mx.test")

    broken = await verify(verifier, sealed.replace(b"Subject: Hello", b"Subject: Changed"))
    assert broken.arc.result == "fail"
    assert (await verify(verifier, original)).arc.result == "none"


async def test_a_big_signed_message_is_verified_while_the_loop_serves(
    zone: Zone, verifier: Verifier, rsa_pem: bytes
) -> None:
    publish(zone, "sel", "x.org", rsa_pem)
    small = sign(message(), "x.org", "sel", rsa_pem)
    line = "A line of a long message.\r\n"
    big = sign(message(body=line * (4 * THREAD_SIZE // len(line))), "x.org", "sel", rsa_pem)
    await verify(verifier, big)  # the answers are cached now: no DNS question below waits
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        before = ticks
        assert (await verify(verifier, small)).dkim[0].result == "pass"
        assert ticks == before  # a small message: on the loop, nothing to wait for
        assert (await verify(verifier, big)).dkim[0].result == "pass"
        assert ticks > before  # a big one: in a thread, while the loop ran the ticker
    finally:
        ticker.cancel()


# -- the resolver -----------------------------------------------------------------------------


async def test_answers_and_absences_are_cached_for_their_ttl(
    zone: Zone, verifier: Verifier, rsa_pem: bytes
) -> None:
    publish(zone, "sel", "x.org", rsa_pem)
    zone.spf("x.org", "v=spf1 ip4:127.0.0.1 -all")
    data = sign(message(), "x.org", "sel", rsa_pem)
    first = await verify(verifier, data)
    asked = len(zone.questions)
    assert asked >= 3  # SPF, the key, _dmarc.x.org (none: cached by the SOA's TTL)
    assert await verify(verifier, data) == first
    assert len(zone.questions) == asked


async def test_an_spf_result_is_kept_while_the_answers_it_was_made_from_are(
    zone: Zone, verifier: Verifier
) -> None:
    zone.spf("x.org", "v=spf1 include:_spf.mailhost.example -all")
    zone.txt("_spf.mailhost.example", "v=spf1 ip4:127.0.0.1 -all", ttl=1)
    first = await verify(verifier, message())
    assert first.spf.result == "pass"
    assert (await verify(verifier, message())).spf is first.spf  # kept, not evaluated again
    other = await verify(verifier, message(), sender="ann@x.org")
    assert other.spf.identity == "ann@x.org"  # another MAIL FROM: a result of its own
    del zone.records["_spf.mailhost.example."]
    zone.txt("_spf.mailhost.example", "v=spf1 -all", ttl=1)
    await asyncio.sleep(1.2)  # the include's answer expires: so does the result
    assert (await verify(verifier, message())).spf.result == "fail"


async def test_a_failed_question_is_not_asked_again_at_once(zone: Zone, verifier: Verifier) -> None:
    zone.drop("x.org")
    first = await verify(verifier, message())
    assert (first.spf.result, first.spf.reason) == (
        "temperror",
        "SPF Temporary Error: DNS timeout for x.org TXT",
    )
    asked = zone.questions.count(("x.org", "TXT"))
    assert (await verify(verifier, message())).spf.result == "temperror"
    assert zone.questions.count(("x.org", "TXT")) == asked


async def test_without_an_answering_nameserver_mail_gets_temperrors(zone: Zone) -> None:
    verifier = Verifier(Resolver([f"127.0.0.1:{silent_port()}"], 0.3), time_limit=1.5)
    auth = await verify(verifier, message())
    assert auth.spf.result == "temperror" and auth.dmarc.result == "temperror"
