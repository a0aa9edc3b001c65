"""Login throttling: a token someone chose may be guessable, so guesses are limited.

After ``LIMIT`` failed logins from one client within ``WINDOW`` seconds, its further attempts
are refused (``429`` with ``Retry-After``) until the oldest of those failures is ``WINDOW`` old;
a successful login clears its count. A client is its address (an IPv6 one by its /64, which one
host usually holds whole); behind a proxy on loopback, uvicorn takes it from
``X-Forwarded-For``. Kept in memory by the console's app: a restart forgets it.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable

LIMIT = 5  # failed logins a client may make within the window
WINDOW = 300.0  # seconds


class Throttle:
    """Failed logins per client, within a sliding window; ``clock`` gives seconds."""

    def __init__(
        self,
        limit: int = LIMIT,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        # client -> its failures' times, oldest first; clients in the order of their last one
        self._failures: dict[str, deque[float]] = {}

    def wait(self, address: str) -> int:
        """The seconds before ``address`` may try to log in again (0: now)."""
        failures = self._recent(_client(address))
        if len(failures) < self.limit:
            return 0
        return max(1, math.ceil(failures[0] + self.window - self.clock()))

    def failed(self, address: str) -> None:
        """Count a failed login from ``address``."""
        client = _client(address)
        failures = self._recent(client)
        failures.append(self.clock())
        self._failures.pop(client, None)
        self._failures[client] = failures  # the newest last: the expired go from the front
        self._forget_expired()

    def succeeded(self, address: str) -> None:
        """``address`` logged in: its failures no longer count."""
        self._failures.pop(_client(address), None)

    def _recent(self, client: str) -> deque[float]:
        """The client's failures within the window (the older ones dropped)."""
        failures = self._failures.get(client, deque())
        since = self.clock() - self.window
        while failures and failures[0] <= since:
            failures.popleft()
        return failures

    def _forget_expired(self) -> None:
        """Drop the clients whose last failure left the window (the memory stays bounded)."""
        since = self.clock() - self.window
        while self._failures:
            client, failures = next(iter(self._failures.items()))
            if failures and failures[-1] > since:
                break
            del self._failures[client]


def _client(address: str) -> str:
    """The throttled unit of a client address: itself, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
