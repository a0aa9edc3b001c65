"""Salmon's ``view`` module: render templates with the loader the application sets, and make
MailResponses from them.

As in Salmon, ``LOADER`` is any object with ``get_template(name)`` (a ``jinja2.Environment``),
set at start-up: ``view.LOADER = jinja2.Environment(loader=jinja2.FileSystemLoader(folder))``.
The other fields of ``respond`` are %-formatted with the variables, as Salmon does: do not put
text a sender wrote into them, and keep a literal ``%`` as ``%%``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailrouter.compat.salmon.mail import MailResponse

__all__ = ["LOADER", "attach", "load", "render", "respond"]

LOADER: Any = None


def load(template: str) -> Any:
    """The template named ``template`` from ``LOADER`` (TypeError while it is not set)."""
    if LOADER is None:
        raise TypeError("You haven't set mailrouter.compat.salmon.view.LOADER to a loader yet.")
    return LOADER.get_template(template)


def render(variables: Mapping[str, Any], template: str) -> str:
    """The template named ``template`` rendered with ``variables``."""
    return str(load(template).render(variables))


def respond(
    variables: Mapping[str, Any], Body: str | None = None, Html: str | None = None, **kwd: Any
) -> MailResponse:
    """A MailResponse whose Body and/or Html are the templates named so, rendered with
    ``variables``; ``kwd`` (To, From, Subject) are %-formatted with them."""
    if Body is None and Html is None:
        raise TypeError("You need to give either the Body or Html template of the mail.")
    msg = MailResponse(**{name: value % variables for name, value in kwd.items()})
    if Body:
        msg.Body = render(variables, Body)
    if Html:
        msg.Html = render(variables, Html)
    return msg


def attach(
    msg: MailResponse,
    variables: Mapping[str, Any],
    template: str,
    filename: str | None = None,
    content_type: str | None = None,
    disposition: str | None = None,
) -> None:
    """Render ``template`` with ``variables`` and attach it to ``msg`` (see ``attach``)."""
    msg.attach(
        filename=filename,
        data=render(variables, template),
        content_type=content_type,
        disposition=disposition,
    )
