"""The queues pages: the undeliverable queue, the relay's outbox and its failed maildir; one
entry with its source; replay one undeliverable entry, retry one outbox entry now, remove one.

Each action names one entry by its key and does what the command line does to it (``queue
replay``, ``queue retry``, ``queue remove``), through the same commands.
"""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailrouter.console import mime
from mailrouter.console.web import Failed, ask, back, get, post, render
from mailrouter.runtime.boxes import BOX_NAMES, LABELS


def _box(request: Request) -> str:
    box = str(request.path_params["box"])
    if box not in BOX_NAMES:
        raise Failed(404, f"no box {box!r} (known: {', '.join(BOX_NAMES)})")
    return box


async def index(request: Request) -> Response:
    """The queues open on the undeliverable queue."""
    return RedirectResponse("/queues/undeliverable", status_code=303)


async def box(request: Request) -> Response:
    """Every entry of one box, oldest first, with its actions."""
    name = _box(request)
    entries: list[dict[str, Any]] = await ask(request, "queue.list", box=name)
    return await render(
        request,
        "queue.html",
        box=name,
        boxes=BOX_NAMES,
        label=LABELS[name],  # type: ignore[index]
        entries=entries,
        notice=request.query_params.get("notice", ""),
    )


async def entry(request: Request) -> Response:
    """One entry: its envelope, reasons or schedule, and its source."""
    name = _box(request)
    shown = await ask(request, "queue.show", box=name, key=request.path_params["key"])
    data = base64.b64decode(shown.pop("data"))
    return await render(
        request,
        "queue_entry.html",
        box=name,
        label=LABELS[name],  # type: ignore[index]
        entry=shown,
        source=data[: mime.TEXT_SHOWN].decode("utf-8", "replace"),
        truncated=len(data) > mime.TEXT_SHOWN,
    )


async def remove(request: Request) -> Response:
    """Delete one entry (``queue remove KEY``)."""
    name, key = _box(request), request.path_params["key"]
    await ask(request, "queue.remove", box=name, key=key)
    return back(f"/queues/{name}", notice=f"removed {key}")


async def replay(request: Request) -> Response:
    """Deliver one undeliverable entry again (``queue replay``, for this entry alone)."""
    key = request.path_params["key"]
    report = await ask(request, "queue.replay", key=key)
    kept = report["kept"]
    notice = f"replayed {key}: delivered" if not kept else f"replayed {key}: kept, {kept[0][1]}"
    return back("/queues/undeliverable", notice=notice)


async def retry(request: Request) -> Response:
    """Try one outbox entry now, due or not (``queue retry``, for this entry alone)."""
    key = request.path_params["key"]
    report = await ask(request, "queue.retry", key=key)
    if report["busy"]:
        notice = "a retry pass is running: try again in a moment"
    else:
        notice = (
            f"retried {key}: {report['delivered']} delivered, {report['deferred']} deferred,"
            f" {report['failed']} failed"
        )
    return back("/queues/outbox", notice=notice)


ROUTES = [
    get("/queues", index),
    get("/queues/{box:str}", box),
    get("/queues/{box:str}/{key:str}", entry),
    post("/queues/{box:str}/{key:str}/remove", remove),
    post("/queues/undeliverable/{key:str}/replay", replay),
    post("/queues/outbox/{key:str}/retry", retry),
]
