"""The control socket: how the command line talks to the running server.

A Unix socket (setting ``control_socket``, ``run/control.sock``), mode 0600 and owned by the
server's user, so only that user and root may ask. One request per connection, one line of
JSON each way::

    -> {"command": "status", "args": {}}
    <- {"ok": true, "result": {...}}          or   {"ok": false, "error": "one line"}

The commands are the server's (``runtime/commands.py``); this module only carries them. A
path too long for ``sockaddr_un`` (108 bytes) is reached through ``/proc/self/fd`` and an open
handle on its folder, so a deep project folder still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mailrouter.errors import MailRouterError

log = logging.getLogger(__name__)

Command = Callable[[dict[str, Any]], Awaitable[Any]]

MAX_REQUEST = 48 * 1024 * 1024  # bytes in one request line: a message to ``deliver`` fits
READ_TIMEOUT = 10.0  # seconds a client may take to send its request
_SUN_PATH = 100  # longer paths go through /proc/self/fd (sun_path holds 107 bytes and a NUL)


class NotListening(MailRouterError):
    """No server answers on the control socket (none runs, or it is not ready yet)."""


class ControlError(MailRouterError):
    """The running server refused or failed the command; the message is its one line."""


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A name for ``path`` that fits in ``sockaddr_un``: itself, or one through its folder's fd."""
    if len(os.fsencode(path)) <= _SUN_PATH:
        yield str(path)
        return
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


class ControlServer:
    """Serves ``commands`` on a Unix socket at ``path`` until ``stop``."""

    def __init__(self, path: Path, commands: Mapping[str, Command]) -> None:
        self.path = path
        self.commands = commands
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket (replacing one a dead server left: the caller holds the server lock)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        try:
            with reachable(self.path) as name:
                self._server = await asyncio.get_running_loop().create_unix_server(
                    lambda: asyncio.StreamReaderProtocol(
                        asyncio.StreamReader(MAX_REQUEST), self._serve_client
                    ),
                    name,
                )
            os.chmod(self.path, 0o600)
        except OSError as exc:
            raise MailRouterError(
                f"cannot open the control socket {self.path} (setting 'control_socket'): "
                f"{exc.strerror or exc}"
            ) from exc

    async def stop(self) -> None:
        """Close the socket and remove its file."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: Any) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            except (TimeoutError, ValueError, ConnectionError):
                return
            answer = await self._answer(line)
            writer.write(json.dumps(answer, ensure_ascii=False).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            name, args = request["command"], request.get("args") or {}
            if not isinstance(name, str) or not isinstance(args, dict):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            return {
                "ok": False,
                "error": 'a request is one JSON line: {"command": ..., "args": {}}',
            }
        command = self.commands.get(name)
        if command is None:
            known = ", ".join(sorted(self.commands))
            return {"ok": False, "error": f"unknown command {name!r} (known: {known})"}
        try:
            return {"ok": True, "result": await command(args)}
        except MailRouterError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control command %r failed", name)
            return {"ok": False, "error": f"{name} failed: {type(exc).__name__}: {exc}"}


def request(path: Path, command: str, timeout: float | None = 30.0, **args: Any) -> Any:
    """Ask the server listening on ``path`` to run ``command``; its result.

    Raises ``NotListening`` when nothing listens there and ``ControlError`` with the server's
    message when it answers with an error; ``timeout`` None waits as long as the command takes.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with reachable(path) as name:
                sock.connect(name)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise NotListening(f"no server answers on {path}") from exc
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise NotListening(f"no server answers on {path}") from exc
            raise MailRouterError(f"cannot reach the control socket {path}: {exc}") from exc
        payload = {"command": command, "args": args}
        try:
            sock.sendall(json.dumps(payload).encode() + b"\n")
            answer = _read_line(sock)
        except TimeoutError:
            raise MailRouterError(f"the server did not answer {command!r} in {timeout}s") from None
    try:
        reply = json.loads(answer)
        ok = reply["ok"]
    except (ValueError, TypeError, KeyError):
        raise MailRouterError(
            f"the server's answer on {path} is not the control protocol"
        ) from None
    if not ok:
        raise ControlError(str(reply.get("error", "failed")))
    return reply.get("result")


def _read_line(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)
