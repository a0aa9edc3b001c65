"""The states page: search a sender, see its state under each state key (and why it is in
ERROR), set or reset it; by default, the senders in ERROR.

Each change names one sender and one key (``state set SENDER STATE --key K``, ``state reset
SENDER --key K``), through the same commands.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mailrouter.console.web import Failed, ask, back, field, get, post, render
from mailrouter.message import normalize_address
from mailrouter.state import ERROR, START


async def states(request: Request) -> Response:
    """A sender's states under every key (START where none is stored), or those in ERROR."""
    sender = normalize_address(request.query_params.get("sender", ""))
    table = await ask(request, "routes")
    machines: dict[str, list[str]] = table["machines"]
    if sender:
        stored: list[dict[str, Any]] = await ask(request, "state.show", sender=sender)
        keys = {entry["key"] for entry in stored}
        rows = stored + [
            {"key": key, "sender": sender, "state": START, "reason": None}
            for key in machines
            if key not in keys
        ]
    else:
        rows = await ask(request, "state.list", state=ERROR)
    return await render(
        request,
        "states.html",
        sender=sender,
        rows=rows,
        machines=machines,
        fallback=sorted({START, ERROR, *(s for names in machines.values() for s in names)}),
        notice=request.query_params.get("notice", ""),
    )


def _named(form: Any) -> tuple[str, str]:
    sender, key = field(form, "sender"), field(form, "key")
    if not sender or not key:
        raise Failed(400, "name the sender and the state key")
    return sender, key


async def set_state(request: Request) -> Response:
    """Put one sender into a state under one key."""
    form = await request.form()
    sender, key = _named(form)
    done = await ask(request, "state.set", sender=sender, key=key, state=field(form, "state"))
    notice = f"{sender} under {key}: {done['previous']} -> {done['state']}"
    return back("/states", sender=sender, notice=notice)


async def reset(request: Request) -> Response:
    """Put one sender back into START under one key."""
    sender, key = _named(await request.form())
    await ask(request, "state.reset", sender=sender, key=key)
    return back("/states", sender=sender, notice=f"{sender} under {key}: reset to START")


ROUTES = [
    get("/states", states),
    post("/states/set", set_state),
    post("/states/reset", reset),
]
