"""``mailrouter state``: see and change senders' states (list, show, set, reset).

Through the running server's control socket when one runs (so the shelve store, which it holds
open, works too), else on the state store itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from mailrouter.cli.common import ask_server, config_option, open_router, project_settings, table
from mailrouter.runtime.commands import Operations
from mailrouter.runtime.control import NotListening
from mailrouter.state import ERROR
from mailrouter.state.entries import ErrorReason

T = TypeVar("T")

key_option = click.option(
    "--key", default=None, metavar="KEY", help="The state key (a handler module's name by default)."
)


def _run(
    config: str,
    command: str,
    local: Callable[[Operations], Coroutine[Any, Any, T]],
    *,
    writes: bool,
    **args: Any,
) -> T:
    """``command`` on the running server, or ``local`` on the project's own router."""
    settings = project_settings(config)
    try:
        return ask_server(settings, command, **args)  # type: ignore[no-any-return]
    except NotListening:
        pass
    with open_router(settings, readonly=not writes) as router:
        return asyncio.run(local(Operations(settings, router)))


def _reason(entry: dict[str, Any]) -> str:
    reason = entry.get("reason")
    if entry["state"] != ERROR:
        return ""
    return ErrorReason(**reason).describe() if reason else "(no reason kept)"


def _show(entries: list[dict[str, Any]], as_json: bool, empty: str) -> None:
    if as_json:
        click.echo(json.dumps(entries, indent=2))
    elif not entries:
        click.echo(empty)
    else:
        rows = [(e["key"], e["sender"], e["state"], _reason(e)) for e in entries]
        click.echo(table(("KEY", "SENDER", "STATE", "WHY"), rows).rstrip())


@click.group()
def state() -> None:
    """See and change senders' states (START, the default, is never stored)."""


@state.command("list")
@config_option
@click.option("--state", "wanted", default=None, metavar="NAME", help="Only senders in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def state_list(config: str, wanted: str | None, as_json: bool) -> None:
    """List the stored states: key, sender, state (and why, for ERROR)."""
    entries = _run(config, "state.list", lambda ops: ops.states(wanted), writes=False, state=wanted)
    _show(entries, as_json, "no stored states" + (f" in {wanted}" if wanted else ""))


@state.command("show")
@config_option
@click.argument("sender")
@key_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def state_show(config: str, sender: str, key: str | None, as_json: bool) -> None:
    """Show SENDER's states, and why for ERROR (START where none is stored)."""
    entries = _run(
        config,
        "state.show",
        lambda ops: ops.states(sender=sender, key=key),
        writes=False,
        sender=sender,
        key=key,
    )
    where = f" under {key}" if key else ""
    _show(entries, as_json, f"{sender} is in START{where} (no state stored)")
    if any(entry["state"] == ERROR for entry in entries) and not as_json:
        click.echo(f"recover with: mailrouter state reset {sender} [--key KEY]")


@state.command("set")
@config_option
@click.argument("sender")
@click.argument("new_state", metavar="STATE")
@key_option
def state_set(config: str, sender: str, new_state: str, key: str | None) -> None:
    """Put SENDER into STATE (START, ERROR or a state function of the key's module)."""
    done = _run(
        config,
        "state.set",
        lambda ops: ops.set_state(sender, new_state, key),
        writes=True,
        sender=sender,
        state=new_state,
        key=key,
    )
    click.echo(f"{done['sender']} under {done['key']}: {done['previous']} -> {done['state']}")


@state.command("reset")
@config_option
@click.argument("sender")
@key_option
def state_reset(config: str, sender: str, key: str | None) -> None:
    """Put SENDER back into START (under KEY, or under every key it has a state in)."""
    changed = _run(
        config,
        "state.reset",
        lambda ops: ops.reset(sender, key),
        writes=True,
        sender=sender,
        key=key,
    )
    if not changed:
        click.echo(f"{sender} is in START already (no state stored)")
    for item in changed:
        click.echo(f"{item['sender']} under {item['key']}: {item['previous']} -> START")
