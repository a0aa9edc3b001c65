"""What the shared stores have in common: URL options, text encoding, lock waiting and leases."""

from __future__ import annotations

import inspect
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Generic, TypeVar
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from mailrouter.errors import StoreError
from mailrouter.state.base import Closable, KeyedLocks

log = logging.getLogger(__name__)

H = TypeVar("H")

_ESC = "\x1b"
_MAX_BACKOFF = 0.05


# -- URLs ---------------------------------------------------------------------------------------


class StoreURL:
    """A store URL split into its parts, the options mailrouter reads, and the rest of the query."""

    def __init__(self, url: str, ours: Collection[str]) -> None:
        try:
            self.parts: SplitResult = urlsplit(url)
            pairs = parse_qsl(self.parts.query, keep_blank_values=True, strict_parsing=False)
        except ValueError as exc:
            raise StoreError(f"malformed state store URL {redact(url)!r}: {exc}") from exc
        self.url = url
        self.shown = redact(url)
        self.options = {name: value for name, value in pairs if name in ours}
        self.rest = urlencode([(name, value) for name, value in pairs if name not in ours])

    def without_ours(self) -> str:
        """The URL with mailrouter's own options removed, for the client library."""
        return urlunsplit(self.parts._replace(query=self.rest))

    def refuse_rest(self) -> None:
        """Raise if the query holds options mailrouter does not know."""
        if self.rest or self.parts.fragment:
            raise StoreError(f"state store URL {self.shown!r}: unknown option in {self.rest!r}")

    def seconds(self, name: str, default: float) -> float:
        """Option ``name`` as a positive number of seconds."""
        value = self.options.get(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not 0 < number < float("inf"):
            raise StoreError(f"state store URL {self.shown!r}: {name} must be positive seconds")
        return number

    def keywords(self, defaults: Mapping[str, object]) -> dict[str, Any]:
        """The options the URL gives, read by their defaults' types: seconds, counts or text."""
        given: dict[str, Any] = {}
        for name, default in defaults.items():
            if name not in self.options:
                continue
            if isinstance(default, float):
                given[name] = self.seconds(name, default)
            elif isinstance(default, int):
                given[name] = self.count(name, default)
            else:
                given[name] = self.options[name]
        return given

    def count(self, name: str, default: int) -> int:
        """Option ``name`` as a positive integer."""
        value = self.options.get(name, str(default))
        if not value.isdigit() or int(value) < 1:
            raise StoreError(f"state store URL {self.shown!r}: {name} must be a positive integer")
        return int(value)


def url_options(factory: Callable[..., object]) -> dict[str, object]:
    """The keyword-only options of a store's constructor with their defaults (``readonly``
    aside): what its URL's query may set, so defaults are written once, in the constructor."""
    parameters = inspect.signature(factory).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "readonly"
    }


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# -- text ---------------------------------------------------------------------------------------


def to_text(value: str) -> str:
    """``value`` as text every database accepts (valid UTF-8, no NUL), reversibly.

    Ordinary strings are kept as they are, so stored rows stay readable; one with lone surrogates
    (from a non-UTF-8 envelope), a NUL, or a leading ESC becomes ESC + its ASCII JSON form.
    """
    if value.startswith(_ESC) or "\x00" in value or not _is_utf8(value):
        return _ESC + json.dumps(value)
    return value


def from_text(text: str) -> str:
    """The string that ``to_text`` turned into ``text``."""
    if not text.startswith(_ESC):
        return text
    value = json.loads(text[1:])
    if not isinstance(value, str):
        raise StoreError(f"malformed escaped text in state store: {text!r}")
    return value


def _is_utf8(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def new_token() -> str:
    """A unique lock owner token that also says who holds the lock: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


# -- the shared base ----------------------------------------------------------------------------


class SharedStore(Closable, ABC, Generic[H]):
    """A store whose ``lock()`` holds across processes.

    Threads of one process queue on an in-process keyed lock first, so only one of them at a
    time waits for the shared lock. The shared lock is acquired by ``_acquire``, which returns a
    handle that ``_release`` is given back, possibly in another thread: one short round trip
    that never waits for another holder.
    A read-only store refuses ``set``, ``clear`` and ``lock``.
    """

    cross_process = True

    def __init__(self, shown: str, *, readonly: bool, lock_wait: float) -> None:
        self.readonly = readonly
        self.lock_wait = lock_wait
        self._shown = shown
        self._local = KeyedLocks()
        self._closing = threading.Event()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._shown}{' (read-only)' if self.readonly else ''}>"

    def lock(self, key: str, sender: str) -> AbstractContextManager[None]:
        """Hold the transition lock of (key, sender) across processes."""
        return self._hold(key, sender)

    @contextmanager
    def _hold(self, key: str, sender: str) -> Iterator[None]:
        self._writable()
        with self._local.hold(key, sender):
            handle = self._acquire(key, sender)
            try:
                yield
            finally:
                self._release(key, sender, handle)

    @abstractmethod
    def _acquire(self, key: str, sender: str) -> H:
        """Take the shared lock of (key, sender), waiting at most ``lock_wait`` seconds."""

    @abstractmethod
    def _release(self, key: str, sender: str, handle: H) -> None:
        """Give the shared lock back; log, never raise, when that fails."""

    def _check_open(self) -> None:
        if self._closing.is_set():
            raise StoreError(f"state store {self._shown} is closed")

    def _writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise StoreError(f"state store {self._shown} is open read-only")

    def _poll(self, attempt: Callable[[], bool], key: str, sender: str) -> None:
        """Call ``attempt`` until it returns True, backing off up to 50 ms between tries."""
        deadline = time.monotonic() + self.lock_wait
        delay = 0.001
        while not attempt():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreError(
                    f"state store {self._shown}: gave up after {self.lock_wait:g} s waiting for"
                    f" the lock of {sender!r} under {key!r}"
                )
            if self._closing.wait(min(delay * random.uniform(0.5, 1.5), remaining)):
                self._check_open()
            delay = min(delay * 2, _MAX_BACKOFF)


# -- leases -------------------------------------------------------------------------------------

Renew = Callable[[list[tuple[str, str, str]]], None]


class Leases:
    """The lock leases a store holds, renewed from one daemon thread while they are held.

    A lease lasts ``duration`` seconds unless renewed; it is renewed every third of that, so it
    only runs out when its holder's process dies or stalls for longer than ``duration``.
    ``renew`` gets ``(token, key, sender)`` triples and logs the leases it found lost.
    """

    def __init__(self, duration: float, renew: Renew, name: str) -> None:
        self.duration = duration
        self._renew = renew
        self._name = name
        self._guard = threading.Lock()
        self._held: dict[str, tuple[str, str]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, token: str, key: str, sender: str) -> None:
        """Keep renewing the lease ``token`` until ``remove``."""
        with self._guard:
            self._held[token] = (key, sender)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def remove(self, token: str) -> None:
        """Stop renewing ``token``."""
        with self._guard:
            self._held.pop(token, None)

    def __contains__(self, token: object) -> bool:
        with self._guard:
            return token in self._held

    def stop(self) -> None:
        """Stop the renewing thread; idempotent."""
        self._stop.set()
        with self._guard:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.duration / 3):
            with self._guard:
                held = [(token, key, sender) for token, (key, sender) in self._held.items()]
            if not held:
                continue
            try:
                self._renew(held)
            except Exception as exc:  # the next round tries again; the lease may still last
                log.warning("%s: cannot renew %d lock lease(s): %s", self._name, len(held), exc)
