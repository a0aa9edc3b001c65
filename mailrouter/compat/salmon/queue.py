"""Salmon's ``queue`` module: a maildir of messages, over mailrouter's crash-safe queue.

Entries keep the envelope they were pushed with (mailrouter's trace headers), so a popped
request has its sender and recipients back. Every queue writes the maildir way (tmp/, fsync,
rename): Salmon's ``safe`` flag changes nothing.
"""

from __future__ import annotations

import mailbox
import os
from typing import Any

from mailrouter.compat.salmon.mail import MailRequest
from mailrouter.message import MailRequest as Request
from mailrouter.queue import Queue as NativeQueue

__all__ = ["Queue", "SafeMaildir"]


class SafeMaildir(mailbox.Maildir):
    """Salmon's name for a maildir opened with ``mailbox``: the standard library's Maildir (it
    refuses a file name that clashes); Queue does not use it."""


class Queue:
    """The maildir ``queue_dir`` (made if missing) of messages waiting to be read.

    ``pop_limit`` (bytes, 0: none) makes ``pop`` skip larger messages: they move to the maildir
    ``oversize_dir`` if given, else they are deleted.
    """

    def __init__(
        self,
        queue_dir: str | os.PathLike[str],
        safe: bool = False,
        pop_limit: int = 0,
        oversize_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.dir = queue_dir
        self.pop_limit = pop_limit
        self._queue = NativeQueue(queue_dir)
        self._oversize = None if oversize_dir is None else NativeQueue(oversize_dir)

    def push(self, message: Any) -> str:
        """Store ``message`` (a request as received, or with the header changes a handler
        made, as Salmon stored its text; anything else as ``str()`` gives it: a response,
        text, bytes); its key."""
        if isinstance(message, MailRequest) and message.headers_changed():
            changed = message.to_message().as_bytes()
            message = Request(message.peer, message.sender, message.recipients, changed)
        elif not isinstance(message, Request):
            data = message if isinstance(message, str | bytes) else str(message)
            message = MailRequest(None, None, None, data)
        return self._queue.push(message)

    def pop(self) -> tuple[str, MailRequest] | tuple[None, None]:
        """Take the oldest message out of the queue; ``(None, None)`` when there is none."""
        for key in self._queue.keys():  # noqa: SIM118 (a Queue is not a mapping)
            try:
                entry = self._queue.claim(key)
            except KeyError:
                continue  # another reader took it
            if self.pop_limit and len(entry.data) > self.pop_limit:
                if self._oversize is not None:
                    self._oversize.push(entry.message, entry.reasons)
                self._queue.finish(key)
                continue
            self._queue.finish(key)
            return key, MailRequest.of(entry.message)
        return None, None

    def get(self, key: str) -> MailRequest | None:
        """The message stored under ``key``, left in the queue; None if there is none."""
        try:
            return MailRequest.of(self._queue.get(key))
        except KeyError:
            return None

    def remove(self, key: str) -> None:
        """Delete the message ``key`` (KeyError if it is not there)."""
        self._queue.remove(key)

    def keys(self) -> list[str]:
        """The keys of the waiting messages, oldest first."""
        return self._queue.keys()

    def count(self) -> int:
        """How many messages wait."""
        return len(self._queue)

    __len__ = count

    def clear(self) -> None:
        """Delete every waiting message."""
        self._queue.clear()
