"""``mailrouter start``, ``stop`` and ``status``: the server's lifecycle from the shell."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, get_args, get_type_hints

import click

from mailrouter.cli.common import (
    CLI_SETTINGS,
    F,
    config_option,
    configure_logging,
    project_settings,
    setting_help,
)
from mailrouter.config import ENV_PREFIX, Settings
from mailrouter.runtime import daemon, pidlock

_TYPES = get_type_hints(Settings)


def setting_options(func: F) -> F:
    """Add one option per setting; None (not given) leaves the file and env values in place."""
    for name in reversed(CLI_SETTINGS):
        flag = "--" + name.replace("_", "-")
        kind = _TYPES[name]
        help_text = f"{setting_help(name)}  [env var: {ENV_PREFIX}{name.upper()}]"
        extra: dict[str, Any] = {}
        if kind is bool:
            flag = f"{flag}/--no-{flag[2:]}"
        elif name == "handlers":
            extra = {"multiple": True, "metavar": "MODULE"}
        elif name in ("port", "metrics_port"):
            extra = {"type": click.IntRange(0, 65535)}
        elif get_args(kind):
            extra = {"type": click.Choice(get_args(kind), case_sensitive=False)}
        else:
            extra = {"type": kind}
        func = click.option(flag, name, default=None, help=help_text, **extra)(func)
    return func


@click.command()
@config_option
@click.option(
    "--foreground",
    is_flag=True,
    envvar=f"{ENV_PREFIX}FOREGROUND",
    show_envvar=True,
    help="Stay in the foreground and log to stderr.",
)
@setting_options
def start(config: str, foreground: bool, **overrides: Any) -> None:
    """Start the server (in the background unless --foreground)."""
    if overrides.get("handlers") == ():
        overrides["handlers"] = None
    settings = project_settings(config, overrides)
    from mailrouter.runtime.launch import run
    from mailrouter.runtime.server import leave_hung_handlers

    if foreground:
        configure_logging(settings, to_file=False)
        with pidlock.pid_file(settings) as write_pid:  # the lock decides, before anything binds

            def on_ready(address: str) -> None:
                write_pid(address)
                click.echo(f"mailrouter running on {address} (pid {os.getpid()})")

            run(settings, on_ready=on_ready)
        leave_hung_handlers()  # the pid file is gone; a hung handler must not hold the exit
        return

    def serve_detached(on_ready: Callable[[str], None]) -> None:
        configure_logging(settings, to_file=True)
        run(settings, on_ready=on_ready)

    address = daemon.detach(settings, serve_detached)
    pid = pidlock.read_pid(pidlock.pid_path(settings))
    click.echo(f"mailrouter running on {address} (pid {pid})")


@click.command()
@config_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    envvar=f"{ENV_PREFIX}STOP_TIMEOUT",
    show_envvar=True,
    help="Seconds to wait for the server to exit [default: drain_timeout + 10].",
)
@click.option(
    "--force",
    is_flag=True,
    envvar=f"{ENV_PREFIX}STOP_FORCE",
    show_envvar=True,
    help="Kill the server (SIGKILL) if it has not exited in time.",
)
def stop(config: str, timeout: float | None, force: bool) -> None:
    """Stop the server gracefully: deliveries in progress finish first."""
    settings = project_settings(config)
    pid = daemon.stop(settings, settings.drain_timeout + 10 if timeout is None else timeout, force)
    click.echo(f"mailrouter stopped (pid {pid})")


@click.command()
@config_option
@click.pass_context
def status(ctx: click.Context, config: str) -> None:
    """Say whether the server runs, with its pid and address (exit status 1 if not).

    Only a server that holds the lock counts: a pid file naming any other process is stale.
    """
    settings = project_settings(config)
    holder = pidlock.lock_holder(settings)
    if holder is None:
        click.echo(pidlock.not_running(settings))
        ctx.exit(1)
    recorded = pidlock.read_pid(pidlock.pid_path(settings))
    if holder.pid is None:
        click.echo(
            f"mailrouter is running, but the process holding {pidlock.lock_path(settings)} "
            f"cannot be identified (pid file: {recorded or 'none'})"
        )
    elif recorded is None:  # locked, and the pid file is written once the socket is bound
        click.echo(f"mailrouter is starting (pid {holder.pid})")
    else:  # the kernel's pid: the pid file's is the server's own, in its own pid namespace
        click.echo(f"mailrouter running on {pidlock.read_address(settings)} (pid {holder.pid})")
