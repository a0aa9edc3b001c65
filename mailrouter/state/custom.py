"""Custom state stores named by an import string: ``package.module:Factory[?name=value&...]``.

``Factory`` (a class or any callable; a dotted path inside the module is allowed) is called with
the query options as string keyword arguments, plus ``readonly=True`` when the store is opened
read-only and the factory takes a ``readonly`` parameter. What it returns must have the
``StateStorage`` methods; set ``cross_process = True`` on it if ``workers > 1`` may share it.
``items()`` (``ListableStorage``) is optional: without it the store routes mail as usual, but
operators cannot list its states.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any, cast
from urllib.parse import parse_qsl

from mailrouter.errors import StoreError
from mailrouter.state.base import StateStorage

_NAME = r"[^\W\d]\w*(?:\.[^\W\d]\w*)*"
_SPEC = re.compile(rf"(?P<module>{_NAME}):(?P<attr>{_NAME})(?:\?(?P<query>.*))?", re.DOTALL)
_METHODS = ("get", "set", "clear", "lock", "close")


def open_custom(spec: str, *, readonly: bool = False) -> StateStorage:
    """Import the factory ``spec`` names, call it, and check that it made a state store."""
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise StoreError(
            f"state store {spec!r} is neither a URL nor an import string like"
            " 'package.module:StoreClass'"
        )
    factory = _import(spec, match["module"], match["attr"])
    kwargs: dict[str, Any] = dict(parse_qsl(match["query"] or "", keep_blank_values=True))
    if readonly and _takes_readonly(factory):
        kwargs["readonly"] = True
    try:
        store = factory(**kwargs)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot create state store {spec!r}: {_describe(exc)}") from exc
    missing = [name for name in _METHODS if not callable(getattr(store, name, None))]
    if missing:
        if "close" not in missing:
            store.close()
        raise StoreError(
            f"state store {spec!r} made a {type(store).__name__!r}, which is not a StateStorage:"
            f" it has no {', '.join(missing)} method"
        )
    return cast(StateStorage, store)


def _import(spec: str, module_name: str, attr: str) -> Any:
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise StoreError(f"cannot import state store {spec!r}: {_describe(exc)}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise StoreError(
                f"cannot import state store {spec!r}: module {module_name!r} has no {attr!r}"
            ) from None
    if not callable(target):
        raise StoreError(f"state store {spec!r} names a {type(target).__name__}, not a factory")
    return target


def _takes_readonly(factory: Any) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "readonly" in parameters


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
