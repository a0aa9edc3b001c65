"""A mailing list with confirmed subscriptions: one state machine per list and sender.

For a list NAME at the host (the router's ``host`` default):

- ``NAME-subscribe@host`` asks to join: a confirmation token is mailed to the sender.
- ``NAME-confirm-TOKEN@host`` (a reply to the confirmation) makes the sender a member.
- ``NAME@host`` posts: a member's post goes to every member. Anyone else is refused with
  ``550 5.7.1`` during the SMTP session, so their own server tells them; we send nothing back.
- ``NAME-unsubscribe@host`` leaves the list (or cancels a pending subscription).
- ``NAME-bounces@host`` sends the answers, and copies of posts go with VERP: to each member
  from ``NAME-bounces+MEMBER@host`` (``joe@x.org`` as ``joe=x.org``), so a bounce (RFC 3464 or
  another MTA's notice) names its member. A member's second hard bounce unsubscribes them; a
  soft bounce is logged; anything else there (an auto-reply) is dropped. Bounces come from the
  null sender, unauthenticated: these routes are ``@stateless``, not ``@authenticated``.

Answers and copies of posts go out through ``mailrouter.outbound.sender`` (see ``listmail.py``).

Confirming and posting are ``@authenticated``: they run only for a sender whose From: domain
passes DMARC, so a forged member's post never reaches the list (it waits in the undeliverable
queue as ``unauthenticated sender``). That holds for everything a pending or member sender
does, and for a state the list file implies too: ``resume`` refuses to move an unauthenticated
sender into one.

States: START -> CONFIRMING -> POSTING -> START, kept per list by ``list_state_key``, so one
sender can be a member of one list and confirming another. The list file (``lists.py``) is the
record of membership: a state it contradicts (a lost state store, an edited file, ERROR after a
crash) hands the message to the state it implies. Bounces, automatic replies and list mail
(``is_automatic``, RFC 3834) are dropped unanswered: a copy of a post that comes back is no post.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from mailrouter import (
    MailRequest,
    SMTPError,
    authenticated,
    bounce_to,
    route,
    route_like,
    state_key_generator,
    stateless,
)
from mailrouter.message import normalize_address
from mailrouter.outbound import verp
from mailrouter.outbound.response import is_automatic

from . import listmail, lists

log = logging.getLogger(__name__)

State = Callable[..., "State | None"]

#: the hard bounces that take a member off the list
HARD_BOUNCES = 2


@state_key_generator
def list_state_key(module_name: str, message: MailRequest) -> str:
    """Keep each list's states apart: ``handlers_example.mailinglist:NAME``."""
    local = normalize_address(message.recipient).rpartition("@")[0]
    return f"{module_name}:{local.split('-', 1)[0]}"


@dataclass(frozen=True)
class _Ask:
    """A message to a list address and what its route captured."""

    message: MailRequest
    list: str
    host: str
    action: str | None
    token: str | None

    @property
    def command(self) -> str:
        """``post``, ``subscribe``, ``unsubscribe`` or ``confirm``."""
        return "confirm" if self.token is not None else self.action or "post"

    @property
    def sender(self) -> str:
        return self.message.route_from

    def address(self, suffix: str = "") -> str:
        return listmail.address(self.list, self.host, suffix)

    def answer(self, kind: listmail.Answer, token: str = "") -> None:
        listmail.answer(self.message, self.list, self.host, kind, token)

    def resume(self, state: State) -> State:
        """Handle this message in ``state`` instead; stay there unless it moves on. Only an
        authenticated sender is moved into the @authenticated states."""
        auth = self.message.auth
        if state is not START and (auth is None or auth.aligned_domain is None):
            raise SMTPError(550, f"5.7.1 Sender not authenticated for {self.address()}")
        return state(self.message, self.list, self.action, self.token, self.host) or state


ANY_STATUS = "any"  # a state for a sender whatever the list file says


def _list_state(status: str | None) -> Callable[[Callable[[_Ask], State | None]], State]:
    """A list state from ``step(ask)``, with the signature the routes capture. Automatic mail
    (a bounce, an auto-reply, list mail) gets no answer, and a sender whose status in the list
    file is not ``status`` (None: not on the list) is resumed in the state the file implies."""

    def make(step: Callable[[_Ask], State | None]) -> State:
        def handler(
            message: MailRequest,
            list: str | None = None,
            action: str | None = None,
            token: str | None = None,
            host: str | None = None,
        ) -> State | None:
            if is_automatic(message):
                return None
            assert list is not None and host is not None, "every list route captures them"
            ask = _Ask(message, list, host, action, token)
            if status != ANY_STATUS and lists.status(ask.list, ask.sender) != status:
                return _recover(ask)
            return step(ask)

        handler.__name__ = handler.__qualname__ = step.__name__
        handler.__doc__ = step.__doc__
        return handler

    return make


def _recover(ask: _Ask) -> State:
    """Continue in the state the list file implies for the sender."""
    found = lists.status(ask.list, ask.sender)
    state = POSTING if found == "member" else CONFIRMING if found == "pending" else START
    log.info("%r: resuming %r in %s", ask.address(), ask.sender, state.__name__)
    return ask.resume(state)


@route("(list)@(host)", list=lists.NAME)
@route("(list)-(action)@(host)", list=lists.NAME, action="subscribe|unsubscribe")
@route("(list)-confirm-(token)@(host)", list=lists.NAME, token="(?a:[a-z0-9]+)")
@_list_state(None)
def START(ask: _Ask) -> State | None:
    """Not on the list: a subscription request mails a confirmation; the rest is refused."""
    if ask.command == "confirm":
        raise SMTPError(550, f"5.7.1 No subscription to {ask.address()} awaits confirmation")
    if ask.command != "subscribe":
        raise SMTPError(
            550,
            f"5.7.1 You are not a member of {ask.address()}; "
            f"write to {ask.address('-subscribe')} to join",
        )
    ask.answer("confirm", lists.request(ask.list, ask.sender))
    log.info("%r: %r asked to join", ask.address(), ask.sender)
    return CONFIRMING


@route_like(START)
@authenticated
@_list_state("pending")
def CONFIRMING(ask: _Ask) -> State | None:
    """Waiting for the token: the right one makes a member; subscribing again resends it."""
    if ask.command == "subscribe":
        ask.answer("confirm", lists.request(ask.list, ask.sender))
        return None
    if ask.command == "unsubscribe":
        lists.remove(ask.list, ask.sender)
        log.info("%r: %r cancelled the subscription", ask.address(), ask.sender)
        return START
    if ask.command == "post":
        raise SMTPError(550, f"5.7.1 Confirm your subscription to {ask.address()} first")
    if not lists.confirm(ask.list, ask.sender, ask.token or ""):
        raise SMTPError(550, f"5.7.1 Wrong confirmation token for {ask.address()}")
    log.info("%r: %r is now a member", ask.address(), ask.sender)
    ask.answer("welcome")
    return POSTING


@route_like(START)
@authenticated
@_list_state("member")
def POSTING(ask: _Ask) -> State | None:
    """A member: posts go to every member; unsubscribing leaves the list."""
    if ask.command == "post":
        members = sorted(lists.read(ask.list).members)
        listmail.distribute(ask.message, ask.list, ask.host, members)
        log.info("%r: post from %r sent to %d members", ask.address(), ask.sender, len(members))
    elif ask.command == "subscribe":
        ask.answer("already")
    elif ask.command == "unsubscribe":
        lists.remove(ask.list, ask.sender)
        log.info("%r: %r left", ask.address(), ask.sender)
        ask.answer("goodbye")
        return START
    return None  # a confirmation sent twice: nothing more to do


@route_like(START)
@_list_state(ANY_STATUS)
def ERROR(ask: _Ask) -> State | None:
    """A handler failed for this sender earlier: carry on from what the list file says."""
    return _recover(ask)


def _bounced(message: MailRequest, member: str | None) -> tuple[str, ...]:
    """Whom a bounce is about: the member its VERP address encodes, else whom it reports."""
    if member is None:
        assert message.bounce is not None, "@bounce_to hands over bounces only"
        return message.bounce.addresses
    address = verp.DEFAULT.member(member)
    return (address,) if address else ()


def hard_bounce(
    message: MailRequest,
    list: str | None = None,
    member: str | None = None,
    host: str | None = None,
) -> None:
    """Count a permanent failure against each member it names; the ``HARD_BOUNCES``-th takes
    the member off the list (the list file then resumes the member's next mail in START)."""
    assert list is not None and host is not None and message.bounce is not None
    name, why = listmail.address(list, host), message.bounce.diagnostic or message.bounce.status
    for address in _bounced(message, member):
        count = lists.bounced(list, address, HARD_BOUNCES)
        if not count:
            log.info("%r: a hard bounce for %r, no member: %s", name, address, why)
        elif count < HARD_BOUNCES:
            log.warning("%r: hard bounce %d for %r: %s", name, count, address, why)
        else:
            log.warning("%r: %r unsubscribed after %d hard bounces", name, address, count)


def soft_bounce(
    message: MailRequest,
    list: str | None = None,
    member: str | None = None,
    host: str | None = None,
) -> None:
    """Log a transient failure (a full mailbox, a host down): the member stays."""
    assert message.bounce is not None, "@bounce_to hands over bounces only"
    addresses = _bounced(message, member)
    log.info("%r: soft bounce for %r: %s", f"{list}@{host}", addresses, message.bounce.status)


@route("(list)-bounces@(host)", list=lists.NAME)
@route(r"(list)-bounces\+(member)@(host)", list=lists.NAME, member=verp.MEMBER)
@stateless
@bounce_to(soft=soft_bounce, hard=hard_bounce)
def BOUNCES(
    message: MailRequest,
    list: str | None = None,
    member: str | None = None,
    host: str | None = None,
) -> None:
    """The list's return paths: bounces go to ``hard_bounce`` or ``soft_bounce``; anything
    else (an auto-reply to a copy of a post) is dropped."""
    log.debug(
        "%r: dropped %r from %r, no bounce", f"{list}@{host}", message["Subject"], message.sender
    )
