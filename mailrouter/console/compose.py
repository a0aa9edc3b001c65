"""The compose page: write an inbound message (from, to, cc, subject, text, HTML, attachments)
or paste its raw source, and deliver it through the server's router as if it had come over
SMTP (``deliver``); then the message's page shows what became of it.

The envelope is the From address and every To and Cc address, unless the envelope fields say
otherwise (a raw message's envelope comes from its headers the same way).
"""

from __future__ import annotations

import asyncio
import base64
from email import message_from_bytes, policy
from email.utils import getaddresses
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from mailrouter.console.web import Failed, ask, back, field, get, post, render
from mailrouter.errors import MailRouterError
from mailrouter.outbound.response import MailResponse

FIELDS = ("sender", "to", "cc", "subject", "text", "html", "raw", "envelope_from", "envelope_to")


def _addresses(*values: str) -> list[str]:
    return [address for _, address in getaddresses(list(values)) if address]


async def _built(form: Any) -> bytes:
    """The message the form describes: the raw source as pasted, or one built from the fields."""
    raw = field(form, "raw")
    if raw:
        return raw.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    attachments = []
    for upload in form.getlist("attachments"):
        if isinstance(upload, UploadFile) and upload.filename:
            content = await upload.read()
            kind = upload.content_type or "application/octet-stream"
            attachments.append((upload.filename, content, kind))
    try:
        response = MailResponse(
            to=field(form, "to"),
            sender=field(form, "sender"),
            subject=field(form, "subject"),
            text=field(form, "text") or None,
            html=field(form, "html") or None,
            cc=field(form, "cc") or (),
            attachments=attachments,
        )
        return response.as_bytes()
    except (MailRouterError, ValueError, TypeError) as exc:
        raise Failed(400, f"cannot build the message: {exc}") from None


def _envelope(form: Any, data: bytes) -> tuple[str, list[str]]:
    """The envelope sender and recipients: the envelope fields, else the message's headers."""
    header = message_from_bytes(data, policy=policy.compat32)
    sender_field = field(form, "envelope_from")
    senders = _addresses(sender_field) if sender_field else _addresses(header.get("From", ""))
    given = field(form, "envelope_to")
    heads = [str(header.get(name, "")) for name in ("To", "Cc")]
    recipients = _addresses(given) if given else _addresses(*heads)
    if not recipients:
        raise Failed(400, "no recipient: give To (or the envelope's recipients)")
    return (senders[0] if senders else ""), recipients


async def compose_page(request: Request) -> Response:
    """The form."""
    return await render(request, "compose.html", values=dict.fromkeys(FIELDS, ""), result=None)


async def compose(request: Request) -> Response:
    """Deliver the message; its page, or the form again with the reply when it has none."""
    form = await request.form()
    data = await _built(form)
    sender, recipients = await asyncio.to_thread(_envelope, form, data)
    result = await ask(
        request,
        "deliver",
        data=base64.b64encode(data).decode("ascii"),
        sender=sender,
        recipients=recipients,
    )
    try:  # in the journal when DATA ran (and the journal is on): the message's page says it
        await ask(request, "messages.show", id=result["id"])
    except Failed:
        pass
    else:
        reply = result["reply"].splitlines()[-1]
        return back(f"/messages/{result['id']}", notice=f"delivered: {reply}")
    values = {name: field(form, name) for name in FIELDS}
    return await render(request, "compose.html", 400, values=values, result=result)


ROUTES = [get("/compose", compose_page), post("/compose", compose)]
