"""``mailrouter routes``: list the routes, or show what would handle mail to an address."""

from __future__ import annotations

import click

from mailrouter.cli.common import config_option, open_router, project_settings, table


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
        matching = len(router.match(address))
    if not plan:
        why = f" ({matching} matching, none in the sender's state)" if matching else ""
        click.echo(f"no handler for {address}{why}")
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


def _flags(stateless: bool, nolocking: bool) -> str:
    return ",".join(name for name, on in (("stateless", stateless), ("nolocking", nolocking)) if on)
