"""The route table as operators see it, and the tester: what would run now for mail from a
sender to an address, with the captures, and why nothing would when the sender is in ERROR.

Both read the state store without its locks (a look, not a transition); they block on it, so
call them in a thread. Results are plain JSON values.
"""

from __future__ import annotations

from typing import Any

from mailrouter.message import MailRequest
from mailrouter.routing.router import Match, Router
from mailrouter.state import ERROR, START, read_reason


def route_table(router: Router) -> list[dict[str, Any]]:
    """Each route in match order, with its handlers and their flags."""
    return [
        {
            "pattern": route.pattern,
            "handlers": [
                {
                    "handler": handler.qualname,
                    "module": handler.module,
                    "name": handler.name,
                    "stateless": handler.stateless,
                    "nolocking": handler.nolocking,
                    "async": handler.is_async,
                }
                for handler in route.handlers
            ],
        }
        for route in router.routes()
    ]


def state_functions(router: Router) -> dict[str, set[str]]:
    """Each module with stateful handlers: the names of its state functions."""
    states: dict[str, set[str]] = {}
    for route in router.routes():
        for handler in route.handlers:
            if not handler.stateless:
                states.setdefault(handler.module, set()).add(handler.name)
    return states


def machines(router: Router) -> dict[str, list[str]]:
    """Each module with stateful handlers: the states a sender can be put into there."""
    return {
        module: sorted({START, ERROR} | names) for module, names in state_functions(router).items()
    }


def route_trial(router: Router, address: str, sender: str = "") -> dict[str, Any]:
    """The handlers that would run now for mail from ``sender`` to ``address`` (``plan``),
    every handler whose pattern matches (``matching``) and, for each state machine the sender
    is in ERROR in, why (``errors``: key, handler, error, time)."""
    plan = router.plan(address, sender)
    matching = router.match(address)
    return {
        "address": address,
        "sender": sender,
        "plan": [_match_json(found) for found in plan],
        "matching": [_match_json(found) for found in matching],
        "errors": [] if plan else in_error(router, matching, address, sender),
    }


def _match_json(found: Match) -> dict[str, Any]:
    return {
        "handler": found.handler.qualname,
        "pattern": found.route.pattern,
        "stateless": found.handler.stateless,
        "captures": dict(found.captures),
    }


def in_error(
    router: Router, matching: list[Match], address: str, sender: str
) -> list[dict[str, Any]]:
    """The state machines among ``matching`` that ``sender`` is in ERROR in, with why."""
    probe = MailRequest(None, sender, [address], b"")
    keys = dict.fromkeys(
        router.state_key(found.handler.module, probe)
        for found in matching
        if not found.handler.stateless
    )
    stuck = []
    for key in keys:
        if router.store.get(key, probe.route_from) != ERROR:
            continue
        reason = read_reason(router.store, key, probe.route_from)
        stuck.append(
            {
                "key": key,
                "sender": probe.route_from,
                "handler": reason.handler if reason else None,
                "error": reason.error if reason else None,
                "time": reason.time if reason else None,
            }
        )
    return stuck
