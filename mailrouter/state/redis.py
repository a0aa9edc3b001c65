"""``redis://host:port/db``: states in Redis, shared by any number of processes and hosts.

Needs the ``mailrouter[redis]`` extra. Key layout, under ``prefix`` (default ``mailrouter:``)::

    <prefix>state                  a hash: field ["<key>","<sender>"] (JSON) -> state
    <prefix>lock:["<key>","<sender>"]   a string: the owner token, with a TTL

Strings are stored as UTF-8 (lone surrogates from non-UTF-8 envelopes pass through as such).
``clear()`` unlinks only the state hash; ``items()`` reads it with ``HSCAN``, a page at a time,
so a huge hash never blocks the server the way one ``HGETALL`` would.

``lock(key, sender)`` is ``SET NX PX`` of a random owner token (in a Lua script that also accepts
our own token, so a retried command is harmless), polled with a short backoff. It is released
by a Lua compare-and-delete, so a lock that expired and was taken by another process is never
deleted by its old holder. A lease lasts ``lock_timeout`` seconds and is renewed while held, so
only a crashed (or stalled) holder's lock expires.

URL options: ``prefix``, ``lock_timeout`` (30 s), ``lock_wait`` (60 s: waiting longer raises
``StoreError``); any other query option goes to redis-py (``socket_timeout`` defaults to 5 s).
A dropped connection is replaced and the command retried once; when the server cannot be
reached, every call raises ``StoreError`` until it can. ``readonly=True`` refuses writes and
locks (the CLI inspects states with it); it opens the server like a writer, which locks nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mailrouter.errors import StoreError
from mailrouter.state.base import START
from mailrouter.state.shared import Leases, SharedStore, StoreURL, new_token, url_options

log = logging.getLogger(__name__)

_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


_SCAN_PAGE = 1000  # fields per HSCAN call (a hint to the server)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _decode(data: bytes) -> str:
    return bytes(data).decode("utf-8", "surrogatepass")


class RedisStorage(SharedStore[str]):
    """States in one Redis hash; cross-process locks as expiring Redis keys."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        readonly: bool = False,
        prefix: str = "mailrouter:",
        lock_timeout: float = 30.0,
        lock_wait: float = 60.0,
    ) -> None:
        parsed = StoreURL(url, ())
        super().__init__(parsed.shown, readonly=readonly, lock_wait=lock_wait)
        if not prefix:
            raise StoreError(f"state store {parsed.shown}: the key prefix must not be empty")
        self.prefix = prefix
        self.lock_timeout = lock_timeout
        self._hash = _encode(f"{prefix}state")
        self._leases = Leases(lock_timeout, self._renew, f"mailrouter-redis-leases {prefix}")
        try:
            self._pool = redis.ConnectionPool.from_url(
                url,
                socket_timeout=5.0,
                socket_connect_timeout=5.0,
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            )
        except ValueError as exc:
            raise StoreError(f"state store URL {parsed.shown!r}: {exc}") from exc
        self._client = redis.Redis(connection_pool=self._pool)
        self._take = self._client.register_script(_TAKE)
        self._renew_script = self._client.register_script(_RENEW)
        self._release_script = self._client.register_script(_RELEASE)
        try:
            self._call(self._client.ping)
        except TypeError as exc:  # an option redis-py does not know
            self._close_pool()
            raise StoreError(f"state store URL {parsed.shown!r}: {exc}") from exc
        except BaseException:
            self._close_pool()
            raise

    @classmethod
    def from_url(cls, url: str, *, readonly: bool = False) -> RedisStorage:
        """Open ``redis://[user:password@]host:port/db?options`` (or ``rediss://``)."""
        options = url_options(cls)
        parsed = StoreURL(url, options)
        return cls(parsed.without_ours(), readonly=readonly, **parsed.keywords(options))

    def _call(self, command: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one redis-py call, its failures as ``StoreError``."""
        self._check_open()
        try:
            return command(*args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            raise StoreError(f"state store {self._shown}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _field(key: str, sender: str) -> bytes:
        return _encode(json.dumps([key, sender], ensure_ascii=False))

    def _lock_key(self, key: str, sender: str) -> bytes:
        return _encode(self.prefix) + b"lock:" + self._field(key, sender)

    def get(self, key: str, sender: str) -> str:
        """The state of ``sender`` under ``key``, or ``START``."""
        value = self._call(self._client.hget, self._hash, self._field(key, sender))
        return START if value is None else _decode(value)

    def set(self, key: str, sender: str, state: str) -> None:
        """Store ``state``; ``START`` removes the entry."""
        self._writable()
        if state == START:
            self._call(self._client.hdel, self._hash, self._field(key, sender))
        else:
            self._call(self._client.hset, self._hash, self._field(key, sender), _encode(state))

    def items(self) -> list[tuple[str, str, str]]:
        """Every stored ``(key, sender, state)``, read with HSCAN (which may repeat a field)."""
        found: dict[bytes, bytes] = {}
        cursor = 0
        while True:
            cursor, page = self._call(self._client.hscan, self._hash, cursor, count=_SCAN_PAGE)
            found.update(page)
            if not cursor:
                break
        listed = []
        for field, state in found.items():
            key, sender = json.loads(_decode(field))
            listed.append((key, sender, _decode(state)))
        return listed

    def clear(self) -> None:
        """Remove every state under this prefix (locks held meanwhile stay held)."""
        self._writable()
        self._call(self._client.unlink, self._hash)

    def _acquire(self, key: str, sender: str) -> str:
        token = new_token()
        args = [token, int(self.lock_timeout * 1000)]
        lock_key = self._lock_key(key, sender)
        self._poll(lambda: bool(self._call(self._take, [lock_key], args)), key, sender)
        self._leases.add(token, key, sender)
        return token

    def _release(self, key: str, sender: str, handle: str) -> None:
        self._leases.remove(handle)
        try:
            self._call(self._release_script, [self._lock_key(key, sender)], [handle])
        except StoreError as exc:  # the lease runs out by itself
            log.warning("cannot release the lock of %r under %r: %s", sender, key, exc)

    def _renew(self, held: list[tuple[str, str, str]]) -> None:
        ttl = int(self.lock_timeout * 1000)
        pipe = self._client.pipeline(transaction=False)
        for token, key, sender in held:
            self._renew_script([self._lock_key(key, sender)], [token, ttl], client=pipe)
        renewed = self._call(pipe.execute)
        for (token, key, sender), ok in zip(held, renewed, strict=True):
            if not ok and token in self._leases:
                log.warning("the lock of %r under %r expired while held", sender, key)

    def _close_pool(self) -> None:
        self._client.close()
        self._pool.disconnect()

    def close(self) -> None:
        """Stop renewing leases and close every connection; idempotent."""
        if self._closing.is_set():
            return
        self._leases.stop()
        self._closing.set()
        self._close_pool()
