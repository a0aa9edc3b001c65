"""``postgresql://user@host/db``: states in a PostgreSQL table, shared by processes and hosts.

Needs the ``mailrouter[postgres]`` extra (psycopg 3 and psycopg_pool). Schema, created on first
open (``table`` defaults to ``mailrouter_state``)::

    CREATE TABLE IF NOT EXISTS mailrouter_state (
        key text NOT NULL, sender text NOT NULL, state text NOT NULL,
        updated timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (key, sender))

``set`` is an upsert and ``START`` deletes the row. Text PostgreSQL cannot hold as it is (lone
surrogates, NUL) is escaped (``_common.to_text``); the database must be UTF8.

``lock(key, sender)`` is a session-level ``pg_advisory_lock(id)`` (``id``: 64 bits of a BLAKE2b
hash of the table, key and sender) on a connection of a second pool, held until released; a
separate pool, so handlers holding locks never starve ``get``/``set`` of connections. A crashed
process's connections die and their advisory locks with them: that is the expiry. A wait is
bounded by ``lock_wait`` (the session's ``lock_timeout``); ``close()`` cancels waits.

URL options: ``table``, ``lock_wait`` (60 s), ``timeout`` (5 s to get a connection; also the
default ``connect_timeout``), ``pool_size`` (4 connections for states), ``max_locks`` (16 locks
held at once); other query options go to libpq (``sslmode``, ...). A broken connection is
discarded and the call retried once on a fresh one, so the store reconnects by itself; while the
server is unreachable every call raises ``StoreError``. ``readonly=True`` creates nothing (a
missing table reads as empty) and refuses writes and locks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from mailrouter.errors import StoreError
from mailrouter.state.base import START
from mailrouter.state.shared import SharedStore, StoreURL, from_text, to_text, url_options

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = psycopg.Connection[TupleRow]

_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


class PostgresStorage(SharedStore[Connection]):
    """States in one PostgreSQL table; cross-process locks as advisory locks."""

    def __init__(
        self,
        conninfo: str = "",
        *,
        readonly: bool = False,
        table: str = "mailrouter_state",
        lock_wait: float = 60.0,
        timeout: float = 5.0,
        pool_size: int = 4,
        max_locks: int = 16,
    ) -> None:
        shown = StoreURL(conninfo, ()).shown
        super().__init__(shown, readonly=readonly, lock_wait=lock_wait)
        if not _TABLE.fullmatch(table):
            raise StoreError(f"state store {shown}: {table!r} is not a plain [schema.]table name")
        self.table = table
        ident = sql.Identifier(*table.split("."))
        self._sql = {
            name: sql.SQL(text).format(ident)
            for name, text in {
                "create": "CREATE TABLE IF NOT EXISTS {} (key text NOT NULL, sender text NOT NULL,"
                " state text NOT NULL, updated timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (key, sender))",
                "get": "SELECT state FROM {} WHERE key = %s AND sender = %s",
                "items": "SELECT key, sender, state FROM {}",
                "delete": "DELETE FROM {} WHERE key = %s AND sender = %s",
                "upsert": "INSERT INTO {} (key, sender, state) VALUES (%s, %s, %s)"
                " ON CONFLICT (key, sender) DO UPDATE SET state = EXCLUDED.state, updated = now()",
                "clear": "DELETE FROM {}",
            }.items()
        }
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            raise StoreError(f"state store URL {shown!r}: {exc}") from exc
        extra: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            extra["connect_timeout"] = max(2, math.ceil(timeout))
        self._guard = threading.Lock()
        self._waiting: set[Connection] = set()
        # A short reconnect_timeout ends a pool's backoff soon, so once the server is back the
        # next request connects at once instead of waiting for a far-off retry.
        reconnect = max(5.0, timeout)
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            conninfo, kwargs=extra, min_size=1, max_size=pool_size, timeout=timeout,
            reconnect_timeout=reconnect, name="mailrouter-state", num_workers=2, open=True,
        )  # fmt: skip
        self._lock_pool: ConnectionPool[Connection] = ConnectionPool(
            conninfo, kwargs=extra, min_size=0, max_size=max_locks, timeout=lock_wait,
            reconnect_timeout=reconnect, configure=self._configure_lock_conn,
            name="mailrouter-locks", num_workers=1, open=True,
        )  # fmt: skip
        try:
            if not readonly:
                self._run("create the table", self._create)
        except BaseException:
            self._close_pools()
            raise

    @classmethod
    def from_url(cls, url: str, *, readonly: bool = False) -> PostgresStorage:
        """Open ``postgresql://[user[:password]@]host[:port]/db?options``."""
        options = url_options(cls)
        parsed = StoreURL(url, options)
        return cls(parsed.without_ours(), readonly=readonly, **parsed.keywords(options))

    def _configure_lock_conn(self, conn: Connection) -> None:
        timeout = f"{math.ceil(self.lock_wait * 1000)}ms"
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (timeout,))

    def _create(self, conn: Connection) -> None:
        with conn.transaction():  # concurrent CREATE TABLE IF NOT EXISTS may otherwise collide
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id("", ""),))
            conn.execute(self._sql["create"])

    def _run(self, what: str, operation: Callable[[Connection], T]) -> T:
        """Run ``operation`` on a pooled connection; retry once if the connection was broken."""
        for attempt in (1, 2):
            self._check_open()
            used: Connection | None = None
            try:
                with self._pool.connection() as conn:
                    used = conn
                    return operation(conn)
            except psycopg.Error as exc:
                if attempt == 1 and used is not None and used.closed:
                    log.info("state store %s: reconnecting after: %s", self._shown, exc)
                    self._pool.check()  # drop the pool's other dead connections too
                    continue
                raise StoreError(f"state store {self._shown}: cannot {what}: {exc}") from exc
        raise AssertionError("unreachable")

    def get(self, key: str, sender: str) -> str:
        """The state of ``sender`` under ``key``, or ``START``."""

        def get(conn: Connection) -> str:
            try:
                row = conn.execute(self._sql["get"], (to_text(key), to_text(sender))).fetchone()
            except psycopg.errors.UndefinedTable:
                if self.readonly:
                    return START
                raise
            return START if row is None else from_text(row[0])

        return self._run("read a state", get)

    def items(self) -> list[tuple[str, str, str]]:
        """Every stored ``(key, sender, state)``, read in one SELECT."""

        def items(conn: Connection) -> list[tuple[str, str, str]]:
            try:
                rows = conn.execute(self._sql["items"]).fetchall()
            except psycopg.errors.UndefinedTable:
                if self.readonly:
                    return []
                raise
            return [(from_text(k), from_text(s), from_text(v)) for k, s, v in rows]

        return self._run("list the states", items)

    def set(self, key: str, sender: str, state: str) -> None:
        """Store ``state``; ``START`` deletes the row."""
        self._writable()
        row = (to_text(key), to_text(sender))
        if state == START:
            self._run("store a state", lambda conn: conn.execute(self._sql["delete"], row))
        else:
            values = (*row, to_text(state))
            self._run("store a state", lambda conn: conn.execute(self._sql["upsert"], values))

    def clear(self) -> None:
        """Remove every state in the table."""
        self._writable()
        self._run("clear the states", lambda conn: conn.execute(self._sql["clear"]))

    def _lock_id(self, key: str, sender: str) -> int:
        text = json.dumps([self.table, key, sender], ensure_ascii=False)
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def _acquire(self, key: str, sender: str) -> Connection:
        ident = self._lock_id(key, sender)
        for attempt in (1, 2):
            self._check_open()
            try:
                conn = self._lock_pool.getconn()
            except PoolTimeout as exc:
                raise StoreError(
                    f"state store {self._shown}: no connection for a lock: {exc}"
                ) from exc
            except psycopg.Error as exc:
                raise StoreError(f"state store {self._shown}: cannot lock: {exc}") from exc
            with self._guard:
                self._waiting.add(conn)
            try:
                conn.execute("SELECT pg_advisory_lock(%s)", (ident,))
            except BaseException as exc:
                self._forget(conn)
                broken = conn.closed
                self._lock_pool.putconn(conn)
                if isinstance(exc, psycopg.errors.LockNotAvailable):
                    raise StoreError(
                        f"state store {self._shown}: gave up after {self.lock_wait:g} s waiting"
                        f" for the lock of {sender!r} under {key!r}"
                    ) from exc
                if not isinstance(exc, psycopg.Error):
                    raise
                if attempt == 1 and broken and not self._closing.is_set():
                    self._lock_pool.check()
                    continue
                self._check_open()  # a wait cancelled by close()
                raise StoreError(f"state store {self._shown}: cannot lock: {exc}") from exc
            self._forget(conn)
            return conn
        raise AssertionError("unreachable")

    def _forget(self, conn: Connection) -> None:
        with self._guard:
            self._waiting.discard(conn)

    def _release(self, key: str, sender: str, handle: Connection) -> None:
        try:
            row = handle.execute("SELECT pg_advisory_unlock(%s)", (self._lock_id(key, sender),))
            if not (row.fetchone() or (False,))[0]:
                log.warning("the lock of %r under %r was not held at release", sender, key)
        except psycopg.Error as exc:  # a dead connection took the lock with it
            log.warning(
                "the lock of %r under %r was lost with its connection: %s", sender, key, exc
            )
        finally:
            self._lock_pool.putconn(handle)

    def _close_pools(self) -> None:
        self._pool.close()
        self._lock_pool.close()

    def close(self) -> None:
        """Cancel lock waits and close both pools; idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        with self._guard:
            waiting = list(self._waiting)
        for conn in waiting:
            try:
                conn.cancel()
            except psycopg.Error as exc:
                log.debug("cannot cancel a lock wait: %s", exc)
        self._close_pools()
