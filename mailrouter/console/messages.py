"""The messages pages: the journal, newest first and live, filtered; one message's page with
its envelope, headers, parts, outcomes and timings; its raw source, HTML parts (sandboxed) and
attachments.

Message HTML is never put into a console page: it is served by its own route with
``Content-Security-Policy: sandbox`` (no scripts, no same origin, no remote content) and shown in
an ``<iframe sandbox>``. Attachments are always downloads (``application/octet-stream``).
"""

from __future__ import annotations

import asyncio
import base64
from calendar import timegm
from time import strptime
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailrouter.console import mime
from mailrouter.console.web import Failed, ask, get, render
from mailrouter.journal import MESSAGE_STATUSES

PART_CSP = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
)
RAW_CSP = "sandbox; default-src 'none'"
FILTERS = ("status", "sender", "recipient", "since", "until")
TIME_INPUT = "%Y-%m-%dT%H:%M"  # what <input type="datetime-local"> sends (here: UTC)
NOT_KEPT = "the message's bytes were not kept (the console was off when it arrived)"


def _filters(request: Request) -> dict[str, str]:
    return {name: request.query_params.get(name, "").strip() for name in FILTERS}


def _epoch(text: str, name: str) -> float | None:
    if not text:
        return None
    try:
        return float(timegm(strptime(text[:16], TIME_INPUT)))
    except ValueError:
        raise Failed(400, f"{name}: {text!r} is not a time as YYYY-MM-DDTHH:MM (UTC)") from None


async def _entries(request: Request, filters: dict[str, str]) -> list[dict[str, Any]]:
    args: dict[str, Any] = {
        "status": filters["status"] or None,
        "recipient": filters["recipient"] or None,
        "since": _epoch(filters["since"], "since"),
        "until": _epoch(filters["until"], "until"),
        "limit": 100,
    }
    if filters["sender"]:
        args["sender"] = "" if filters["sender"] == "<>" else filters["sender"]
    entries: list[dict[str, Any]] = await ask(request, "messages.list", **args)
    return entries


async def messages(request: Request) -> Response:
    """The journal, newest first; the rows reload every 2 s (``rows``)."""
    filters = _filters(request)
    entries = await _entries(request, filters)
    query = urlencode({k: v for k, v in filters.items() if v})
    return await render(
        request,
        "messages.html",
        entries=entries,
        filters=filters,
        statuses=MESSAGE_STATUSES,
        query=query,
    )


async def rows(request: Request) -> Response:
    """The list's rows alone, for the live update."""
    entries = await _entries(request, _filters(request))
    return await render(request, "_message_rows.html", entries=entries)


async def _raw(request: Request, ident: str) -> bytes | None:
    found = await ask(request, "messages.raw", id=ident)
    data = found["data"]
    return None if data is None else base64.b64decode(data)


async def message(request: Request) -> Response:
    """One message: envelope, headers, parts, attachments, each recipient's outcome, timings."""
    ident = request.path_params["ident"]
    entry = await ask(request, "messages.show", id=ident)
    if entry["id"] != ident:  # a prefix: the page's address names the whole id
        return RedirectResponse(f"/messages/{entry['id']}", status_code=303)
    data = await _raw(request, ident) if entry["kept"] else None
    parsed = None if data is None else await asyncio.to_thread(mime.parse, data)
    source = None if data is None else data[: mime.TEXT_SHOWN].decode("utf-8", "replace")
    return await render(
        request,
        "message.html",
        entry=entry,
        parsed=parsed,
        source=source,
        truncated=data is not None and len(data) > mime.TEXT_SHOWN,
        not_kept=NOT_KEPT,
        notice=request.query_params.get("notice", ""),
    )


async def _kept(request: Request) -> bytes:
    data = await _raw(request, request.path_params["ident"])
    if data is None:
        raise Failed(404, NOT_KEPT)
    return data


async def raw(request: Request) -> Response:
    """The raw source as text (never rendered), or as a download with ``?download=1``."""
    data = await _kept(request)
    headers = {"content-security-policy": RAW_CSP}
    if request.query_params.get("download"):
        name = f"{request.path_params['ident']}.eml"
        headers["content-disposition"] = f'attachment; filename="{name}"'
        return Response(data, media_type="message/rfc822", headers=headers)
    return Response(data, media_type="text/plain; charset=utf-8", headers=headers)


async def part(request: Request) -> Response:
    """An HTML part, for an ``<iframe sandbox>``: sandboxed by its own policy too."""
    data = await _kept(request)
    html = await asyncio.to_thread(mime.html_of, data, int(request.path_params["number"]))
    if html is None:
        raise Failed(404, "no such HTML part")
    return Response(
        html,
        media_type="text/html; charset=utf-8",
        headers={"content-security-policy": PART_CSP, "x-frame-options": "SAMEORIGIN"},
    )


async def download(request: Request) -> Response:
    """A part's decoded bytes as a download, whatever type it claims."""
    data = await _kept(request)
    found = await asyncio.to_thread(mime.part_bytes, data, int(request.path_params["number"]))
    if found is None:
        raise Failed(404, "no such part")
    info, payload = found
    return Response(
        payload,
        media_type="application/octet-stream",
        headers={
            "content-disposition": f"attachment; filename*=UTF-8''{quote(info.filename)}",
            "content-security-policy": RAW_CSP,
        },
    )


ROUTES = [
    get("/messages", messages),
    get("/messages/rows", rows),
    get("/messages/{ident:str}", message),
    get("/messages/{ident:str}/raw", raw),
    get("/messages/{ident:str}/parts/{number:int}", part),
    get("/messages/{ident:str}/parts/{number:int}/download", download),
]
