"""SMTP replies: the ``Reply`` value, the replies mailrouter itself gives, and their formatting.

Every reply a session sends is built here: message-wide refusals are one ``Reply`` given to
each recipient, a delivery's per-recipient replies are turned into the DATA reply by
``data_reply`` (one line for SMTP, one per recipient for LMTP), and ``clean`` gives every line a
client sees an enhanced status code (RFC 3463) and only printable ASCII.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mailrouter.errors import Status
from mailrouter.message import MAX_NESTING


@dataclass(frozen=True)
class Reply:
    """The SMTP reply for one envelope recipient (or, with no recipient, for the message)."""

    recipient: str
    code: int
    text: str  # starts with the enhanced status code

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    def to(self, recipients: Iterable[str]) -> tuple[Reply, ...]:
        """This reply given to each of ``recipients``."""
        return tuple(Reply(rcpt, self.code, self.text) for rcpt in recipients)


def _reply(code: Status, text: str) -> Reply:
    return Reply("", code, text)


ACCEPTED = _reply(Status.OK, "2.0.0 Message accepted")
ALREADY_DELIVERED = _reply(Status.OK, "2.0.0 Already delivered")
TEMPORARY_FAILURE = _reply(Status.LOCAL_ERROR, "4.3.0 Temporary failure, try again later")
HANDLER_TIMEOUT = _reply(Status.LOCAL_ERROR, "4.3.0 Handler timed out, try again later")
INTERNAL_ERROR = _reply(Status.LOCAL_ERROR, "4.3.0 Internal error, try again later")
INSUFFICIENT_STORAGE = _reply(
    Status.INSUFFICIENT_STORAGE, "4.3.1 Insufficient storage, try again later"
)
TOO_MANY_RECIPIENTS = _reply(Status.INSUFFICIENT_STORAGE, "4.5.3 Too many recipients")
HEADER_TOO_LARGE = _reply(Status.SIZE_EXCEEDED, "5.3.4 Message header too large")
MAIL_LOOP = _reply(Status.TRANSACTION_FAILED, "5.4.6 Too many hops: mail loop detected")
# RFC 3463's "other media error": Postfix's reply to its mime_nesting_limit too
NESTING_TOO_DEEP = _reply(
    Status.TRANSACTION_FAILED, f"5.6.0 MIME nesting exceeds {MAX_NESTING} levels"
)
BAD_SENDER = _reply(Status.SYNTAX_ERROR, "5.1.7 Bad sender address syntax")
BAD_RECIPIENT = _reply(Status.SYNTAX_ERROR, "5.1.3 Bad recipient address syntax")
# RFC 6531 3.5: a non-ASCII address in a transaction not begun with MAIL ... SMTPUTF8
NON_ASCII_ADDRESS = _reply(
    Status.MAILBOX_NAME_NOT_ALLOWED, "5.6.7 Non-ASCII address without SMTPUTF8"
)
SENDER_OK = _reply(Status.OK, "2.1.0 Sender OK")
RECIPIENT_OK = _reply(Status.OK, "2.1.5 Recipient OK")
SHUTTING_DOWN = _reply(Status.SERVICE_UNAVAILABLE, "4.3.2 Service shutting down, try again later")
TOO_MANY_CONNECTIONS = _reply(
    Status.SERVICE_UNAVAILABLE, "4.7.0 Too many connections, try again later"
)
TOO_MANY_ERRORS = _reply(Status.SERVICE_UNAVAILABLE, "4.7.0 Too many errors, closing connection")
IDLE_TIMEOUT = _reply(Status.SERVICE_UNAVAILABLE, "4.4.2 Idle timeout, closing connection")
SESSION_TIMEOUT = _reply(
    Status.SERVICE_UNAVAILABLE, "4.4.2 Session time limit exceeded, closing connection"
)
TLS_FAILED = _reply(Status.TLS_UNAVAILABLE, "4.7.0 TLS handshake failed")
# sender authentication: a DMARC failure under p=reject (auth_policy = "enforce"), and an
# @authenticated handler's sender that is not DMARC-aligned (reject_unauthenticated)
DMARC_REJECTED = _reply(
    Status.MAILBOX_UNAVAILABLE, "5.7.1 Rejected by the From: domain's DMARC policy"
)
UNAUTHENTICATED = _reply(
    Status.MAILBOX_UNAVAILABLE, "5.7.1 Sender not authenticated: From: domain not DMARC-aligned"
)


def no_route(recipient: str) -> Reply:
    """The refusal at RCPT of a recipient that no route matches (``reject_unroutable``)."""
    return Reply(
        recipient, Status.MAILBOX_UNAVAILABLE, f"5.1.1 <{recipient}>: no route for this address"
    )


def data_reply(replies: Sequence[Reply], *, lmtp: bool, queue_id: str) -> str:
    """The reply to DATA. LMTP: one line per recipient, in RCPT order. SMTP, one line for the
    message: a temporary refusal of any recipient (the MTA retries; the recipients already
    done are not run again), else a permanent one when every recipient was refused, else
    ``250`` (a recipient refused beside delivered ones is told in a delivery report)."""
    if lmtp:
        return "\r\n".join(_lmtp_line(reply, queue_id) for reply in replies)
    deferred = next((r for r in replies if 400 <= r.code < 500), None)
    if deferred is not None:
        return str(deferred)
    if all(r.code >= 500 for r in replies):
        return str(replies[0])
    if all(r.text == ALREADY_DELIVERED.text for r in replies):
        return str(ALREADY_DELIVERED)
    return f"{Status.OK} 2.0.0 Ok: queued as {queue_id}"


def _lmtp_line(reply: Reply, queue_id: str) -> str:
    if reply.code >= 300:
        return str(reply)
    done = "Already delivered" if reply.text == ALREADY_DELIVERED.text else queue_id
    return f"{Status.OK} 2.0.0 <{reply.recipient}> {done}"


def partly_refused(replies: Sequence[Reply]) -> tuple[Reply, ...]:
    """Over SMTP, the permanently refused recipients of a message answered ``250``: those
    the sender must be told about in a delivery report (empty when there are none)."""
    if any(400 <= r.code < 500 for r in replies) or all(r.code >= 500 for r in replies):
        return ()
    return tuple(r for r in replies if r.code >= 500)


# Enhanced status codes for the replies aiosmtpd sends without one.
_ENHANCED_BY_CODE = {
    421: "4.3.2",
    451: "4.3.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    550: "5.1.1",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.6.0",
    555: "5.5.4",
}


def clean(line: str) -> str:
    """One reply line made safe to send: printable ASCII, with an enhanced code if an error."""
    if not (line.isprintable() and line.isascii()):
        line = "".join(
            "?" if not char.isprintable() or "\udc80" <= char <= "\udcff" else char for char in line
        )
    code = line[:3]
    if not code.isdigit() or int(code) < 400 or line[4:5].isdigit():
        return line
    enhanced = _ENHANCED_BY_CODE.get(int(code), f"{code[0]}.0.0")
    text = line[4:].removeprefix("Error: ").removeprefix("Error ")
    return f"{code} {enhanced} {text}"
