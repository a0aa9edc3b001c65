"""Which messages are bounces: delivery status notifications, and the other formats MTAs send.

A DSN (see ``report.py``) is always read as one. Any other message is looked at only when a
mail system sent it (the null sender, or From: MAILER-DAEMON or postmaster) and it is not an
auto-reply (``X-Autoreply``, ``Precedence: auto_reply``, a vacation subject): then
flufl.bounce's detectors (Mailman's: Exim, qmail, Exchange, Yahoo and a dozen more) find the
failed addresses, when it is installed (``mailrouter[bounces]``). ``Auto-Submitted:
auto-replied`` decides nothing either way: vacation replies and Postfix's and Exim's bounces
all carry it.
"""

from __future__ import annotations

import itertools
import logging
import re
from email.message import Message
from email.utils import getaddresses

from mailrouter.bounce.report import (
    DELAYED,
    FAILED,
    Bounce,
    BouncedRecipient,
    from_report,
    is_delivery_report,
    returned_message,
)
from mailrouter.bounce.status import Status

log = logging.getLogger(__name__)

_AUTO_REPLY_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponder")
_VACATION = re.compile(
    r"\s*(out of (the )?office|away from (the )?office|on vacation|vacation|auto:"
    r"|auto(matic)?[- ]?(reply|response|antwort)|abwesenheit|absence"
    r"|r[ée]ponse automatique|respuesta autom[aá]tica|risposta automatica)",
    re.IGNORECASE,
)
_MAIL_SYSTEMS = frozenset({"mailer-daemon", "mailerdaemon", "mail-daemon", "postmaster"})
_CONTEXT_LINES = 6  # lines from the one naming a failed address that may explain the failure

# flufl.bounce logs every detector it runs at INFO; that is noise in a mail server's log
_flufl_log = logging.getLogger("flufl.bounce")
if _flufl_log.level == logging.NOTSET:
    _flufl_log.setLevel(logging.WARNING)


def read_bounce(message: Message, sender: str) -> Bounce | None:
    """The bounce ``message`` (from envelope sender ``sender``) is, or None if it is none.

    Never raises: a message too broken to read is no bounce (and a warning is logged).
    """
    try:
        if is_delivery_report(message):
            return from_report(message)
        if not from_mail_system(message, sender) or is_auto_reply(message):
            return None
        return detected(message)
    except Exception:
        log.warning("cannot read the bounce in %r", message.get("Message-ID"), exc_info=True)
        return None


def is_auto_reply(message: Message) -> bool:
    """Whether ``message`` says it is an auto-reply (a vacation notice, an autoresponder)."""
    if any(message.get(name) is not None for name in _AUTO_REPLY_HEADERS):
        return True
    if str(message.get("Precedence", "")).strip().lower() == "auto_reply":
        return True
    return _VACATION.match(str(message.get("Subject", ""))) is not None


def from_mail_system(message: Message, sender: str) -> bool:
    """Whether a mail system sent ``message``: the null sender (RFC 5321 section 4.5.5), or a
    From or Sender such as ``MAILER-DAEMON@host`` or ``postmaster@host``."""
    if sender.strip() in ("", "<>"):
        return True
    heads = [str(value) for name in ("From", "Sender") for value in message.get_all(name, [])]
    for _, address in getaddresses(heads):
        local = address.rpartition("@")[0].casefold()
        if local in _MAIL_SYSTEMS or local.startswith("mailer-daemon"):
            return True
    return False


def detected(message: Message) -> Bounce | None:
    """The bounce flufl.bounce's detectors find in ``message``; None when they find no failed
    address (or flufl.bounce is not installed)."""
    try:
        from flufl.bounce import all_failures
    except ImportError:
        return None
    if not any(address for _, address in getaddresses(message.get_all("From", []))):
        return None  # no failure notice lacks a From (and one of the detectors fails on it)
    temporary, permanent = all_failures(message)
    failed = sorted(address.decode("ascii").casefold() for address in permanent)
    delayed = sorted({a.decode("ascii").casefold() for a in temporary} - set(failed))
    if not failed and not delayed:
        return None
    text = _text(message)
    single = len(failed) + len(delayed) == 1
    recipients = [_explained(a, FAILED, text, single) for a in failed]
    recipients += [_explained(a, DELAYED, text, single) for a in delayed]
    parts = message.get_payload() if message.is_multipart() else []
    original = returned_message([p for p in parts if isinstance(p, Message)])
    return Bounce(tuple(recipients), "heuristic", original=original)


def _explained(address: str, action: str, text: str, single: bool) -> BouncedRecipient:
    """``address`` with the lines of ``text`` from the one naming it to the paragraph's end
    as its diagnostic, and the status code they give (or, for the only address of the bounce,
    the first one in ``text``)."""
    lines = text.splitlines()
    at = next((i for i, line in enumerate(lines) if address in line.casefold()), None)
    diagnostic = None
    if at is not None:
        paragraph = itertools.takewhile(str.strip, lines[at : at + _CONTEXT_LINES])
        diagnostic = " ".join(" ".join(paragraph).split())
    status = Status.find(diagnostic) or (Status.find(text) if single else None)
    return BouncedRecipient(address, action, status, diagnostic, final_recipient=address)


def _text(part: Message) -> str:
    """The plain text of ``part``, without the returned message inside it."""
    if part.get_content_maintype() == "message":
        return ""
    if part.is_multipart():
        payload = part.get_payload()
        subparts = payload if isinstance(payload, list) else []
        return "\n".join(_text(sub) for sub in subparts if isinstance(sub, Message))
    raw = part.get_payload(decode=True)
    if part.get_content_type() != "text/plain" or not isinstance(raw, bytes):
        return ""
    try:
        return raw.decode(part.get_content_charset() or "utf-8", "replace")
    except LookupError:  # an unknown charset
        return raw.decode("utf-8", "replace")
