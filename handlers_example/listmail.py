"""What a mailing list sends: the confirmation, notices to one member, copies of each post.

Everything goes out through ``outbox.send`` (via ``notify`` for the short texts).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Literal

from mailrouter import MailRequest

from .outbox import notify, send

log = logging.getLogger(__name__)

Notice = Literal["welcome", "already", "goodbye"]

_CONFIRM = """\
Someone, probably you, asked to subscribe this address to {list}.
To confirm, reply to this message or write to {confirm}.
If you did not ask, ignore this message.
"""
_HOW = "Post by writing to {list}; leave by writing to {unsubscribe}.\n"
_NOTICES: dict[Notice, tuple[str, str]] = {
    "welcome": ("Welcome to {list}", "You are now a member of {list}.\n" + _HOW),
    "already": ("You are already on {list}", "You are a member of {list}.\n" + _HOW),
    "goodbye": ("Goodbye from {list}", "You have left {list}. Welcome back any time.\n"),
}


def _address(name: str, host: str, suffix: str = "") -> str:
    return f"{name}{suffix}@{host}"


def confirmation(name: str, host: str, to: str, token: str) -> None:
    """Mail the token to ``to``, from the confirm address so that replying confirms."""
    confirm = _address(name, host, f"-confirm-{token}")
    list_address = _address(name, host)
    body = _CONFIRM.format(list=list_address, confirm=confirm)
    notify(to, f"Confirm your subscription to {list_address}", body, sender=confirm)


def notice(name: str, host: str, to: str, kind: Notice) -> None:
    """Tell ``to`` about its membership of list ``name``."""
    subject, body = _NOTICES[kind]
    words = {"list": _address(name, host), "unsubscribe": _address(name, host, "-unsubscribe")}
    notify(to, subject.format(**words), body.format(**words), sender=words["list"])


def distribute(name: str, host: str, post: MailRequest, members: Iterable[str]) -> int:
    """Send a copy of ``post`` to each member, tagged ``[name]`` and with List-* headers.

    Returns how many copies were sent: none for a post carrying this list's own List-Id,
    which is one of our copies coming back (a loop).
    """
    list_id = f"<{name}.{host}>"
    if list_id in (post["List-Id"] or ""):
        log.warning("%r: dropped a post that came back from the list", _address(name, host))
        return 0
    copy = message_from_bytes(post.data, policy=policy.default)
    assert isinstance(copy, EmailMessage)
    subject = " ".join((post["Subject"] or "").split())  # encoded words may hide CR/LF
    tag = f"[{name}]"
    for header in ("Subject", "List-Id", "List-Post", "List-Unsubscribe", "Precedence"):
        del copy[header]
    copy["Subject"] = subject if tag in subject else f"{tag} {subject}".rstrip()
    copy["List-Id"] = list_id
    copy["List-Post"] = f"<mailto:{_address(name, host)}>"
    copy["List-Unsubscribe"] = f"<mailto:{_address(name, host, '-unsubscribe')}>"
    copy["Precedence"] = "list"
    sent = 0
    for member in members:
        send(member, copy)
        sent += 1
    return sent
