"""The web console in the server process: its HTTP server on ``console_host:console_port``, in
the server's own loop (the copies of the messages it shows are the server's: ``Server.copies``).

The console (``mailrouter.console``, the ``mailrouter[console]`` extra) sits above the runtime
in the package's layers: the runtime never imports it, it loads it by its import string when
``console_port`` is set, as uvicorn loads an application (``CONSOLE``). The console calls the
server's command table directly, the one the control socket serves.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Protocol, cast

from mailrouter.config import Settings
from mailrouter.errors import MailRouterError
from mailrouter.runtime.control import Command

CONSOLE = "mailrouter.console.service:serve_console"
_EXTRA = {"starlette", "jinja2", "uvicorn", "multipart", "python_multipart", "itsdangerous"}


class Console(Protocol):
    """A console being served: where, and how to stop it."""

    @property
    def url(self) -> str: ...

    async def stop(self) -> None: ...


class Serve(Protocol):
    """``CONSOLE``: starts serving the console for ``settings`` over ``commands``."""

    async def __call__(self, settings: Settings, commands: Mapping[str, Command]) -> Console: ...


def load_console() -> Serve:
    """The console's entry point; a clear error when the extra is not installed."""
    module, _, name = CONSOLE.partition(":")
    try:
        return cast(Serve, getattr(importlib.import_module(module), name))
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _EXTRA:
            raise
        raise MailRouterError(
            "the console needs mailrouter[console]: pip install 'mailrouter[console]'"
        ) from exc
