"""Copies of the messages received, kept for the web console's message page.

The journal keeps each message's envelope, headers and outcomes, not its bytes. While the
console is on (``console_port``), the server registers ``MessageCopies.observe`` with the
receiver (``Server.keep_copies``; every worker, into the one file): it only puts the bytes on a
list, under the delivery id the journal computed. After the event loop's pass (the replies of that
pass written, so never on the way to a 250), one thread of its own writes the batch into one
SQLite file, ``console_messages`` (a row per delivery id), in one transaction: one thread hop
and one commit per batch, not per message, and no file created per message, whose metadata
every fsync of the journal on the same filesystem would have to carry. It is a convenience
copy, not the delivery promise: ``synchronous = OFF``, and a failed write is logged and
forgotten. Copies older than the journal's retention are purged by the same thread, at start
and then hourly as mail arrives. ``console_messages = ""`` keeps none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mailrouter.config import Settings
from mailrouter.inbound.outcome import DeliveryRecord
from mailrouter.state.sqlite import switch_to_wal

log = logging.getLogger(__name__)

PURGE_EVERY = 3600.0  # seconds between purges of old copies
THREAD = "mailrouter-io-copies"  # the writer's thread name (an I/O thread of the server)
_ID = re.compile(r"[0-9a-f]{32}")


class MessageCopies:
    """The kept messages, by delivery id, in one SQLite file; ``observe`` is a receiver observer."""

    def __init__(self, path: Path, retention_days: float) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._guard = threading.Lock()  # the writer thread, and a purge called from elsewhere
        self.retention = retention_days * 86400  # seconds
        self._writer: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._purged = 0.0
        self._pending: list[tuple[str, bytes]] = []  # (delivery id, bytes)
        self._written: Future[None] | None = None  # the writer's task of the last batch

    @classmethod
    def of_settings(cls, settings: Settings) -> MessageCopies | None:
        """The copies ``settings`` name (``console_messages``; ``""``: none are kept)."""
        if not settings.console_messages:
            return None
        return cls(settings.path(settings.console_messages), settings.journal_retention_days)

    def start(self) -> None:
        """Start the writer thread, on the running loop; it purges old copies first."""
        self._loop = asyncio.get_running_loop()
        self._writer = ThreadPoolExecutor(1, THREAD)
        self._writer.submit(self._purge_due)

    def stop(self) -> None:
        """Write what is pending, let the writes finish, then end the thread."""
        self._flush()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.submit(self._close)
            writer.shutdown(wait=True)

    def _close(self) -> None:
        with self._guard:
            db, self._db = self._db, None
            if db is not None:
                db.close()

    def observe(self, record: DeliveryRecord) -> None:
        """Keep ``record``'s bytes, once the reply is on its way (see the module doc); not
        those of a message the journal has no entry of (refused before it: no page shows it)."""
        if self._loop is None or not record.data or not record.delivery_id:
            return
        self._pending.append((record.delivery_id, record.data))
        if len(self._pending) == 1:  # after this loop pass: once the replies are written
            self._loop.call_soon(self._flush)

    async def written(self) -> None:
        """Once the copies observed so far are written (the console's compose shows its
        message's page next)."""
        self._flush()
        if self._written is not None:
            await asyncio.wrap_future(self._written)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if self._writer is not None and batch:
            self._written = self._writer.submit(self._write, batch)

    def _write(self, batch: list[tuple[str, bytes]]) -> None:
        self.keep(batch)
        self._purge_due()

    def keep(self, batch: list[tuple[str, bytes]]) -> None:
        """Write each (delivery id, bytes) copy, the batch in one transaction. Blocks."""
        rows = [(ident, time.time(), data) for ident, data in batch]
        try:
            with self._database() as db:
                db.executemany(
                    "INSERT OR REPLACE INTO copies (id, kept_at, data) VALUES (?, ?, ?)", rows
                )
        except (OSError, sqlite3.Error) as exc:
            log.warning("cannot keep copies of messages in %s: %s", self.path, exc)

    def _purge_due(self) -> None:
        now = time.time()
        if now - self._purged >= PURGE_EVERY:
            self._purged = now
            self.purge(now - self.retention)

    def purge(self, before: float) -> int:
        """Delete the copies kept before ``before`` (epoch seconds); how many."""
        try:
            with self._database() as db:
                removed = db.execute("DELETE FROM copies WHERE kept_at < ?", (before,)).rowcount
        except (OSError, sqlite3.Error) as exc:
            log.warning("cannot purge the message copies in %s: %s", self.path, exc)
            return 0
        if removed:
            log.info("purged %d kept message copies", removed)
        return int(removed)

    def read(self, ident: str) -> bytes | None:
        """The bytes kept for delivery id ``ident``, or None."""
        if not _ID.fullmatch(ident) or not self.path.exists():
            return None
        with contextlib.closing(sqlite3.connect(self.path, timeout=10.0)) as db:
            try:
                row = db.execute("SELECT data FROM copies WHERE id = ?", (ident,)).fetchone()
            except sqlite3.OperationalError:  # no table yet
                return None
        return None if row is None else bytes(row[0])

    @contextlib.contextmanager
    def _database(self) -> Iterator[sqlite3.Connection]:
        """The writer's connection (opened once), in a transaction, one caller at a time."""
        with self._guard:
            db = self._open()
            with db:
                yield db

    def _open(self) -> sqlite3.Connection:
        """The connection, opened and the table made on first use."""
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
            switch_to_wal(db, 10.0)
            db.execute("PRAGMA synchronous = OFF")
            db.execute(
                "CREATE TABLE IF NOT EXISTS copies"
                " (id TEXT PRIMARY KEY, kept_at REAL NOT NULL, data BLOB NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS copies_kept_at ON copies (kept_at)")
            self._db = db
        return self._db
