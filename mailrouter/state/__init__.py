"""Per-sender FSM state: the StateStorage protocol, the built-in stores, and ``open_store(url)``.

``open_store`` knows the backends only by import string (uvicorn's ``import_from_string``): a
backend is imported when a URL names it, so an optional extra that is missing costs nothing
until it is asked for, and the base layer imports no backend.

- ``memory://`` (``state.memory``), ``shelve://path`` (``state.shelf``, the embedded default);
- the shared stores, safe for ``workers > 1`` (``cross_process = True``): ``sqlite:///path``
  (``state.sqlite``), ``redis://host:port/db`` (``state.redis``, ``mailrouter[redis]``),
  ``postgresql://user@host/db`` (``state.postgres``, ``mailrouter[postgres]``);
- a custom store's import string, ``package.module:Factory`` (``state.custom``).

``state.entries`` lists the states for operators and keeps why a sender is in ERROR.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, cast

from mailrouter.errors import StoreError
from mailrouter.state.base import ERROR, START, ListableStorage, StateStorage, listable, split_url
from mailrouter.state.entries import (
    ErrorReason,
    StateEntry,
    change_state,
    list_states,
    read_reason,
    record_error,
)
from mailrouter.state.memory import MemoryStorage
from mailrouter.state.shelf import ShelveStorage

__all__ = [
    "ERROR",
    "START",
    "ErrorReason",
    "ListableStorage",
    "MemoryStorage",
    "ShelveStorage",
    "StateEntry",
    "StateStorage",
    "change_state",
    "list_states",
    "listable",
    "open_store",
    "read_reason",
    "record_error",
]


@dataclass(frozen=True)
class Backend:
    """A store class named by import string, with a ``from_url(url, readonly=)`` constructor."""

    target: str  # "module:Class"
    extra: str = ""  # the mailrouter extra that installs its packages
    packages: frozenset[str] = frozenset()


BACKENDS: dict[str, Backend] = {
    "memory": Backend("mailrouter.state.memory:MemoryStorage"),
    "shelve": Backend("mailrouter.state.shelf:ShelveStorage"),
    "sqlite": Backend("mailrouter.state.sqlite:SqliteStorage"),
    "redis": Backend("mailrouter.state.redis:RedisStorage", "redis", frozenset({"redis"})),
    "rediss": Backend("mailrouter.state.redis:RedisStorage", "redis", frozenset({"redis"})),
    "postgresql": Backend(
        "mailrouter.state.postgres:PostgresStorage",
        "postgres",
        frozenset({"psycopg", "psycopg_pool"}),
    ),
}
BACKENDS["postgres"] = BACKENDS["postgresql"]
CUSTOM = "mailrouter.state.custom:open_custom"


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def open_store(url: str, *, readonly: bool = False) -> StateStorage:
    """Open the state store named by ``url`` (a URL of a known scheme, or an import string)."""
    if "://" not in url and url.partition(":")[2]:
        return cast(StateStorage, _load(CUSTOM)(url, readonly=readonly))
    scheme = split_url(url).scheme
    backend = BACKENDS.get(scheme)
    if backend is None:
        known = ", ".join(f"{name}://" for name in sorted(BACKENDS))
        raise StoreError(
            f"unknown state store URL {url!r}; known schemes: {known},"
            " or an import string like 'package.module:StoreClass'"
        )
    try:
        store_class = _load(backend.target)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in backend.packages:
            raise
        raise StoreError(
            f"{scheme}:// state stores need the {exc.name!r} package:"
            f" pip install 'mailrouter[{backend.extra}]'"
        ) from exc
    return cast(StateStorage, store_class.from_url(url, readonly=readonly))
