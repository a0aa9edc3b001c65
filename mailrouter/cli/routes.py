"""``mailrouter routes``: list the routes, or show what would handle mail to an address."""

from __future__ import annotations

import shlex

import click

from mailrouter.cli.common import config_option, open_router, project_settings, table
from mailrouter.routing.router import Match, Router
from mailrouter.runtime.routes import in_error
from mailrouter.state.entries import ErrorReason


@click.command()
@config_option
@click.option("--test", "address", metavar="ADDRESS", help="Show what handles mail to ADDRESS.")
@click.option(
    "--sender", default="", metavar="ADDRESS", help="The sender for --test [default: none, START]."
)
@click.pass_context
def routes(ctx: click.Context, config: str, address: str | None, sender: str) -> None:
    """List the routes in match order, or (--test) the handlers that would run for an address."""
    settings = project_settings(config)
    with open_router(settings, readonly=True) as router:
        if address is None:
            rows = [
                (route.pattern, handler.qualname, _flags(handler.stateless, handler.nolocking))
                for route in router.routes()
                for handler in route.handlers
            ]
            click.echo(table(("PATTERN", "HANDLER", "FLAGS"), rows) if rows else "no routes")
            return
        plan = router.plan(address, sender)
        matching = router.match(address)
        stuck = [] if plan else _stuck_lines(router, matching, address, sender)
    if not plan:
        why = f" ({len(matching)} matching, none in the sender's state)" if matching else ""
        click.echo(f"no handler for {address}{why}")
        for line in stuck:
            click.echo(f"  {line}")
        ctx.exit(1)
    rows = [
        (
            found.handler.qualname,
            found.route.pattern,
            " ".join(f"{k}={v}" for k, v in found.captures.items()),
        )
        for found in plan
    ]
    click.echo(table(("HANDLER", "PATTERN", "CAPTURES"), rows))


def _stuck_lines(router: Router, matching: list[Match], address: str, sender: str) -> list[str]:
    """A line for each matching state machine the sender is in ERROR in: why, and the cure."""
    lines = []
    for stuck in in_error(router, matching, address, sender):
        why = (
            ErrorReason(stuck["handler"], stuck["error"], stuck["time"]).describe()
            if stuck["handler"] is not None
            else "(no reason recorded)"
        )
        cure = (
            f"mailrouter state reset {shlex.quote(stuck['sender'])}"
            f" --key {shlex.quote(stuck['key'])}"
        )
        lines.append(f"{stuck['key']}: ERROR {why} (recover: {cure})")
    return lines


def _flags(stateless: bool, nolocking: bool) -> str:
    return ",".join(name for name, on in (("stateless", stateless), ("nolocking", nolocking)) if on)
