"""How the console asks the server: its command table, called in the server's process, or the
same commands over the control socket (``mailrouter console`` beside a running server).

Either way a command takes and returns plain JSON values, and a refusal is a
``MailRouterError`` with the server's one line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from mailrouter.errors import MailRouterError
from mailrouter.runtime import control
from mailrouter.runtime.control import Command


class Commands(Protocol):
    """Runs one of the server's commands with keyword arguments; its JSON result."""

    async def __call__(self, name: str, **args: Any) -> Any: ...


class LocalCommands:
    """The command table of the server this console runs in, called directly."""

    def __init__(self, table: Mapping[str, Command]) -> None:
        self.table = table

    async def __call__(self, name: str, **args: Any) -> Any:
        command = self.table.get(name)
        if command is None:
            raise MailRouterError(f"the server has no command {name!r}")
        return await command(args)


class SocketCommands:
    """The commands of the server listening on the control socket at ``path``."""

    def __init__(self, path: Path, timeout: float | None = 60.0) -> None:
        self.path = path
        self.timeout = timeout

    async def __call__(self, name: str, **args: Any) -> Any:
        return await asyncio.to_thread(control.request, self.path, name, self.timeout, **args)
