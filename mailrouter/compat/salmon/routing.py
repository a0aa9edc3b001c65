"""Salmon's ``routing`` module over mailrouter's Router: the module-level ``Router`` that handler
code imports, the decorators that register into it, and Salmon's state store names.

The decorators put mailrouter's own route marks on each handler, so mailrouter's server loads a
Salmon-style module like any other, and they tell ``Router`` which modules declared routes.
``Router`` compiles those modules with mailrouter's ``build_table`` (with its ``defaults`` at
that moment) and delivers through a ``mailrouter.routing.Router``: matching, states, locks,
ERROR and the undeliverable reasons are mailrouter's. ``REGISTERED`` and ``ORDER`` are Salmon's
bookkeeping of the patterns as written; routing never reads them.

Each handler is wrapped (as Salmon's ``route`` wrapped it): it is given this layer's
MailRequest, also when mailrouter's server calls it, and its exception reaches ``deliver`` so
that ``LOG_EXCEPTIONS = False`` can raise it, as tests expect.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from importlib import reload
from types import ModuleType
from typing import Any, TypeVar, cast

from mailrouter.compat.salmon.mail import MailRequest
from mailrouter.errors import SMTPError
from mailrouter.message import MailRequest as Request
from mailrouter.routing import decorators as native
from mailrouter.routing.decorators import build_table, nolocking, stateless
from mailrouter.routing.router import Router as NativeRouter
from mailrouter.state import ERROR, START, MemoryStorage, ShelveStorage
from mailrouter.state import StateStorage as NativeStorage
from mailrouter.state.base import KeyedLocks

__all__ = [
    "LOG",
    "ROUTE_FIRST_STATE",
    "MemoryStorage",
    "Router",
    "RoutingBase",
    "ShelveStorage",
    "StateStorage",
    "nolocking",
    "route",
    "route_like",
    "state_key_generator",
    "stateless",
]

F = TypeVar("F", bound=Callable[..., Any])

ROUTE_FIRST_STATE = START
LOG = logging.getLogger("routing")

_PATTERNS = "_salmon_patterns"  # the patterns a handler was registered under, for route_like
_HANDLER = "_salmon_handler"  # set on the wrappers this module makes
# The exceptions handlers raise during one ``Router.deliver`` (None outside of it).
_failures: ContextVar[list[Exception] | None] = ContextVar("salmon_failures", default=None)


def DEFAULT_STATE_KEY(module_name: str, message: Any) -> str:
    """The state key of a module without a ``state_key_generator``: its name."""
    return module_name


class StateStorage:
    """The base of a store of your own: implement ``get``, ``set`` and ``clear``, as in Salmon.

    ``lock`` and ``close`` are provided, so that such a store also serves mailrouter's Router
    and server (``state_url = "package.module:YourStore"``).
    """

    def get(self, key: str, sender: str) -> str:
        """The state of ``sender`` under ``key``, or ``ROUTE_FIRST_STATE``."""
        raise NotImplementedError("You have to implement a StateStorage.get.")

    def set(self, key: str, sender: str, state: str) -> None:
        """Store ``state``; ``ROUTE_FIRST_STATE`` may simply remove the entry."""
        raise NotImplementedError("You have to implement a StateStorage.set.")

    def clear(self) -> None:
        """Remove every state (tests use it)."""
        raise NotImplementedError("You have to implement a StateStorage.clear.")

    def lock(self, key: str, sender: str) -> AbstractContextManager[None]:
        """Hold the transition lock of (key, sender), in this process."""
        locks = self.__dict__.get("_keyed_locks") or self.__dict__.setdefault(
            "_keyed_locks", KeyedLocks()
        )
        return cast(KeyedLocks, locks).hold(key, sender)

    def close(self) -> None:
        """Nothing to release."""


class RoutingBase:
    """Salmon's router object: loads handler modules and delivers messages to them.

    A thin layer over a ``mailrouter.routing.Router``: ``STATE_STORE`` and ``DEFAULT_CAPTURES``
    are that router's store and defaults, and ``deliver`` is its delivery, run to the end.
    """

    def __init__(self) -> None:
        self.REGISTERED: dict[str, list[Callable[..., Any]]] = {}
        self.ORDER: list[str] = []
        self.HANDLERS: dict[str, Callable[[str, Any], str]] = {}
        self.RELOAD = False
        self.LOG_EXCEPTIONS = True
        self.UNDELIVERABLE_QUEUE: Any = None
        self.lock = threading.RLock()
        self._router = NativeRouter(store=MemoryStorage())
        self._modules: dict[str, ModuleType] = {}  # that registered routes, in that order
        self._stale = False

    @property
    def STATE_STORE(self) -> NativeStorage:
        """Where states are kept: a MemoryStorage unless set (any StateStorage)."""
        return self._router.store

    @STATE_STORE.setter
    def STATE_STORE(self, store: NativeStorage) -> None:
        self._router.store = store

    @property
    def DEFAULT_CAPTURES(self) -> dict[str, str]:
        """The capture regexes ``(name)`` gets when its ``@route`` gives none."""
        return self._router.defaults

    def defaults(self, **captures: str) -> None:
        """Add default capture regexes (applied when the routes are next compiled)."""
        with self.lock:
            self._router.defaults.update(captures)
            self._stale = True

    def register_route(self, format: str, func: Callable[..., Any]) -> None:
        """Record that ``func``, of a module now importing, routes by ``format``."""
        with self.lock:
            module = sys.modules.get(func.__module__)
            if module is not None and self._modules.get(module.__name__, module) is not module:
                self._forget(module.__name__)  # imported afresh (mailrouter's reload)
            if format not in self.REGISTERED:
                self.ORDER.append(format)
            self.REGISTERED.setdefault(format, []).append(func)
            if module is not None:
                self._modules[module.__name__] = module
            self._stale = True

    def _forget(self, module_name: str) -> None:
        """Drop the registrations of the module ``module_name``'s earlier import."""
        for format in list(self.ORDER):
            kept = [f for f in self.REGISTERED[format] if f.__module__ != module_name]
            if kept:
                self.REGISTERED[format] = kept
            else:
                del self.REGISTERED[format]
                self.ORDER.remove(format)
        del self._modules[module_name]

    def _routing(self) -> NativeRouter:
        """The mailrouter Router, its routes compiled anew if registrations changed since."""
        with self.lock:
            if self._stale:
                self._router.use(build_table(self._modules.values(), self._router.defaults))
                self._stale = False
            return self._router

    def state_key(self, module_name: str, message: Request) -> str:
        """The key ``module_name``'s state is kept under for ``message``."""
        return self._routing().state_key(module_name, message)

    def get_state(self, module_name: str, message: Request) -> str:
        """The state ``module_name`` is in for the message's sender."""
        return self._routing().get_state(module_name, message)

    def set_state(self, module_name: str, message: Request, state: str) -> None:
        """Put ``module_name`` into ``state`` for the message's sender."""
        self._routing().set_state(module_name, message, state)

    def in_state(self, func: Callable[..., Any], message: Request) -> bool:
        """Whether ``func``'s module is in the state ``func`` for the message's sender."""
        return self.get_state(func.__module__, message) == func.__name__

    def in_error(self, func: Callable[..., Any], message: Request) -> bool:
        """Whether ``func``'s module is in ERROR for the message's sender."""
        return self.get_state(func.__module__, message) == ERROR

    def clear_states(self) -> None:
        """Forget every sender's state."""
        self._router.clear_states()

    def clear_routes(self) -> None:
        """Forget every route (the modules stay imported: ``reload()`` declares them again)."""
        with self.lock:
            self.REGISTERED.clear()
            self.ORDER.clear()
            self._modules.clear()
            self._stale = True

    def load(self, handlers: Iterable[str]) -> None:
        """Import the handler modules ``handlers`` and compile the routes (a bad one raises).

        A module that fails to import is logged (``LOG_EXCEPTIONS``) or raises ImportError.
        """
        with self.lock:
            for name in handlers:
                try:
                    importlib.import_module(name)
                except ImportError:
                    if not self.LOG_EXCEPTIONS:
                        raise
                    LOG.exception("ERROR IMPORTING %r MODULE:", name)
                else:
                    self.HANDLERS.setdefault(name, DEFAULT_STATE_KEY)
            self._routing()

    def reload(self) -> None:
        """Clear the routes and re-run the loaded modules (``importlib.reload``); states stay."""
        with self.lock:
            self.clear_routes()
            for name in [name for name in sys.modules if name in self.HANDLERS]:
                try:
                    reload(sys.modules[name])
                except (TypeError, NameError, ImportError):
                    if not self.LOG_EXCEPTIONS:
                        raise
                    LOG.exception("ERROR RELOADING %r MODULE:", name)
            self._routing()

    def deliver(self, message: Request) -> None:
        """Route ``message`` as mailrouter routes it, returning when its handlers are done.

        A handler's SMTPError is raised; other handler errors put the module into ERROR, are
        logged, and are raised too unless ``LOG_EXCEPTIONS``. A message no handler finished is
        pushed to ``UNDELIVERABLE_QUEUE`` (if set) once. Not for use on a running event loop.
        """
        if self.RELOAD:
            self.reload()
        router = self._routing()
        failures: list[Exception] = []
        token = _failures.set(failures)
        try:
            result = asyncio.run(router.deliver(message, queue_unhandled=False))
        finally:
            _failures.reset(token)
        if result.reasons and self.UNDELIVERABLE_QUEUE is not None:
            self.UNDELIVERABLE_QUEUE.push(message)
        for outcome in result.outcomes.values():
            if outcome.refusal is not None:
                raise outcome.refusal
        if failures and not self.LOG_EXCEPTIONS:
            raise failures[0]


Router = RoutingBase()


def _handler(func: F, request_type: type[MailRequest]) -> F:
    """``func`` wrapped to be given ``request_type`` requests and to report its errors."""
    if getattr(func, _HANDLER, False) or inspect.iscoroutinefunction(func):
        return func

    @functools.wraps(func)
    def handler(message: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(message, Request) and not isinstance(message, request_type):
            message = request_type.of(message)  # from mailrouter's server
        try:
            return func(message, *args, **kwargs)
        except SMTPError:
            raise
        except Exception as exc:
            failures = _failures.get()
            if failures is not None:
                failures.append(exc)
            raise

    setattr(handler, _HANDLER, True)
    # Salmon calls a handler that cannot take its captures and fails then, when it runs (its
    # tests load such modules); mailrouter's load-time check sees this signature instead
    handler.__signature__ = _ANY_ARGUMENTS  # type: ignore[attr-defined]
    return cast(F, handler)


_ANY_ARGUMENTS = inspect.Signature(
    [
        inspect.Parameter("message", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
)


class route:
    """``@route(pattern, **captures)``: route mail for addresses matching ``pattern``.

    ``(name)`` in the pattern captures ``captures[name]`` (or ``Router.defaults``' regex) and
    passes it to the handler as a keyword argument. Place ``@stateless`` and ``@nolocking``
    below it. Applies mailrouter's ``route`` (a bad pattern raises) and registers the handler.
    """

    request_type: type[MailRequest] = MailRequest  # what handlers are given

    def __init__(self, format: str, **captures: str) -> None:
        self.formats = [format]
        self._mark: Callable[[Any], Any] = native.route(format, **captures)

    def __call__(self, func: F) -> F:
        handler = _handler(func, self.request_type)
        self._mark(handler)
        setattr(handler, _PATTERNS, [*getattr(handler, _PATTERNS, ()), *self.formats])
        for format in self.formats:
            Router.register_route(format, handler)
        return handler


class route_like(route):
    """``@route_like(other)``: route exactly as the routed function ``other`` (TypeError if it
    has no route), which may be in another module."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.formats = list(getattr(func, _PATTERNS, ()))
        self._mark = native.route_like(func)


def state_key_generator(func: F) -> F:
    """Use ``func(module_name, message) -> str`` as the state key of its module's handlers."""
    native.state_key_generator(func)
    Router.HANDLERS[func.__module__] = func
    return func
