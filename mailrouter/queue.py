"""The undeliverable queue: a crash-safe maildir of messages no handler could take.

Each entry is the original message bytes, kept exactly, behind a block of trace headers that
records the true envelope, like an MTA's final delivery::

    Return-Path: <sender>
    X-Original-To: rcpt            (one per recipient, each followed by its reason)
    X-Mailrouter-Reason: no route
    X-Mailrouter-Peer: 127.0.0.1 4000
    X-Mailrouter-Queued: <RFC 5322 date>    (always last: the end of the block)

The peer is written ``host port`` for a ``(host, port[, ...])`` tuple with a non-negative int
port and a host without blanks or NUL that does not start with ``"`` (read back as
``(host, int(port))``); ``-`` for None; and ``"text"``, ``str(peer)`` in double quotes, for
anything else (read back as that string).

Writes follow the maildir rules: create in ``tmp/``, fsync, rename into ``new/``, fsync the
directory. Consumers claim an entry by renaming it into ``cur/``; ``recover()`` returns claims
left behind by a crash. An entry released after failed attempts carries their count in the
maildir info of its name, ``<unique>:1,<attempts>``, so the count survives a restart.

About 360 lines: the maildir rules (write, claim, recover, finish, release) are one
crash-safety argument that is checked best in one file.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime

from mailrouter.errors import QueueError, QueueFullError
from mailrouter.message import MailRequest, Peer

log = logging.getLogger(__name__)

MAX_REASON = 500
_STALE_TMP_SECONDS = 36 * 3600  # the maildir rule for abandoned files in tmp/
_COUNTER = itertools.count()  # per-process; next() on it is atomic under the GIL
_UNSAFE = re.compile(r"[\r\n\0]")
_TCP_PEER = re.compile(r"(\S*) (\d+)")
_TCP_HOST = re.compile(r'(?!")[^\s\0]*')  # hosts that survive the "host port" form
_ATTEMPTS = re.compile(r":1,([0-9]+)\Z")  # the info part of a released entry's name


@dataclass(frozen=True)
class QueueEntry:
    """One queued message: its envelope, original bytes, per-recipient reasons and queue time."""

    key: str
    message: MailRequest
    data: bytes
    reasons: dict[str, str]
    queued_at: datetime
    attempts: int = 0  # the failed attempts recorded by ``release``


def _clean(value: str) -> bytes:
    """``value`` as UTF-8 with CR, LF and NUL blanked, so it cannot break out of its header."""
    text = _UNSAFE.sub(" ", value)
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def _encode_peer(peer: Peer) -> str:
    if peer is None:
        return "-"
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        if _TCP_HOST.fullmatch(host) and type(port) is int and port >= 0:
            return f"{host} {port}"
    return f'"{peer}"'


def _decode_peer(text: str) -> Peer:
    if text == "-":
        return None
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        return text[1:-1]
    match = _TCP_PEER.fullmatch(text)
    if match is None:
        raise ValueError(f"unreadable peer {text!r}")
    return (match.group(1), int(match.group(2)))


def _check_key(key: object) -> str:
    """``key`` if it is a plain file name; KeyError otherwise, so no path escapes the queue."""
    if (
        not isinstance(key, str)
        or not key
        or key.startswith(".")
        or any(ch in key for ch in ("/", "\\", "\0"))
    ):
        raise KeyError(key)
    return key


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Queue:
    """A maildir at ``path`` of messages with their envelopes; safe across threads and processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._tmp, self._new, self._cur = (
            os.path.join(self.path, d) for d in ("tmp", "new", "cur")
        )
        host = socket.gethostname() or "localhost"
        self._host = host.replace("/", r"\057").replace(":", r"\072")
        try:
            for directory in (self._tmp, self._new, self._cur):
                os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise QueueError(f"cannot create queue {self.path}: {exc}") from exc

    def __repr__(self) -> str:
        return f"Queue({self.path!r})"

    def _new_key(self) -> str:
        """A unique, time-sortable maildir name: ``sec.MusecPpidQcounter.host``."""
        now = time.time_ns() // 1000
        sec, usec = divmod(now, 1_000_000)
        return f"{sec}.M{usec:06d}P{os.getpid()}Q{next(_COUNTER)}.{self._host}"

    def _trace(self, message: MailRequest, reasons: Mapping[str, str] | None) -> bytes:
        """The trace header block for ``message``, in the line ending its data uses."""
        end = message.data.find(b"\n")
        eol = b"\r\n" if end > 0 and message.data[end - 1 : end] == b"\r" else b"\n"
        if reasons is None:
            reasons = dict.fromkeys(message.recipients, "queued")
        lines = [b"Return-Path: <" + _clean(message.sender) + b">"]
        for rcpt, reason in reasons.items():
            lines.append(b"X-Original-To: " + _clean(rcpt))
            lines.append(b"X-Mailrouter-Reason: " + _clean(reason[:MAX_REASON]))
        lines.append(b"X-Mailrouter-Peer: " + _clean(_encode_peer(message.peer)))
        queued = format_datetime(datetime.now().astimezone())
        lines.append(b"X-Mailrouter-Queued: " + queued.encode("ascii"))
        return eol.join(lines) + eol

    def push(self, message: MailRequest, reasons: Mapping[str, str] | None = None) -> str:
        """Store ``message`` durably and return its key.

        ``reasons`` maps each recipient that was not handled to why; None means every envelope
        recipient, with reason ``"queued"``. Raises QueueFullError when the disk is full and
        QueueError on any other failure; either way nothing is left in ``new/``.
        """
        payload = memoryview(self._trace(message, reasons) + message.data)
        key = tmp = new = ""
        fd = -1
        try:
            for attempt in itertools.count():
                key = self._new_key()
                tmp = os.path.join(self._tmp, key)
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    break
                except FileExistsError:
                    if attempt >= 10:
                        raise
            written = 0
            while written < len(payload):
                count = os.write(fd, payload[written:])
                if count <= 0:
                    raise OSError(errno.EIO, "write made no progress", tmp)
                written += count
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.rename(tmp, os.path.join(self._new, key))
            new = os.path.join(self._new, key)
            _fsync_dir(self._new)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            for leftover in (tmp, new):
                if leftover:
                    with contextlib.suppress(OSError):
                        os.unlink(leftover)
            full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
            error = QueueFullError if full else QueueError
            raise error(f"cannot write to queue {self.path}: {exc}") from exc
        log.debug("queued %s from %r to %r", key, message.sender, message.recipients)
        return key

    def _load(self, directory: str, key: str) -> QueueEntry:
        """Read and parse the entry file ``directory/key``; KeyError when it is gone."""
        path = os.path.join(directory, key)
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise QueueError(f"cannot read {key} from queue {self.path}: {exc}") from exc
        try:
            return self._parse(key, raw)
        except (ValueError, TypeError, IndexError) as exc:
            raise QueueError(f"corrupt entry {key} in queue {self.path}: {exc}") from exc

    @staticmethod
    def _parse(key: str, raw: bytes) -> QueueEntry:
        """Split ``raw`` into the trace block (up to the first Queued line) and the exact bytes."""
        sender: str | None = None
        recipients: list[str] = []
        reasons: dict[str, str] = {}
        peer: Peer = None
        pos = 0
        while True:
            end = raw.find(b"\n", pos)
            if end < 0:
                raise ValueError("no trace header block")
            line = raw[pos:end].removesuffix(b"\r").decode("utf-8", "surrogateescape")
            pos = end + 1
            name, sep, value = line.partition(": ")
            if not sep:
                raise ValueError(f"unexpected line {line[:80]!r} in the trace block")
            if sender is None:
                if name != "Return-Path" or not (value.startswith("<") and value.endswith(">")):
                    raise ValueError("no trace header block")
                sender = value[1:-1]
            elif name == "X-Original-To":
                recipients.append(value)
                reasons[value] = ""
            elif name == "X-Mailrouter-Reason" and recipients:
                reasons[recipients[-1]] = value
            elif name == "X-Mailrouter-Peer":
                peer = _decode_peer(value)
            elif name == "X-Mailrouter-Queued":
                queued_at = parsedate_to_datetime(value)
                break
            else:
                raise ValueError(f"unexpected header {name!r} in the trace block")
        data = raw[pos:]
        message = MailRequest(peer, sender, recipients, data)
        attempts = _ATTEMPTS.search(key)
        tried = int(attempts.group(1)) if attempts else 0
        return QueueEntry(key, message, data, reasons, queued_at, tried)

    def read(self, key: str) -> QueueEntry:
        """The entry stored under ``key``: envelope, exact bytes, reasons, queue time."""
        return self._load(self._new, _check_key(key))

    def get(self, key: str) -> MailRequest:
        """The message stored under ``key`` with its original envelope; KeyError if absent."""
        return self.read(key).message

    def keys(self) -> list[str]:
        """The keys of the waiting entries, oldest first."""
        try:
            names = os.listdir(self._new)
        except OSError as exc:
            raise QueueError(f"cannot list queue {self.path}: {exc}") from exc
        return sorted(name for name in names if not name.startswith("."))

    def __len__(self) -> int:
        return len(self.keys())

    def pop(self) -> tuple[str, MailRequest] | tuple[None, None]:
        """Claim, read and delete the oldest entry; ``(None, None)`` when the queue is empty.

        An entry that cannot be parsed stays claimed in ``cur/`` and QueueError is raised.
        """
        for key in self.keys():
            try:
                entry = self.claim(key)
            except KeyError:
                continue  # another consumer claimed it first
            self.finish(key)
            return key, entry.message
        return None, None

    def claim(self, key: str) -> QueueEntry:
        """Take the waiting entry ``key`` for processing: ``finish`` or ``release`` it after.

        KeyError if it is not waiting. An entry that cannot be parsed stays claimed and
        QueueError is raised; a crash leaves claims for ``recover()``.
        """
        claimed = os.path.join(self._cur, _check_key(key))
        try:
            os.rename(os.path.join(self._new, key), claimed)
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise QueueError(f"cannot claim {key} in queue {self.path}: {exc}") from exc
        return self._load(self._cur, key)

    def finish(self, key: str) -> None:
        """Delete the claimed entry ``key``: it has been processed."""
        try:
            os.unlink(os.path.join(self._cur, _check_key(key)))
        except OSError as exc:
            raise QueueError(f"cannot remove {key} from queue {self.path}: {exc}") from exc

    def release(self, key: str, *, attempts: int | None = None) -> str:
        """Put the claimed entry ``key`` back to wait (processing it failed for now); its key.

        ``attempts`` (the failed attempts so far) is recorded in the entry's name, which then
        changes: the key returned is the one it waits under, and ``claim`` reads the count back.
        """
        key = _check_key(key)
        waiting = key if attempts is None else f"{key.partition(':')[0]}:1,{attempts}"
        try:
            os.rename(os.path.join(self._cur, key), os.path.join(self._new, waiting))
        except OSError as exc:
            raise QueueError(f"cannot release {key} in queue {self.path}: {exc}") from exc
        return waiting

    def remove(self, key: str) -> None:
        """Delete the entry ``key``; KeyError if it is not waiting in the queue."""
        try:
            os.unlink(os.path.join(self._new, _check_key(key)))
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise QueueError(f"cannot remove {key} from queue {self.path}: {exc}") from exc

    def clear(self) -> None:
        """Delete every waiting entry."""
        for key in self.keys():
            with contextlib.suppress(KeyError):
                self.remove(key)

    def recover(self) -> int:
        """Return claims left in ``cur/`` by a crash to ``new/``; also drop stale ``tmp/`` files.

        Call it at start, before any consumer runs. Returns how many entries were recovered.
        """
        recovered = 0
        try:
            for name in os.listdir(self._cur):
                if name.startswith("."):
                    continue
                try:
                    os.rename(os.path.join(self._cur, name), os.path.join(self._new, name))
                except FileNotFoundError:
                    continue
                recovered += 1
            cutoff = time.time() - _STALE_TMP_SECONDS
            with os.scandir(self._tmp) as entries:
                for entry in entries:
                    if entry.is_file() and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
        except OSError as exc:
            raise QueueError(f"cannot recover queue {self.path}: {exc}") from exc
        if recovered:
            log.info("recovered %d interrupted entries in queue %s", recovered, self.path)
        return recovered
