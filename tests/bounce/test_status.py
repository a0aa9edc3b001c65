"""RFC 3463 status codes: found in the text around them, classed, described."""

from __future__ import annotations

import pytest

from mailrouter.bounce import Status


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("5.1.1", "5.1.1"),
        ("5.1.1 (bad destination mailbox)", "5.1.1"),
        ("smtp; 550-5.1.1 The email account that you tried to reach", "5.1.1"),
        ("Sorry, no mailbox here by that name. (#5.1.1)", "5.1.1"),
        ("550 5.1.10 RESOLVER.ADR.RecipientNotFound", "5.1.10"),
        ("host mx[192.0.2.25] said: 452 4.2.2 Mailbox full", "4.2.2"),
        ("delivered, 2.0.0 Ok", "2.0.0"),
    ],
)
def test_a_code_is_found_in_what_mtas_write(text: str, code: str) -> None:
    found = Status.find(text)
    assert found is not None and found.code == code == str(found)


@pytest.mark.parametrize(
    "text",
    ["", None, "connect to 4.3.2.1:25: timed out", "version 5.1.1.2", "1.5.1.1", "3.1.1", "5.1"],
)
def test_addresses_versions_and_other_numbers_are_no_code(text: str | None) -> None:
    assert Status.find(text) is None


def test_the_class_says_hard_or_soft() -> None:
    assert Status(5, 1, 1).kind == "hard"
    assert Status(4, 4, 7).kind == "soft"
    assert Status(2, 0, 0).kind is None


def test_a_code_described_in_rfc_3463s_words() -> None:
    assert Status(5, 1, 1).describe() == (
        "5.1.1 Permanent Failure, Addressing Status: Bad destination mailbox address"
    )
    assert (
        Status(4, 2, 2).describe()
        == "4.2.2 Persistent Transient Failure, Mailbox Status: Mailbox full"
    )
    assert Status(5, 7, 26).describe() == "5.7.26 Permanent Failure, Security or Policy Status"
