"""``postgresql://user@host/db``: the journal in PostgreSQL, shared by processes and hosts.

Needs the ``mailrouter[postgres]`` extra (psycopg 3 and psycopg_pool). The tables (see
``journal.base``) are created on first use; every write is an upsert (``INSERT ... ON
CONFLICT``), so instances sharing the database see each other's receptions and done marks.
``begin`` is one round trip (a SELECT, no transaction), so is a reception's later ``record``
(one statement that commits on its own); its first write and ``finish`` are one transaction,
and the writes the server queues in one pass of its event loop share one (``run_all``).

URL options: ``table`` (``mailrouter_journal``; the recipients' table is ``<table>_recipients``),
``timeout`` (5 s to get a connection; also the default ``connect_timeout``), ``pool_size`` (4);
other query options go to libpq (``sslmode``, ...). A broken connection is discarded and the call
retried once on a fresh one, so the journal reconnects by itself; while the server is unreachable
every call raises ``JournalError``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from mailrouter.journal.backend import Cursor, Dialect, JournalError, JournalURL, Work
from mailrouter.journal.base import Journal

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = psycopg.Connection[TupleRow]


class PostgresDatabase:
    """A pool of autocommit connections to one PostgreSQL database."""

    dialect = Dialect(
        "%s",
        "double precision",
        "bigint",
        exists="SELECT 1 WHERE to_regclass('{quoted}') IS NOT NULL",
        ddl_lock="SELECT pg_advisory_xact_lock(hashtext(?))",  # concurrent CREATEs collide
    )

    def __init__(self, conninfo: str, shown: str, *, timeout: float = 5.0, pool_size: int = 4):
        self.shown = shown
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            raise JournalError(f"journal URL {shown!r}: {exc}") from exc
        extra: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            extra["connect_timeout"] = max(2, math.ceil(timeout))
        self._closed = threading.Event()
        # A short reconnect_timeout ends the pool's backoff soon, so once the server is back the
        # next call connects at once instead of waiting for a far-off retry.
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            conninfo, kwargs=extra, min_size=1, max_size=pool_size, timeout=timeout,
            reconnect_timeout=max(5.0, timeout), name="mailrouter-journal", num_workers=2,
            open=True,
        )  # fmt: skip

    def run(self, what: str, work: Callable[[Cursor], T], *, write: bool, atomic: bool) -> T:
        """``work`` on a pooled connection, in a transaction if ``atomic``; one retry if broken."""
        for attempt in (1, 2):
            if self._closed.is_set():
                raise JournalError(f"journal {self.shown} is closed")
            used: Connection | None = None
            try:
                with self._pool.connection() as conn, conn.cursor() as cur:
                    used = conn
                    if not atomic:
                        return work(cur)
                    with conn.transaction():
                        return work(cur)
            except psycopg.Error as exc:
                if attempt == 1 and used is not None and used.closed:
                    log.info("journal %s: reconnecting after: %s", self.shown, exc)
                    self._pool.check()  # drop the pool's other dead connections too
                    continue
                raise JournalError(f"journal {self.shown}: cannot {what}: {exc}") from exc
        raise AssertionError("unreachable")

    def run_all(self, works: Sequence[Work]) -> list[JournalError | None]:
        """Several writes in one transaction, one commit for them all. A write the server
        refuses undoes the batch, which then runs again with each write in a savepoint of its
        own, so that it fails alone; a failure of the connection is every write's."""
        if not works:
            return []
        errors: list[JournalError | None] = [None] * len(works)

        def together(cur: Cursor) -> None:
            for work in works:
                work.run(cur)

        def each_alone(cur: Cursor) -> None:
            for index, work in enumerate(works):
                cur.execute("SAVEPOINT one", ())
                try:
                    work.run(cur)
                except psycopg.Error as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT one", ())
                    errors[index] = JournalError(f"journal {self.shown}: cannot {work.what}: {exc}")
                cur.execute("RELEASE SAVEPOINT one", ())

        try:
            self.run("write", together, write=True, atomic=True)
            return errors
        except JournalError as exc:
            refused = isinstance(exc.__cause__, psycopg.Error) and exc.__cause__.sqlstate
            if len(works) == 1 or not refused:  # nothing to tell apart, or no server to ask
                return [exc] * len(works)
        try:
            self.run("write", each_alone, write=True, atomic=True)
        except JournalError as exc:
            return [exc] * len(works)
        return errors

    def close(self) -> None:
        """Close the pool; idempotent."""
        self._closed.set()
        self._pool.close()


def open_url(url: str) -> Journal:
    """The journal of ``postgresql://[user[:password]@]host[:port]/db?options``."""
    parsed = JournalURL(url, ("table", "timeout", "pool_size"))
    table = parsed.table()
    db = PostgresDatabase(
        parsed.without_ours(),
        parsed.shown,
        timeout=parsed.number("timeout", 5.0),
        pool_size=int(parsed.number("pool_size", 4, whole=True)),
    )
    return Journal(db, table)
