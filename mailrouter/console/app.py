"""The console's Starlette application: its routes, the login (throttled: ``throttle``), and
the middleware around them (``auth.SecureCookies`` outside, the signed session, then
``auth.Guard``: login, origin, secure headers).

``create_app(commands, settings)`` builds it over any ``Commands``: the server's own table (the
console inside ``mailrouter start``) or the control socket (``mailrouter console``).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from mailrouter.config import Settings
from mailrouter.console import activity, compose, messages, queues, routes, states
from mailrouter.console.auth import Guard, SecureCookies, Tokens, local_path, log_in
from mailrouter.console.client import Commands
from mailrouter.console.throttle import Throttle
from mailrouter.console.web import Console, Failed, field, get, post, render, templates

SESSION_COOKIE = "mailrouter_console"
SESSION_HOURS = 12
STATIC = Path(__file__).parent / "static"


async def index(request: Request) -> Response:
    """The console opens on the messages."""
    return RedirectResponse("/messages", status_code=303)


async def login_page(request: Request) -> Response:
    """The login form."""
    return await render(request, "login.html", next=local_path(request.query_params.get("next")))


async def login(request: Request) -> Response:
    """Check the token, unless this client failed too often (429); a new logged-in session,
    then where the user was going."""
    form = await request.form()
    target = local_path(field(form, "next"))
    throttle: Throttle = request.app.state.throttle
    client = request.client.host if request.client else ""
    wait = throttle.wait(client)
    if wait:
        error = f"too many failed logins: try again in {wait} s"
        page = await render(request, "login.html", 429, next=target, error=error)
        page.headers["retry-after"] = str(wait)
        return page
    if not request.app.state.tokens.valid(field(form, "token")):
        throttle.failed(client)
        return await render(request, "login.html", 401, next=target, error="wrong token")
    throttle.succeeded(client)
    log_in(request)
    return RedirectResponse(target, status_code=303)


async def logout(request: Request) -> Response:
    """End the session."""
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


async def failed(request: Request, exc: Exception) -> Response:
    """A page that cannot be shown: the error page, with its status."""
    assert isinstance(exc, Failed)
    if request.headers.get("hx-request"):
        return PlainTextResponse(exc.reason, exc.status)
    return await render(request, "error.html", exc.status, reason=exc.reason)


async def refused(request: Request, exc: Exception) -> Response:
    """Starlette's HTTP errors (403 from the CSRF check, 404, 405) as one plain line."""
    assert isinstance(exc, HTTPException)
    return PlainTextResponse(str(exc.detail), exc.status_code)


def create_app(
    commands: Commands,
    settings: Settings,
    *,
    tokens: Tokens | None = None,
    throttle: Throttle | None = None,
) -> Starlette:
    """The console over ``commands``; ``tokens`` default to the settings' (see ``auth``), the
    login ``throttle`` to ``Throttle()``."""
    table: list[BaseRoute] = [
        get("/", index),
        get("/login", login_page),
        post("/login", login),
        post("/logout", logout),
        *messages.ROUTES,
        *queues.ROUTES,
        *states.ROUTES,
        *routes.ROUTES,
        *compose.ROUTES,
        *activity.ROUTES,
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=table,
        middleware=[
            Middleware(SecureCookies),
            Middleware(
                SessionMiddleware,
                secret_key=secrets.token_urlsafe(32),  # per process: a restart logs everyone out
                session_cookie=SESSION_COOKIE,
                max_age=SESSION_HOURS * 3600,
                same_site="strict",
            ),
            Middleware(Guard),
        ],
        exception_handlers={Failed: failed, HTTPException: refused},
    )
    app.state.console = Console(commands, settings, templates())
    app.state.tokens = tokens or Tokens.of_settings(settings)
    app.state.throttle = throttle or Throttle()
    return app
