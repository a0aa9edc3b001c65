"""What the console's pages share: the console's context, asking the server, rendering a
template off the event loop, and the route helpers (every POST route is CSRF-checked).

Templates render in a thread: the console may share its loop with the SMTP server, which must
never wait for a page.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mailrouter.config import Settings
from mailrouter.console.auth import CSRF_HEADER, Endpoint, csrf_token, protected
from mailrouter.console.client import Commands
from mailrouter.errors import MailRouterError


class Failed(Exception):
    """A page cannot be shown: its status and the reason (an error page says it)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Console:
    """What every page uses: the server's commands, the settings, the templates."""

    commands: Commands
    settings: Settings
    templates: Environment


def templates() -> Environment:
    """The console's Jinja2 templates, HTML-escaped, failing on an undefined name."""
    environment = Environment(
        loader=PackageLoader("mailrouter.console", "templates"),
        autoescape=select_autoescape(default=True),
        undefined=StrictUndefined,
    )
    environment.filters["when"] = when
    environment.filters["bytes"] = size
    return environment


def when(value: str | float | None) -> str:
    """An ISO 8601 UTC time or epoch seconds as ``YYYY-MM-DD HH:MM:SS`` (UTC); ``-`` if none."""
    if value is None or value == "":
        return "-"
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value).replace("T", " ")[:19]


def size(value: int) -> str:
    """A byte count, readable."""
    for unit in ("bytes", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)


def console_of(request: Request) -> Console:
    """The console serving ``request``."""
    console: Console = request.app.state.console
    return console


async def ask(request: Request, name: str, **args: Any) -> Any:
    """The server's answer to command ``name``; a refusal becomes an error page (400, or 404
    when it names something missing)."""
    try:
        return await console_of(request).commands(name, **args)
    except MailRouterError as exc:
        status = 404 if str(exc).startswith("no message") else 400
        raise Failed(status, str(exc)) from None


async def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    """``template`` rendered in a thread, with the request, the CSRF token and the path."""
    context.update(
        request=request,
        csrf=csrf_token(request),
        csrf_header=CSRF_HEADER,
        path=request.url.path,
    )
    page = console_of(request).templates.get_template(template)
    return HTMLResponse(await asyncio.to_thread(page.render, context), status)


def back(path: str, **notice: str) -> Response:
    """A 303 to ``path`` (after a form's POST), with a notice to show there."""
    query = ("&" if "?" in path else "?") + urlencode(notice) if notice else ""
    return RedirectResponse(path + query, status_code=303)


def get(path: str, endpoint: Endpoint) -> BaseRoute:
    """A page or fragment: changes nothing."""
    return Route(path, endpoint, methods=["GET", "HEAD"])


def post(path: str, endpoint: Endpoint) -> BaseRoute:
    """A form's target: changes something, so the Origin and CSRF token are checked first."""
    return Route(path, protected(endpoint), methods=["POST"])


def field(form: Any, name: str) -> str:
    """A form field's text, stripped ("" when absent or a file)."""
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""
