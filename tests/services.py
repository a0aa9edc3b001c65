"""The real services the tests talk to: Redis and PostgreSQL URLs, ``require`` (skip, or fail
under ``CI=true``), unique names for throwaway tables and prefixes, and a ``Proxy`` in front of
a server that a test stops and starts to take it down and bring it back."""

from __future__ import annotations

import functools
import os
import socket
import threading
import uuid
from collections.abc import Callable
from contextlib import closing, suppress
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

WAIT = 10.0  # seconds to connect through the proxy
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SERVERS = {
    "redis": os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "postgres": os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1/test"),
}


@functools.cache
def _unreachable(kind: str) -> str | None:
    """Why the ``kind`` server cannot be used, or None when it can."""
    try:
        if kind == "redis":
            with closing(redis.Redis.from_url(SERVERS[kind], socket_connect_timeout=2)) as client:
                client.ping()
        else:
            psycopg.connect(SERVERS[kind], connect_timeout=2).close()
    except (redis.RedisError, psycopg.Error, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require(kind: str) -> None:
    """Skip the calling test when the ``kind`` server is down; under ``CI=true`` fail it."""
    if kind == "sqlite" or (reason := _unreachable(kind)) is None:
        return
    message = f"{kind} is not reachable at {SERVERS[kind]} ({reason})"
    if CI:
        pytest.fail(f"{message}; CI must start it")
    pytest.skip(f"{message}; start it, or set CI=true to make this a failure")


def unique() -> str:
    return f"mrtest_{uuid.uuid4().hex[:12]}"


class Proxy:
    """A TCP forwarder to a server that a test can stop (the server "goes down") and restart."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        default_port = 6379 if parts.scheme.startswith("redis") else 5432
        self.target = (parts.hostname or "127.0.0.1", parts.port or default_port)
        self.port = 0
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._stop.clear()
        self._sockets.append(listener)
        self._spawn(self._accept, listener)

    def _spawn(self, target: Callable[..., None], *args: socket.socket) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # stopped
                return
            try:
                upstream = socket.create_connection(self.target, timeout=WAIT)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._guard:
                self._sockets += [client, upstream]
                self._spawn(self._pump, client, upstream)
                self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stop.set()
        with self._guard:
            sockets, self._sockets = self._sockets, []
            threads, self._threads = self._threads, []
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(WAIT)
        for sock in sockets:
            sock.close()
