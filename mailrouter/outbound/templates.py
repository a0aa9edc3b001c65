"""Templates for outgoing mail: ``render()`` a file, or ``respond()`` with a MailResponse.

Needs the ``templates`` extra (Jinja2). Templates are files in one folder: the ``templates``
setting, which the server sets for its run with ``using(folder)``; elsewhere ``./templates``
unless a test or script chooses another the same way. ``.html``/``.htm`` templates are
HTML-escaped, the others (text) are not; using a variable that was not given is an error
(``StrictUndefined``).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailrouter.errors import MailRouterError
from mailrouter.outbound.response import MailResponse

if TYPE_CHECKING:
    import jinja2

__all__ = ["TemplateError", "TemplatesUnavailable", "current", "render", "respond", "using"]

DEFAULT_FOLDER = Path("templates")

_folder: ContextVar[Path] = ContextVar("mailrouter.outbound.templates", default=DEFAULT_FOLDER)


class TemplateError(MailRouterError):
    """A template could not be rendered: not found, a syntax error, an undefined variable."""


class TemplatesUnavailable(TemplateError):
    """Jinja2 is not installed: the ``templates`` extra is missing."""


@contextlib.contextmanager
def using(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Load templates from ``folder`` in this context (this task, or a thread that runs a copy
    of it) until the ``with`` block ends."""
    token = _folder.set(Path(folder))
    try:
        yield _folder.get()
    finally:
        _folder.reset(token)


def current() -> Path:
    """The folder templates are loaded from in this context (default: ``./templates``)."""
    return _folder.get()


@functools.lru_cache(maxsize=8)
def _environment(folder: Path) -> jinja2.Environment:
    """The Jinja environment of ``folder``, made once; it reloads templates that changed."""
    try:
        import jinja2
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in ("jinja2", "markupsafe"):
            raise
        raise TemplatesUnavailable(
            "templates need Jinja2: pip install 'mailrouter[templates]'"
        ) from exc
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=jinja2.select_autoescape(("html", "htm"), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def render(template: str, /, **variables: Any) -> str:
    """The template file named ``template`` in the templates folder, rendered with ``variables``."""
    folder = current()
    environment = _environment(folder)
    import jinja2  # present: _environment imported it

    try:
        return environment.get_template(template).render(variables)
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"template {exc.name!r} not found in {folder}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template {template!r}: {exc}") from exc


def respond(
    template_vars: Mapping[str, Any],
    *,
    text: str | None = None,
    html: str | None = None,
    **fields: Any,
) -> MailResponse:
    """A MailResponse whose text and/or HTML body are templates rendered with ``template_vars``.

    ``fields`` are MailResponse's own arguments (``to``, ``sender``, ``subject``, ``cc``,
    ``headers``, ``attachments``...), used as given: they are not templates, since rendering
    text such as an incoming Subject as one would let its sender run template code.
    """
    if text is None and html is None:
        raise ValueError("respond() needs a text or an html template")
    return MailResponse(
        text=None if text is None else render(text, **template_vars),
        html=None if html is None else render(html, **template_vars),
        **fields,
    )
