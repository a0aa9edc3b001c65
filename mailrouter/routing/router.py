"""The Router: loads handler modules, matches recipients, runs the per-sender state machines.

About 560 lines, kept together on purpose: loading, matching and running share the route table
and the state store, and the one routing step (pick the handler for the sender's state, run
it, refuse, fail, transition) must be read in one place with the locks it runs under.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import importlib
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal, ParamSpec, TypeVar

from mailrouter import replies
from mailrouter.errors import LoadError, QueueError, SMTPError
from mailrouter.message import Authentication, MailRequest, normalize_address
from mailrouter.queue import Queue
from mailrouter.routing.decorators import HandlerSpec, Route, RouteTable, build_table, is_state
from mailrouter.routing.executor import (
    Blocking,
    run_blocking,
    run_here,
    run_to_end,
)
from mailrouter.routing.locks import KeyedLanes, held_in_executor
from mailrouter.routing.result import DeliveryResult, Ledger, RecipientOutcome, reply_for
from mailrouter.state import (
    ERROR,
    ErrorReason,
    MemoryStorage,
    StateStorage,
    change_state,
    record_error,
)

log = logging.getLogger(__name__)

LockScope = Literal["key", "global"]
StateSender = Literal["envelope", "from", "authenticated"]
#: Verifies a message's sender, given the HELO name it came with ("" when unknown): what the
#: server's receiver calls at DATA, and ``Router.deliver`` for a message not verified yet
Authenticator = Callable[[MailRequest, str], Awaitable[Authentication]]
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Match:
    """A handler whose route matches an address, with the captured values."""

    route: Route
    handler: HandlerSpec
    captures: Mapping[str, str]


@dataclass(frozen=True)
class _Choice:
    """What to run for one state key: a stateless handler, or a state machine's handler for
    the sender's current state (picked under the key's lock)."""

    key: str
    by_state: Mapping[str, Match] = field(default_factory=dict)
    always: Match | None = None

    @property
    def candidates(self) -> list[Match]:
        return [self.always] if self.always is not None else list(self.by_state.values())

    @property
    def nolocking(self) -> bool:
        """Whether some candidate runs without the lock (then the state is read first)."""
        return any(found.handler.nolocking for found in self.candidates)

    @property
    def has_async(self) -> bool:
        return any(found.handler.is_async for found in self.candidates)

    def pick(self, state: str) -> Match | None:
        """The handler to run in ``state``, if any."""
        return self.always or self.by_state.get(state)

    def only(self, found: Match) -> _Choice:
        """A choice that runs ``found`` whatever the state."""
        return _Choice(self.key, always=found)


class _Refused(Exception):
    """A handler refused the message with an SMTPError."""

    def __init__(self, handler: HandlerSpec, error: SMTPError) -> None:
        super().__init__(str(error))
        self.handler = handler
        self.error = error


class _Unauthenticated(Exception):
    """The handler to run is @authenticated, and the sender is not."""

    def __init__(self, handler: HandlerSpec) -> None:
        super().__init__(handler.qualname)
        self.handler = handler


class _HandlerFailed(Exception):
    """A handler raised (anything but SMTPError) or returned something that is not a state."""

    def __init__(self, handler: HandlerSpec, reason: str) -> None:
        super().__init__(reason)
        self.handler = handler
        self.reason = reason


class Router:
    """Routes messages to handler functions by recipient address and the sender's state."""

    def __init__(
        self,
        *,
        store: StateStorage | None = None,
        undeliverable: Queue | None = None,
        defaults: Mapping[str, str] | None = None,
        lock_scope: LockScope = "key",
        executor: Executor | None = None,
        io_executor: Executor | None = None,
        authenticator: Authenticator | None = None,
        state_sender: StateSender = "envelope",
        reject_unauthenticated: bool = False,
    ) -> None:
        """``executor`` runs plain handlers; ``io_executor`` the router's other blocking calls
        (the state store outside a plain handler's step, the undeliverable queue), apart, so
        hung handlers cannot stall them (None: the loop's default executor).

        ``authenticator`` sets ``message.auth`` of a message that has none (``build_router``
        gives the settings' verifier); ``state_sender`` keys states on the envelope sender, the
        From: address, or only an authenticated From: address; ``reject_unauthenticated``
        refuses, rather than queues, mail for @authenticated handlers from other senders."""
        if lock_scope not in ("key", "global"):
            raise ValueError(f"lock_scope must be 'key' or 'global', not {lock_scope!r}")
        self.store: StateStorage = store if store is not None else MemoryStorage()
        self.undeliverable = undeliverable
        self.defaults: dict[str, str] = dict(defaults or {})
        self.lock_scope = lock_scope
        self.executor = executor
        self.io_executor = io_executor
        self.authenticator = authenticator
        self.state_sender: StateSender = state_sender
        self.reject_unauthenticated = reject_unauthenticated
        self._table = RouteTable()
        self._lanes = KeyedLanes()
        self._queue_failing = False
        self._loading = threading.Lock()

    # -- loading ---------------------------------------------------------------------------

    @property
    def modules(self) -> tuple[str, ...]:
        """The loaded handler modules, in load order."""
        return self._table.modules

    def load(self, names: Iterable[str]) -> None:
        """Import handler modules by name and add their routes (after those already loaded)."""
        with self._loading:
            new = [name for name in dict.fromkeys(names) if name not in self._table.modules]
            modules = [sys.modules[name] for name in self._table.modules]
            modules += [_import(name) for name in new]
            self._table = build_table(modules, self.defaults)

    def reload(self, names: Iterable[str] | None = None) -> None:
        """Rebuild the routes from scratch from ``names`` (default: the loaded modules) as their
        files say now; states are kept. See ``compile``; the new table replaces the old one."""
        self.use(self.compile(names))

    def compile(self, names: Iterable[str] | None = None) -> RouteTable:
        """Import ``names`` (default: the loaded modules) afresh and compile their routes.

        Fresh imports, not ``importlib.reload``: a function or a module deleted from its file is
        gone, a new one appears. If any module fails to import (``sys.exit()`` at import
        included) or to compile, the modules imported before stay in place and a ``LoadError``
        (or ``RouteError``) says why; the table in use is untouched either way.
        """
        with self._loading:
            importlib.invalidate_caches()
            wanted = list(dict.fromkeys(self._table.modules if names is None else names))
            saved = {name: sys.modules.pop(name) for name in wanted if name in sys.modules}
            try:
                return build_table([_import(name) for name in wanted], self.defaults)
            except BaseException:
                for name in wanted:
                    sys.modules.pop(name, None)
                sys.modules.update(saved)
                raise

    def use(self, table: RouteTable) -> None:
        """Route with ``table`` from now on (one assignment: a delivery sees one table)."""
        self._table = table

    # -- inspection ------------------------------------------------------------------------

    def routes(self) -> tuple[Route, ...]:
        """The compiled routes in match order."""
        return self._table.routes

    def match(self, address: str) -> list[Match]:
        """Every handler whose route matches ``address``, in match order, whatever the state."""
        address = normalize_address(address)
        found: list[Match] = []
        for route in self._table.routes:
            hit = route.regex.fullmatch(address)
            if hit:
                captures = hit.groupdict()
                found.extend(Match(route, handler, captures) for handler in route.handlers)
        return found

    def plan(self, address: str, sender: str = "") -> list[Match]:
        """The handlers that would run for mail from ``sender`` to ``address`` right now."""
        probe = MailRequest(None, sender, [address], b"")
        chosen, stateful_found = [], False
        for found in self.match(address):
            if found.handler.stateless:
                chosen.append(found)
            elif not stateful_found and self._in_state(found.handler, probe):
                chosen.append(found)
                stateful_found = True
        return chosen

    @property
    def state_key_modules(self) -> tuple[str, ...]:
        """The loaded modules whose state keys a ``state_key_generator`` makes."""
        return tuple(self._table.state_keys)

    # -- state -----------------------------------------------------------------------------

    def state_key(self, module_name: str, message: MailRequest) -> str:
        """The key the module's state is stored under (its name unless it has a generator)."""
        generator = self._table.state_keys.get(module_name)
        return module_name if generator is None else str(generator(module_name, message))

    def get_state(self, module_name: str, message: MailRequest) -> str:
        """The state ``module_name`` is in for the message's sender."""
        return self.store.get(self.state_key(module_name, message), message.route_from)

    def set_state(self, module_name: str, message: MailRequest, state: str) -> None:
        """Put ``module_name`` into ``state`` for the message's sender (out of ERROR: its
        reason is dropped)."""
        change_state(self.store, self.state_key(module_name, message), message.route_from, state)

    def clear_states(self) -> None:
        """Forget every sender's state."""
        self.store.clear()

    def close(self) -> None:
        """Close the state store and shut down the executors the router was given, without
        waiting for a handler that hangs (the drain has already waited what it may)."""
        self.store.close()
        for executor in (self.executor, self.io_executor):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

    def _in_state(self, handler: HandlerSpec, message: MailRequest) -> bool:
        return self.get_state(handler.module, message) == handler.name

    # -- delivery --------------------------------------------------------------------------

    async def deliver(
        self,
        message: MailRequest,
        *,
        keep_refused: bool = False,
        ledger: Ledger | None = None,
        queue_unhandled: bool = True,
    ) -> DeliveryResult:
        """Route ``message`` to every envelope recipient's handlers; queue what none handled.

        Handler errors never escape: they become replies and queue entries. Errors of the state
        store, the ledger or the event loop do escape, and the caller answers with a temporary
        failure. ``keep_refused`` queues the recipients a handler refused too (when no client
        can be told). With a ``ledger``, recipients it says are done are not run again, and each
        recipient whose handlers finish is recorded in it before the next one is routed.
        Without ``queue_unhandled`` nothing is queued: the result says what was not handled.
        """
        if message.auth is None and self.authenticator is not None:
            message.auth = await self.authenticator(message, "")
        identity = self._identity(message)
        outcomes: dict[str, RecipientOutcome] = {}  # by normalised address: duplicates route once
        per_recipient: list[tuple[str, RecipientOutcome]] = []
        addresses = [normalize_address(recipient) for recipient in message.recipients]
        last = addresses[-1] if len(set(addresses)) == len(addresses) else None
        for recipient, address in zip(message.recipients, addresses, strict=True):
            if address not in outcomes:
                if ledger is not None and ledger.done(address):
                    outcomes[address] = RecipientOutcome(matched=True, handled=True, already=True)
                else:
                    view = message.for_recipient(recipient)
                    if identity:
                        view.route_from = identity
                    outcome = await self._route(view, address, anonymous=identity is None)
                    if ledger is not None and outcome.finished:
                        await ledger.finished(address, outcome, last=address == last)
                    outcomes[address] = outcome
            per_recipient.append((recipient, outcomes[address]))
        reasons = {
            rcpt: reason
            for rcpt, outcome in per_recipient
            if (reason := outcome.queue_reason or _refused(outcome, keep_refused)) is not None
        }
        queue_key, queue_error = None, None
        if reasons and queue_unhandled and self.undeliverable is not None:
            try:
                queue_key = await self._blocking(self.undeliverable.push, message, reasons)
            except QueueError as exc:
                # one error line per burst of failures, not one per message
                (log.debug if self._queue_failing else log.error)("cannot queue: %s", exc)
                self._queue_failing, queue_error = True, exc
            else:
                if self._queue_failing:
                    log.warning("the undeliverable queue is writable again")
                self._queue_failing = False
                log.info("queued %s from %r: %s", queue_key, message.sender, reasons)
        replies = tuple(
            reply_for(rcpt, outcome, queue_key, queue_error) for rcpt, outcome in per_recipient
        )
        return DeliveryResult(replies, queue_key, reasons, outcomes)

    def _identity(self, message: MailRequest) -> str | None:
        """Whose states the message's handlers use (``state_sender``): "" for the envelope
        sender, the From: address, or None for nobody's (a From: that is not authenticated)."""
        if self.state_sender == "envelope":
            return ""
        found = email.utils.getaddresses(message.get_all("From"))
        address = normalize_address(found[0][1]) if len(found) == 1 else ""
        if self.state_sender == "from":
            return address
        domain = message.auth.aligned_domain if message.auth is not None else None
        return address if domain and address.rpartition("@")[2] == domain else None

    async def _route(
        self, message: MailRequest, address: str, *, anonymous: bool = False
    ) -> RecipientOutcome:
        """Run the handlers for one recipient: every stateless match, and the first stateful
        state machine (a state key) with a handler for the sender's state. An ``anonymous``
        sender (not authenticated, under ``state_sender = "authenticated"``) has no states."""
        matches = self.match(address)
        outcome = RecipientOutcome(matched=bool(matches))
        machines: dict[str, dict[str, Match]] = {}  # state key -> its handlers by state
        for found in matches:
            if not found.handler.stateless:
                key = self.state_key(found.handler.module, message)
                machines.setdefault(key, {}).setdefault(found.handler.name, found)
        done: set[str] = set()
        for found in matches:
            if found.handler.stateless:
                choice = _Choice(self.state_key(found.handler.module, message), always=found)
            else:
                key = self.state_key(found.handler.module, message)
                if outcome.stateful_done or key in done:
                    continue
                done.add(key)
                if anonymous:
                    if not self._unauthenticated(found.handler, message, address, outcome):
                        break
                    continue
                choice = _Choice(key, by_state=machines[key])
            if not await self._try(choice, message, address, outcome):
                break  # refused
        return outcome

    async def _try(
        self, choice: _Choice, message: MailRequest, address: str, outcome: RecipientOutcome
    ) -> bool:
        """Run the handler ``choice`` picks, if any, and record how it went; False if refused."""
        try:
            ran = await self._attempt(choice, message)
        except _Unauthenticated as skipped:
            return self._unauthenticated(skipped.handler, message, address, outcome)
        except _Refused as refused:
            ran, outcome.refusal = refused.handler, refused.error
            log.info("%s refused %r from %r: %s", ran.qualname, address, message.sender, refused)
        except _HandlerFailed as failure:
            ran = failure.handler
            outcome.failures.append(failure.reason)
            log.error(
                "handler %s failed for %r from %r",
                ran.qualname,
                address,
                message.sender,
                exc_info=failure.__cause__,
            )
        else:
            if ran is None:
                return True
            outcome.handled = True
        outcome.ran.append(ran)
        outcome.stateful_done = outcome.stateful_done or not ran.stateless
        return outcome.refusal is None

    def _unauthenticated(
        self, handler: HandlerSpec, message: MailRequest, address: str, outcome: RecipientOutcome
    ) -> bool:
        """Record that ``handler`` was not run for an unauthenticated sender: refused under
        ``reject_unauthenticated`` (then False: no more handlers), else queued."""
        log.info(
            "%s not run for %r from %r: unauthenticated", handler.qualname, address, message.sender
        )
        outcome.stateful_done = outcome.stateful_done or not handler.stateless
        if self.reject_unauthenticated:
            outcome.refusal = SMTPError(replies.UNAUTHENTICATED.code, replies.UNAUTHENTICATED.text)
            return False
        outcome.unauthenticated = True
        return True

    async def _attempt(self, choice: _Choice, message: MailRequest) -> HandlerSpec | None:
        """Pick and run a handler under the locks it needs; the handler that ran, if any.

        The state is read, and the handler for it run, under one lock: a state machine's
        transitions never interleave, and no state change can slip between check and run.
        """
        sender = message.route_from
        if choice.nolocking:
            unlocked = contextlib.nullcontext()
            if choice.always is not None:
                return await self._run(choice, message, unlocked)
            picked = choice.pick(await self._blocking(self.store.get, choice.key, sender))
            if picked is None:
                return None
            if picked.handler.nolocking:
                return await self._run(choice.only(picked), message, unlocked)
        if self.lock_scope == "global":  # not held past a timeout: that would stall every sender
            async with self._lanes.hold(None):
                return await self._run(choice, message, contextlib.nullcontext())
        lane, store_lock = (choice.key, sender), self.store.lock(choice.key, sender)
        if not choice.has_async:  # the fast path: the whole step in one handler thread
            return await self._lanes.run(
                lane, self.executor, self._run_sync, choice, message, store_lock
            )
        async with self._lanes.hold(lane):
            return await self._run(choice, message, store_lock)

    async def _run(
        self, choice: _Choice, message: MailRequest, store_lock: AbstractContextManager[Any]
    ) -> HandlerSpec | None:
        """Run ``_step`` under ``store_lock``: with only plain handlers to choose from, all of it
        in one handler thread (the fast path); else on the loop, the plain handler in a handler
        thread, the lock and state calls in the I/O executor."""
        if not choice.has_async:
            return await run_blocking(self.executor, self._run_sync, choice, message, store_lock)
        async with held_in_executor(store_lock, self.io_executor):
            return await self._step(choice, message, self._blocking, self._handling)

    def _run_sync(
        self, choice: _Choice, message: MailRequest, store_lock: AbstractContextManager[Any]
    ) -> HandlerSpec | None:
        """The whole step in this executor thread, its blocking calls made directly."""
        with store_lock:
            return run_to_end(self._step(choice, message, run_here, run_here))

    async def _step(
        self, choice: _Choice, message: MailRequest, blocking: Blocking, handling: Blocking
    ) -> HandlerSpec | None:
        """Pick the handler for the sender's state, run it, apply its transition (or put the
        module into ERROR); the handler that ran, if any. A plain handler is called through
        ``handling``, the other blocking calls go through ``blocking``.
        """
        found = choice.always or choice.pick(
            await blocking(self.store.get, choice.key, message.route_from)
        )
        if found is None:
            return None
        handler = found.handler
        if handler.authenticated and not _authenticated(message):
            raise _Unauthenticated(handler)
        try:
            if handler.is_async:
                result = await handler.func(message, **found.captures)
            else:
                result = await handling(handler.func, message, **found.captures)
        except SMTPError as error:
            raise _Refused(handler, error) from error
        except asyncio.CancelledError as exc:
            if _cancelling():  # the delivery itself is cancelled (timeout, shutdown): go on
                raise
            raise await blocking(self._failure, handler, choice.key, message, exc) from exc
        except BaseException as exc:
            raise await blocking(self._failure, handler, choice.key, message, exc) from exc
        await blocking(self._transition, handler, choice.key, message, result)
        return handler

    def _failure(
        self, handler: HandlerSpec, key: str, message: MailRequest, exc: BaseException
    ) -> _HandlerFailed:
        """A failed stateful handler puts its module into ERROR for this sender, keeping why
        (a stateless one has no state to leave); the failure to raise."""
        if not handler.stateless:
            reason = ErrorReason.of(handler.qualname, exc)
            record_error(self.store, key, message.route_from, reason)
        return _HandlerFailed(handler, f"handler {handler.qualname} failed: {_describe(exc)}")

    def _transition(
        self, handler: HandlerSpec, key: str, message: MailRequest, result: object
    ) -> None:
        """Apply a stateful handler's return value: a routed state function names the next
        state; anything else (a lambda, another callable, a value) is a handler failure."""
        if handler.stateless or result is None:
            return
        if not is_state(result):
            problem = TypeError(f"returned {result!r}, not a state function or None")
            raise self._failure(handler, key, message, problem) from problem
        module, name = getattr(result, "__module__", ""), getattr(result, "__name__", "")
        target = self.state_key(module, message)
        if handler.name == ERROR or target != key:  # it may leave ERROR: drop the reason too
            change_state(self.store, target, message.route_from, name)
        else:
            self.store.set(target, message.route_from, name)

    async def _blocking(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await run_blocking(self.io_executor, func, *args, **kwargs)

    async def _handling(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await run_blocking(self.executor, func, *args, **kwargs)


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except BaseException as exc:
        raise LoadError(f"cannot import handler module {name!r}: {_describe(exc)}") from exc


def _authenticated(message: MailRequest) -> bool:
    """Whether the message's From: domain passed DMARC."""
    return message.auth is not None and message.auth.aligned_domain is not None


def _refused(outcome: RecipientOutcome, keep_refused: bool) -> str | None:
    """The queue reason for a refused recipient that nobody can be told about, if kept."""
    return f"refused: {outcome.refusal}" if keep_refused and outcome.refusal else None


def _cancelling() -> bool:
    """Whether the task running now is being cancelled (False off the event loop)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # an executor thread: no loop, so nobody cancels this call
        return False
    return task is not None and task.cancelling() > 0


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
