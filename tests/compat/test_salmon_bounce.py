"""compat.salmon's BounceAnalyzer on failure notices Salmon's header scoring never knew
(mailrouter's reading, flufl.bounce's detectors), and its bounce_to in Salmon's router."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mailrouter.compat.salmon.mail import MailRequest
from mailrouter.compat.salmon.routing import Router

SAMPLES = Path(__file__).parents[1] / "bounce" / "samples"

APP = """
from mailrouter.compat.salmon.bounce import bounce_to
from mailrouter.compat.salmon.routing import route

seen = []


def SOFT(message):
    seen.append(("soft", message.bounce.final_recipient))
    return START


def HARD(message):
    seen.append(("hard", message.bounce.final_recipient))
    return START


@route("(list)-bounces@(host)", list="[a-z]+", host=".+")
@bounce_to(soft=SOFT, hard=HARD)
def START(message, list=None, host=None):
    seen.append(("mail", list))
"""


def salmon(name: str) -> MailRequest:
    return MailRequest(None, None, None, (SAMPLES / f"{name}.eml").read_text(encoding="utf-8"))


def test_a_plain_text_failure_notice_analysed() -> None:
    exim = salmon("exim-plain")
    assert exim.is_bounce() and exim.bounce.is_hard()
    assert exim.bounce.primary_status == (5, "Permanent Failure")
    assert exim.bounce.combined_status == (21, "Mailbox disabled, not accepting messages")
    assert exim.bounce.final_recipient == "quit@example.net"
    assert exim.bounce.report is None  # no delivery-status part in it


def test_a_notice_without_a_code_is_hard_by_its_kind() -> None:
    legacy = salmon("exchange-legacy")
    assert legacy.is_bounce() and legacy.bounce.is_hard()
    assert legacy.bounce.primary_status == (5, "Permanent Failure")
    assert legacy.bounce.secondary_status == (None, None)
    assert legacy.bounce.error_for_humans() == "Permanent Failure"


def test_a_vacation_reply_is_no_bounce() -> None:
    vacation = salmon("vacation")
    assert not vacation.is_bounce() and vacation.bounce.score == 0.0


def test_bounce_to_in_salmons_router(make_module: Callable[..., str]) -> None:
    name = make_module(APP)
    Router.load([name])
    try:
        Router.deliver(salmon("postfix-delayed"))
        Router.deliver(salmon("postfix-user-unknown"))
        Router.deliver(MailRequest(None, "joe@example.org", "news-bounces@lists.example.com", "hi"))
        seen = __import__(name).seen
        assert seen == [
            ("soft", "slow@example.net"),
            ("hard", "gone.member@example.net"),
            ("mail", "news"),
        ]
    finally:
        Router.clear_routes()
        Router.clear_states()
        Router.HANDLERS.clear()
