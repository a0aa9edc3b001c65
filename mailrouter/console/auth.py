"""Who may use the console: the login token, the session, CSRF, and the secure headers.

- The token: ``console_token``, or else one made at first start, printed once (a WARNING log
  line) and kept only as its SHA-256 in ``console_token_file`` (mode 0600). A made token has
  256 random bits, so a plain SHA-256 is as good as a slow hash: slow hashes are for guessable
  secrets, and nobody can search a 2**256 space whatever the hash costs.
- The session: a signed cookie (Starlette's ``SessionMiddleware``), HttpOnly, SameSite=Strict,
  and Secure whenever the request came over https (``SecureCookies``: TLS served by the console,
  or a TLS proxy on loopback saying so in ``X-Forwarded-Proto``); a login replaces it whole, so
  a session planted before the login is worth nothing after. Failed logins are throttled
  (``throttle``).
- CSRF: a token per session, in every form (a hidden field) and in htmx's requests (a header),
  checked with the ``Origin`` (else ``Referer``) against the console's own origin; a request
  that changes anything and fails either check gets ``403``.
- Headers on every response: a Content-Security-Policy without ``'unsafe-inline'`` for scripts
  (the message parts' routes send their own, stricter ``sandbox`` policy), ``nosniff``, and
  ``Referrer-Policy: same-origin``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote, urlsplit

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailrouter.config import ConfigError, Settings

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; frame-src 'self'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
OPEN_PATHS = ("/login", "/static/")  # served without a session
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
Endpoint = Callable[[Request], Awaitable[Response]]


def check_listen(settings: Settings) -> None:
    """Refuse a console on an address other than loopback without a set token."""
    if is_loopback(settings.console_host) or settings.console_token:
        return
    raise ConfigError(
        f"console_host = {settings.console_host!r} is not a loopback address: set console_token"
        " (MAILROUTER_CONSOLE_TOKEN) to a long random secret first, or keep console_host on"
        " 127.0.0.1"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Tokens:
    """Checks login tokens against the hash of the one valid token."""

    def __init__(self, digest: str) -> None:
        self.digest = digest

    @classmethod
    def of_settings(cls, settings: Settings) -> Tokens:
        """``console_token``'s hash, or the kept hash of the made token (made now if none)."""
        if settings.console_token:
            return cls(_digest(settings.console_token))
        path = settings.path(settings.console_token_file)
        try:
            digest = path.read_text().strip()
        except FileNotFoundError:
            digest = ""
        if len(digest) != 64:
            digest = _made(path)
        return cls(digest)

    def valid(self, candidate: str) -> bool:
        """Whether ``candidate`` is the token (compared in constant time)."""
        return hmac.compare_digest(_digest(candidate.strip()), self.digest)


def _made(path: Path) -> str:
    """Make a token, keep its hash at ``path`` (0600), say the token once; its hash."""
    token = secrets.token_urlsafe(32)
    digest = _digest(token)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write(digest + "\n")
    os.replace(temporary, path)
    log.warning("console login token (shown once; only its hash is kept in %s): %s", path, token)
    return digest


def csrf_token(request: Request) -> str:
    """This session's CSRF token, made on first use."""
    token = request.session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session[CSRF_FIELD] = token
    return token


def logged_in(request: Request) -> bool:
    """Whether this session has logged in."""
    return request.session.get("user") is True


def log_in(request: Request) -> None:
    """Replace the session with a logged-in one, with a new CSRF token."""
    request.session.clear()
    request.session["user"] = True
    csrf_token(request)


def _same_origin(request: Request) -> bool:
    """Whether the request's Origin (else Referer) is the console's own origin."""
    claimed = request.headers.get("origin") or request.headers.get("referer") or ""
    parts = urlsplit(claimed)
    own = urlsplit(str(request.base_url))
    return bool(parts.scheme) and (parts.scheme, parts.netloc) == (own.scheme, own.netloc)


def protected(endpoint: Endpoint) -> Endpoint:
    """``endpoint`` for a request that changes something: the Origin and the session's CSRF
    token (form field or header) are checked first, else ``403``. The form is parsed here, once;
    the endpoint's ``request.form()`` gets it again."""

    async def check(request: Request) -> Response:
        form: FormData = await request.form(max_part_size=64 * 1024 * 1024)
        try:
            given = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
            expected = request.session.get(CSRF_FIELD)
            if not _same_origin(request):
                raise HTTPException(403, "refused: this request does not come from the console")
            if not (
                isinstance(given, str)
                and isinstance(expected, str)
                and hmac.compare_digest(given, expected)
            ):
                raise HTTPException(403, "refused: the form is stale or forged (CSRF); reload it")
            return await endpoint(request)
        finally:
            await form.close()  # the uploaded files' temporary files

    return check


class SecureCookies:
    """ASGI middleware outside the session's: every cookie set in answer to an https request is
    marked Secure, so a browser never sends it back over plain HTTP."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    (name, _secure(value) if name.lower() == b"set-cookie" else value)
                    for name, value in message.get("headers", [])
                ]
            await send(message)

        await self.app(scope, receive, send_secure)


def _secure(cookie: bytes) -> bytes:
    flags = {flag.strip().lower() for flag in cookie.split(b";")[1:]}
    return cookie if b"secure" in flags else cookie + b"; secure"


class Guard:
    """ASGI middleware inside the session's: login required outside ``OPEN_PATHS``, requests
    that change something only from the console's own origin, and the secure headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [
                    (name.encode(), value.encode())
                    for name, value in HEADERS.items()
                    if name.encode() not in present
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> Response | None:
        path = request.url.path
        unsafe = request.method not in SAFE_METHODS
        if unsafe and not _same_origin(request):
            return Response("refused: this request does not come from the console", 403)
        if path.startswith(OPEN_PATHS) or logged_in(request):
            return None
        if unsafe or request.headers.get("hx-request"):
            return Response("log in first", 401, headers={"hx-redirect": "/login"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return Response(
            status_code=303, headers={"location": f"/login?next={quote(target, safe='')}"}
        )


def local_path(target: str | None) -> str:
    """``target`` if it is a path of this console (no scheme, no host), else ``/``."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc and "\\" not in target else "/"
