"""Delivery status notifications (RFC 3464) for recipients refused after others were delivered.

Over plain SMTP one reply answers DATA for every recipient. When some recipients' handlers
finished and others refused the message for good, mailrouter answers ``250`` (the message is
its responsibility now) and tells the envelope sender about the refused ones with this report:
``multipart/report; report-type=delivery-status`` from the null sender, ``Auto-Submitted:
auto-replied``, a human-readable part, one ``message/delivery-status`` block per refused
recipient with its reply as ``Diagnostic-Code``, and the original headers as
``text/rfc822-headers``. Never for a message from the null sender (RFC 3461: no loops).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from email.message import EmailMessage, Message
from email.utils import formatdate, make_msgid

from mailrouter.message import MailRequest, header_section
from mailrouter.replies import Reply


def _fields(pairs: Sequence[tuple[str, str]]) -> Message:
    block = Message()
    for name, value in pairs:
        block[name] = value
    return block


def _status(reply: Reply) -> str:
    code = reply.text.split(" ", 1)[0]
    return code if code[:1] in "45" and code.count(".") == 2 else f"{reply.code // 100}.0.0"


def delivery_report(
    message: MailRequest, refused: Sequence[Reply], *, reporting_host: str
) -> EmailMessage | None:
    """The report telling ``message``'s sender that ``refused`` were not delivered; None
    when nobody may be told (the null sender) or nothing was refused."""
    if not message.sender or not refused:
        return None
    report = EmailMessage()
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_host}>"
    report["To"] = message.sender
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = formatdate(time.time(), localtime=True)
    report["Message-ID"] = make_msgid(domain=reporting_host)
    report["Auto-Submitted"] = "auto-replied"
    original_id = message["Message-ID"]
    if original_id:
        report["In-Reply-To"] = str(original_id)
        report["References"] = str(original_id)
    lines = [f"<{reply.recipient}>: {reply}" for reply in refused]
    report.set_content(
        f"This is the mail system at {reporting_host}.\n\n"
        "Your message was delivered to some of its recipients, but not to the ones below.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    report.make_mixed()
    report.set_type("multipart/report")
    report.set_param("report-type", "delivery-status")
    status = EmailMessage()
    status.set_type("message/delivery-status")
    per_message = _fields(
        [("Reporting-MTA", f"dns; {reporting_host}"), ("Arrival-Date", formatdate(localtime=True))]
    )
    per_recipient = [
        _fields(
            [
                ("Final-Recipient", f"rfc822; {reply.recipient}"),
                ("Original-Recipient", f"rfc822; {reply.recipient}"),
                ("Action", "failed"),
                ("Status", _status(reply)),
                ("Diagnostic-Code", f"smtp; {reply}"),
            ]
        )
        for reply in refused
    ]
    status.set_payload([per_message, *per_recipient])
    report.attach(status)
    headers = EmailMessage()
    headers.set_content(
        header_section(message.data).decode("ascii", "replace"), subtype="rfc822-headers"
    )
    del headers["MIME-Version"]
    report.attach(headers)
    return report
