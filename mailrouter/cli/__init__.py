"""The ``mailrouter`` command: start, stop, status, reload, routes, state, queue, messages, send,
sendmail, gen, sink, console, dkim-keygen.

This is the only package that configures logging and turns exceptions into exit codes: every
``MailRouterError`` (and ``OSError``) becomes one ``Error: ...`` line and exit status 1. Each
command lives in its own module; this one builds the group and adds them to it.
"""

from __future__ import annotations

from typing import Any

import click

from mailrouter import __version__
from mailrouter.cli import console, dkim, gen, messages, queue, routes, send, server, sink, state
from mailrouter.cli.common import describe_os_error
from mailrouter.errors import MailRouterError

__all__ = ["main"]


class _Group(click.Group):
    """A click group that reports mailrouter's errors as one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MailRouterError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(describe_os_error(exc)) from None


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mailrouter")
def main() -> None:
    """mailrouter: route incoming mail to Python handlers by address and sender state."""


for _command in (
    server.start,
    server.stop,
    server.status,
    server.reload,
    routes.routes,
    queue.queue,
    messages.messages,
    state.state,
    send.send,
    send.sendmail,
    gen.gen,
    sink.sink,
    console.console,
    dkim.dkim_keygen,
):
    main.add_command(_command)
