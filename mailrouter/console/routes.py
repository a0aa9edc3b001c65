"""The routes page: the route table in match order, and the tester: for an address and a
sender, the handlers that would run now and their captures (or why none would)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from mailrouter.console.web import ask, get, render


async def routes(request: Request) -> Response:
    """The table, and the tester's answer when an address is given."""
    address = request.query_params.get("address", "").strip()
    sender = request.query_params.get("sender", "").strip()
    table = await ask(request, "routes")
    trial = await ask(request, "routes.test", address=address, sender=sender) if address else None
    return await render(
        request, "routes.html", table=table, address=address, sender=sender, trial=trial
    )


ROUTES = [get("/routes", routes)]
