"""Route declarations: the decorators handler modules use, and their compilation into a table.

The decorators only mark functions; nothing is registered globally. A ``Router`` collects the
marks when it loads a module and compiles them against its own capture defaults, so the result
never depends on import order, and every mistake surfaces when the module loads.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar, cast

from mailrouter.errors import RouteError

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__mailrouter_route__"
_KEY_MARK = "__mailrouter_state_key__"
_CAPTURE = re.compile(r"\((\w+)\)")
_declaration_order = itertools.count()


@dataclass(frozen=True)
class RouteSpec:
    """One ``@route`` as written: the pattern, its captures, and when it was declared."""

    pattern: str
    captures: Mapping[str, str]
    order: int


@dataclass
class _Mark:
    """What the decorators record on a handler function."""

    routes: list[RouteSpec] = field(default_factory=list)
    stateless: bool = False
    nolocking: bool = False
    authenticated: bool = False


def _mark(func: Callable[..., Any]) -> _Mark:
    mark: _Mark | None = func.__dict__.get(_MARK)
    if mark is None:
        mark = _Mark()
        setattr(func, _MARK, mark)
    return mark


def is_state(value: object) -> bool:
    """Whether ``value`` is a routed, stateful handler function: the only valid next state."""
    mark = getattr(value, "__dict__", {}).get(_MARK)
    return isinstance(mark, _Mark) and bool(mark.routes) and not mark.stateless


def _check_function(func: object, decorator: str) -> None:
    if not inspect.isfunction(func):
        raise RouteError(f"@{decorator} applies to module-level functions, not {func!r}")


def route(pattern: str, **captures: str) -> Callable[[F], F]:
    """Route mail for addresses matching ``pattern`` to the decorated handler.

    ``(name)`` in the pattern captures the part of the address matching ``captures[name]`` (or
    the router's default for ``name``) and passes it to the handler as a keyword argument.
    """
    if not isinstance(pattern, str) or not pattern:
        raise RouteError(f"@route needs a non-empty pattern string, not {pattern!r}")

    def decorate(func: F) -> F:
        _check_function(func, "route")
        _mark(func).routes.append(RouteSpec(pattern, dict(captures), next(_declaration_order)))
        return func

    return decorate


def route_like(other: Callable[..., Any]) -> Callable[[F], F]:
    """Route the decorated handler exactly like ``other`` (which may live in another module)."""
    mark: _Mark | None = getattr(other, _MARK, None)
    if mark is None or not mark.routes:
        name = getattr(other, "__qualname__", repr(other))
        raise RouteError(f"@route_like({name}): {name} has no @route to copy")

    def decorate(func: F) -> F:
        _check_function(func, "route_like")
        target = _mark(func)
        for spec in mark.routes:
            target.routes.append(RouteSpec(spec.pattern, spec.captures, next(_declaration_order)))
        return func

    return decorate


def stateless(func: F) -> F:
    """Run the handler for every matching message, whatever the sender's state; it keeps none."""
    _below_route(func, "stateless").stateless = True
    return func


def authenticated(func: F) -> F:
    """Run the handler only for a sender whose From: domain passes DMARC (aligned SPF or
    DKIM); anyone else's copy is queued as ``unauthenticated sender`` (or refused with 550
    5.7.1 under ``reject_unauthenticated``)."""
    _below_route(func, "authenticated").authenticated = True
    return func


def _below_route(func: Callable[..., Any], decorator: str) -> _Mark:
    """The mark of ``func``, for a decorator that must be applied before the route."""
    _check_function(func, decorator)
    if _mark(func).routes:
        raise RouteError(
            f"@{decorator} is above @route on {func.__module__}.{func.__qualname__}: "
            "place it below @route/@route_like so it applies before the route"
        )
    return _mark(func)


def nolocking(func: F) -> F:
    """Run the handler without the per-sender lock (it must be safe to run concurrently)."""
    _check_function(func, "nolocking")
    _mark(func).nolocking = True
    return func


def state_key_generator(func: F) -> F:
    """Use ``func(module_name, message) -> str`` as the state key of its module's handlers."""
    _check_function(func, "state_key_generator")
    setattr(func, _KEY_MARK, True)
    return func


StateKeyFunc = Callable[[str, Any], str]


@dataclass(frozen=True)
class HandlerSpec:
    """A loaded handler function and its routing flags."""

    func: Callable[..., Any]
    stateless: bool
    nolocking: bool
    is_async: bool
    authenticated: bool = False  # runs only for a DMARC-aligned From: domain

    @property
    def module(self) -> str:
        return str(self.func.__module__)

    @property
    def name(self) -> str:
        return str(self.func.__name__)

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class Route:
    """One compiled pattern and, in declaration order, the handlers sharing it."""

    pattern: str
    regex: re.Pattern[str]
    handlers: tuple[HandlerSpec, ...]


@dataclass(frozen=True)
class RouteTable:
    """Everything loaded from a set of modules: routes in match order and state key functions."""

    modules: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    state_keys: Mapping[str, StateKeyFunc] = field(default_factory=dict)


def build_table(modules: Iterable[ModuleType], defaults: Mapping[str, str]) -> RouteTable:
    """Compile the routes declared in ``modules`` (in that order) against ``defaults``."""
    grouped: dict[str, tuple[str, re.Pattern[str], list[HandlerSpec]]] = {}
    state_keys: dict[str, StateKeyFunc] = {}
    names = []
    for module in modules:
        names.append(module.__name__)
        key_func = _state_key_func(module)
        if key_func is not None:
            state_keys[module.__name__] = key_func
        for spec, func, mark in _declared_routes(module):
            regex = compile_pattern(spec, defaults, f"{func.__module__}.{func.__qualname__}")
            handler = HandlerSpec(
                func,
                mark.stateless,
                mark.nolocking,
                inspect.iscoroutinefunction(func),
                mark.authenticated,
            )
            _check_signature(handler, regex)
            group = grouped.setdefault(regex.pattern, (spec.pattern, regex, []))
            group[2].append(handler)
    routes = tuple(Route(pattern, regex, tuple(hs)) for pattern, regex, hs in grouped.values())
    return RouteTable(tuple(names), routes, state_keys)


def _declared_routes(module: ModuleType) -> list[tuple[RouteSpec, Callable[..., Any], _Mark]]:
    """The route declarations of functions defined in ``module``, in declaration order."""
    seen: set[int] = set()
    found: list[tuple[RouteSpec, Callable[..., Any], _Mark]] = []
    for value in vars(module).values():
        mark = getattr(value, _MARK, None) if inspect.isfunction(value) else None
        if mark is None or id(value) in seen or value.__module__ != module.__name__:
            continue
        seen.add(id(value))
        found.extend((spec, value, mark) for spec in mark.routes)
    found.sort(key=lambda item: item[0].order)
    return found


def _state_key_func(module: ModuleType) -> StateKeyFunc | None:
    funcs = [
        value
        for value in vars(module).values()
        if getattr(value, _KEY_MARK, False) and value.__module__ == module.__name__
    ]
    if len(funcs) > 1:
        names = ", ".join(f.__name__ for f in funcs)
        raise RouteError(f"module {module.__name__} has several @state_key_generator: {names}")
    return funcs[0] if funcs else None


def compile_pattern(spec: RouteSpec, defaults: Mapping[str, str], where: str) -> re.Pattern[str]:
    """Turn ``(name)`` parts into named groups and compile, case-insensitive, for fullmatch."""
    used = set(_CAPTURE.findall(spec.pattern))
    unused = sorted(set(spec.captures) - used)
    if unused:
        raise RouteError(
            f"{where}: captures {', '.join(unused)} are not in its pattern {spec.pattern!r}"
        )
    merged = {**defaults, **spec.captures}

    def named_group(found: re.Match[str]) -> str:
        name = found.group(1)
        if name not in merged:
            raise RouteError(
                f"{where}: pattern {spec.pattern!r} uses ({name}) but no regex is given for it; "
                f"pass {name}=... to @route or set it in the router's defaults"
            )
        return f"(?P<{name}>{merged[name]})"

    source = _CAPTURE.sub(named_group, spec.pattern)
    try:
        return re.compile(source, re.IGNORECASE)
    except re.error as exc:
        raise RouteError(f"{where}: bad pattern {spec.pattern!r} ({source!r}): {exc}") from None


def _check_signature(handler: HandlerSpec, regex: re.Pattern[str]) -> None:
    """Fail at load time if the handler cannot accept the message and its captures."""
    try:
        inspect.signature(handler.func).bind(None, **dict.fromkeys(regex.groupindex))
    except TypeError as exc:
        raise RouteError(
            f"{handler.qualname} cannot be called with the message and captures "
            f"{sorted(regex.groupindex)} of its pattern {regex.pattern!r}: {exc}"
        ) from None


def bounce_to(soft: Callable[..., Any], hard: Callable[..., Any]) -> Callable[[F], F]:
    """Hand bounces (``message.is_bounce()``) to ``soft`` or ``hard``, by the bounce's kind,
    instead of the decorated handler: they get its arguments and return the next state as it
    would (Salmon's ``bounce_to``). ``soft`` and ``hard`` are plain functions for a plain
    handler, ``async def`` ones for an ``async def`` handler."""
    for name, target in (("soft", soft), ("hard", hard)):
        if not callable(target):
            raise TypeError(f"@bounce_to: {name} must be a callable, not {target!r}")

    def decorate(func: F) -> F:
        _check_function(func, "bounce_to")
        is_async = inspect.iscoroutinefunction(func)
        if any(inspect.iscoroutinefunction(target) != is_async for target in (soft, hard)):
            kind = "async def" if is_async else "plain"
            raise RouteError(
                f"@bounce_to on {func.__module__}.{func.__qualname__}: soft and hard must be "
                f"{kind} functions, like the handler"
            )

        def pick(message: Any) -> Callable[..., Any]:
            if not message.is_bounce():
                return func
            return soft if message.bounce.is_soft() else hard

        if is_async:

            @functools.wraps(func)
            async def run_async(message: Any, *args: Any, **kwargs: Any) -> Any:
                return await pick(message)(message, *args, **kwargs)

            return cast(F, run_async)

        @functools.wraps(func)
        def run(message: Any, *args: Any, **kwargs: Any) -> Any:
            return pick(message)(message, *args, **kwargs)

        return cast(F, run)

    return decorate
