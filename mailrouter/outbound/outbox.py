"""The outbox: outgoing mail waiting for another attempt, and the maildir of mail that failed.

Both are ``Queue`` maildirs. An outbox entry holds only the recipients still to be tried, and
each recipient's reason line carries the retry schedule in front of the last reply::

    X-Original-To: bob@example.com
    X-Mailrouter-Reason: attempts=3 first=1767225600 next=1767225840 451 4.3.0 Try later

so the attempt count and the next attempt time survive a restart with the message itself. A retry
writes the entry for the recipients still deferred (with the next schedule) before it removes the
old one: a crash in between means a second attempt, never a lost message.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Literal

from mailrouter.errors import QueueError
from mailrouter.message import MailRequest
from mailrouter.queue import Queue, QueueEntry

log = logging.getLogger(__name__)

AttemptStatus = Literal["delivered", "deferred", "failed"]
_SCHEDULE = re.compile(r"attempts=(\d+) first=(\d+(?:\.\d*)?) next=(\d+(?:\.\d*)?) ?(.*)", re.S)
_LOCK_FILE = "retry.lock"
_CONCURRENCY = 8  # outbox entries tried at the same time


@dataclass(frozen=True)
class Attempt:
    """What became of one recipient in one delivery attempt, with the server's reply."""

    status: AttemptStatus
    reply: str


Deliver = Callable[[str, list[str], bytes], Awaitable[dict[str, Attempt]]]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``initial`` seconds, times ``factor`` per attempt, up to ``maximum``;
    a recipient still deferred ``expire`` seconds after its first attempt has failed."""

    initial: float = 60.0
    factor: float = 2.0
    maximum: float = 3600.0
    expire: float = 5 * 86400.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        return float(min(self.maximum, self.initial * self.factor ** max(0, attempts - 1)))


@dataclass(frozen=True)
class Schedule:
    """The retry state of an outbox entry: attempts made, first and next attempt (epoch s)."""

    attempts: int
    first: float
    next: float

    def encode(self, reply: str) -> str:
        """The reason line stored for a recipient: this schedule, then the last reply."""
        return f"attempts={self.attempts} first={self.first:.0f} next={self.next:.0f} {reply}"

    @classmethod
    def decode(cls, reason: str, queued_at: float) -> tuple[Schedule, str]:
        """The schedule and reply in a reason line; an entry written by hand is due now."""
        match = _SCHEDULE.fullmatch(reason)
        if match is None:
            return cls(0, queued_at, queued_at), reason
        attempts, first, next_ = match.groups()[:3]
        return cls(int(attempts), float(first), float(next_)), match.group(4)


@dataclass(frozen=True)
class Stored:
    """Where the undelivered part of a message went: outbox and failed-maildir keys."""

    deferred: Mapping[str, str]
    failed: Mapping[str, str]
    outbox_key: str | None = None
    failed_key: str | None = None
    retry_at: float | None = None


@dataclass(frozen=True)
class RetryReport:
    """What one pass over the outbox did (counts of recipients) and when the next entry is due."""

    entries: int = 0
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    next_due: float | None = None
    busy: bool = False


def clean_reply(text: str) -> str:
    """A server reply or error on one line, for a reason header or a log line."""
    return " ".join(str(text).split())


class Outbox:
    """The relay's outbox (deferred mail) and failed maildir; either may be None (not kept)."""

    def __init__(
        self,
        outbox: str | os.PathLike[str] | None,
        failed: str | os.PathLike[str] | None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.queue = None if outbox is None else Queue(outbox)
        self.failed = None if failed is None else Queue(failed)
        self.policy = policy or RetryPolicy()

    async def store(
        self,
        sender: str,
        data: bytes,
        attempts: Mapping[str, Attempt],
        schedule: Schedule | None = None,
        now: float | None = None,
    ) -> Stored:
        """Keep what ``attempts`` did not deliver: deferred recipients in the outbox with their
        next schedule (or failed when they have expired), failed ones in the failed maildir."""
        now = time.time() if now is None else now
        deferred = {r: a.reply for r, a in attempts.items() if a.status == "deferred"}
        failed = {r: a.reply for r, a in attempts.items() if a.status == "failed"}
        outbox_key = failed_key = None
        retry_at = None
        if deferred:
            count = (schedule.attempts if schedule else 0) + 1
            first = schedule.first if schedule else now
            if now - first >= self.policy.expire:
                for rcpt, reply in deferred.items():
                    failed[rcpt] = f"gave up after {count} attempts: {reply}"
                deferred = {}
            elif self.queue is not None:
                retry_at = now + self.policy.delay(count)
                upcoming = Schedule(count, first, retry_at)
                reasons = {rcpt: upcoming.encode(reply) for rcpt, reply in deferred.items()}
                outbox_key = await asyncio.to_thread(
                    self.queue.push, MailRequest(None, sender, list(deferred), data), reasons
                )
        if failed and self.failed is not None:
            failed_key = await asyncio.to_thread(
                self.failed.push, MailRequest(None, sender, list(failed), data), failed
            )
        return Stored(deferred, failed, outbox_key, failed_key, retry_at)

    async def retry_once(
        self,
        deliver: Deliver,
        now: float | None = None,
        *,
        ignore_schedule: bool = False,
        keys: Collection[str] | None = None,
    ) -> RetryReport:
        """Try every outbox entry that is due at ``now`` (default: the current time) once; with
        ``ignore_schedule``, every entry, due or not (expiry still counts from ``now``); with
        ``keys``, only the entries of those keys.

        Only one pass runs at a time over one outbox, across threads and processes (a lock
        file): a pass that finds another one running returns at once with ``busy`` set.
        """
        if self.queue is None:
            return RetryReport()
        queue = self.queue
        now = time.time() if now is None else now
        lock = await asyncio.to_thread(_try_lock, Path(queue.path) / _LOCK_FILE)
        if lock is None:
            return RetryReport(busy=True)
        try:
            entries = await asyncio.to_thread(_read_all, queue)
            if keys is not None:
                entries = [entry for entry in entries if entry.key in keys]
            due: list[tuple[QueueEntry, Schedule]] = []
            next_due: float | None = None
            for entry in entries:
                schedule = schedule_of(entry)
                if ignore_schedule or schedule.next <= now:
                    due.append((entry, schedule))
                else:
                    next_due = schedule.next if next_due is None else min(next_due, schedule.next)
            limit = asyncio.Semaphore(_CONCURRENCY)

            async def retry(entry: QueueEntry, schedule: Schedule) -> Stored | None:
                async with limit:
                    return await self._retry_entry(queue, entry, schedule, deliver, now)

            results = await asyncio.gather(*(retry(entry, sched) for entry, sched in due))
        finally:
            await asyncio.to_thread(os.close, lock)
        delivered = deferred = failed = 0
        for (entry, _), stored in zip(due, results, strict=True):
            if stored is None:
                continue
            deferred += len(stored.deferred)
            failed += len(stored.failed)
            delivered += len(entry.message.recipients) - len(stored.deferred) - len(stored.failed)
            if stored.retry_at is not None:
                next_due = min(stored.retry_at, stored.retry_at if next_due is None else next_due)
        return RetryReport(len(due), delivered, deferred, failed, next_due)

    async def _retry_entry(
        self, queue: Queue, entry: QueueEntry, schedule: Schedule, deliver: Deliver, now: float
    ) -> Stored | None:
        """One attempt for one entry; None (entry kept as it is) if the result cannot be stored."""
        sender, recipients = entry.message.sender, list(entry.message.recipients)
        attempts = await deliver(sender, recipients, entry.data)
        try:
            stored = await self.store(sender, entry.data, attempts, schedule, now)
            await asyncio.to_thread(queue.remove, entry.key)
        except (QueueError, KeyError) as exc:
            log.error("outbox %s: cannot update entry %s: %s", queue.path, entry.key, exc)
            return None
        message_id = _message_id(entry.data)
        for rcpt, attempt in attempts.items():
            if attempt.status == "delivered":
                log.info(
                    "sent %s from %r to %r on retry: %r", message_id, sender, rcpt, attempt.reply
                )
        for rcpt, reply in stored.deferred.items():
            log.info("deferred %s from %r to %r again: %r", message_id, sender, rcpt, reply)
        for rcpt, reply in stored.failed.items():
            log.error("failed %s from %r to %r: %r", message_id, sender, rcpt, reply)
        return stored


def _message_id(data: bytes) -> str:
    """The Message-ID in ``data``'s header, for log lines ("" when there is none)."""
    header = BytesHeaderParser(policy=policy.default).parsebytes(data)
    return " ".join(str(header.get("Message-ID", "")).split())


def replies_of(entry: QueueEntry) -> dict[str, tuple[Schedule, str]]:
    """Each recipient of an outbox entry with its retry schedule and the last reply."""
    queued_at = entry.queued_at.timestamp()
    return {rcpt: Schedule.decode(reason, queued_at) for rcpt, reason in entry.reasons.items()}


def schedule_of(entry: QueueEntry) -> Schedule:
    """The entry's schedule: the earliest next attempt among its recipients' reason lines."""
    schedules = [schedule for schedule, _ in replies_of(entry).values()]
    if not schedules:
        queued_at = entry.queued_at.timestamp()
        return Schedule(0, queued_at, queued_at)
    return min(schedules, key=lambda schedule: schedule.next)


def _read_all(queue: Queue) -> list[QueueEntry]:
    """Every readable entry; a corrupt one is logged and left alone for a human to look at."""
    entries = []
    for key in queue.keys():  # noqa: SIM118 (a Queue is not a mapping)
        try:
            entries.append(queue.read(key))
        except KeyError:
            continue
        except QueueError as exc:
            log.error("outbox %s: skipping unreadable entry %s: %s", queue.path, key, exc)
    return entries


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on ``path``, or None if it is taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd
