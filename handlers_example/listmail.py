"""What a mailing list sends through ``mailrouter.outbound.sender``: answers, copies of posts.

Answers are automatic replies (``reply``: threaded, ``Auto-Submitted: auto-replied``) to the
envelope sender, the address that joins or leaves. Copies of a post carry the list headers
(RFC 2369, RFC 2919). All of it goes out from the list's bounce address ``NAME-bounces@host``,
with ``relay.send``: the relay the server runs with (in tests, the ``outbox`` fixture). Copies
go with VERP, one per member from ``NAME-bounces+MEMBER@host``, so a bounce names its member.
"""

from __future__ import annotations

from collections.abc import Sequence
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Literal

from mailrouter import MailRequest, reply
from mailrouter.outbound import sender as relay

Answer = Literal["confirm", "welcome", "already", "goodbye"]

_HOW = "Post by writing to {list}; leave by writing to {unsubscribe}.\n"
_ANSWERS: dict[Answer, tuple[str, str]] = {
    "confirm": (
        "Confirm your subscription to {list}",
        "Someone, probably you, asked to subscribe this address to {list}.\n"
        "To confirm, reply to this message or write to {confirm}.\n"
        "If you did not ask, ignore this message.\n",
    ),
    "welcome": ("Welcome to {list}", "You are now a member of {list}.\n" + _HOW),
    "already": ("You are already on {list}", "You are a member of {list}.\n" + _HOW),
    "goodbye": ("Goodbye from {list}", "You have left {list}. Welcome back any time.\n"),
}


def address(name: str, host: str, suffix: str = "") -> str:
    """The address of list ``name`` with ``suffix``: ``news-unsubscribe@example.com``."""
    return f"{name}{suffix}@{host}"


def answer(command: MailRequest, name: str, host: str, kind: Answer, token: str = "") -> None:
    """Answer ``command``, sent to list ``name``, with the ``kind`` text.

    The confirmation comes from the confirm address, so that replying to it confirms.
    """
    words = {
        "list": address(name, host),
        "unsubscribe": address(name, host, "-unsubscribe"),
        "confirm": address(name, host, f"-confirm-{token}"),
    }
    subject, text = _ANSWERS[kind]
    response = reply(
        command,
        text.format(**words),
        sender=words["confirm" if kind == "confirm" else "list"],
        to=command.route_from,
        subject=subject.format(**words),
    )
    if response is not None:  # None for automatic mail, which is never answered
        relay.send(response, sender=address(name, host, "-bounces"))


def distribute(post: MailRequest, name: str, host: str, members: Sequence[str]) -> None:
    """Send a copy of ``post`` to each of ``members`` with its own VERP return path, the
    subject tagged ``[name]``, list headers and the post's Authentication-Results (by ``host``)."""
    results = post.auth.header(host).encode() + b"\r\n" if post.auth is not None else b""
    copy = message_from_bytes(results + post.data, policy=policy.default)  # not post.message
    assert isinstance(copy, EmailMessage)
    subject = " ".join((post["Subject"] or "").split())  # encoded words may hide CR/LF
    tag = f"[{name}]"
    headers = {
        "Subject": subject if tag in subject else f"{tag} {subject}".rstrip(),
        "List-Id": f"<{name}.{host}>",
        "List-Post": f"<mailto:{address(name, host)}>",
        "List-Unsubscribe": f"<mailto:{address(name, host, '-unsubscribe')}>",
        "Precedence": "list",
    }
    for header, value in headers.items():
        del copy[header]
        copy[header] = value
    relay.send(copy, sender=address(name, host, "-bounces"), recipients=members, verp=True)
