"""``mailrouter start``, ``stop``, ``status`` and ``reload``: the server's life from the shell."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any, get_args, get_origin, get_type_hints

import click

from mailrouter.cli.common import (
    CLI_SETTINGS,
    F,
    ask_server,
    config_option,
    configure_logging,
    project_settings,
    setting_help,
)
from mailrouter.config import ENV_PREFIX, Settings
from mailrouter.errors import MailRouterError
from mailrouter.runtime import daemon, pidlock
from mailrouter.runtime.control import NotListening

_TYPES = get_type_hints(Settings)
UNANSWERED = 4  # ``status``: a server holds the lock but does not answer on its control socket


def setting_options(func: F) -> F:
    """Add one option per setting; None (not given) leaves the file and env values in place."""
    for name in reversed(CLI_SETTINGS):
        flag = "--" + name.replace("_", "-")
        kind = _TYPES[name]
        help_text = f"{setting_help(name)}  [env var: {ENV_PREFIX}{name.upper()}]"
        extra: dict[str, Any] = {}
        if kind is bool:
            flag = f"{flag}/--no-{flag[2:]}"
        elif get_origin(kind) is tuple:
            extra = {"multiple": True, "metavar": "MODULE" if name == "handlers" else "TEXT"}
        elif name in ("port", "metrics_port", "console_port"):
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
    for name, value in overrides.items():
        if value == () and get_origin(_TYPES[name]) is tuple:
            overrides[name] = None  # a list option not given: the file's and env's value
    settings = project_settings(config, overrides)
    from mailrouter.runtime.launch import run
    from mailrouter.runtime.serve import leave_hung_handlers

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
@click.option("--json", "as_json", is_flag=True, help="Print the running server's status as JSON.")
@click.pass_context
def status(ctx: click.Context, config: str, as_json: bool) -> None:
    """Say whether the server runs: its address, pid, uptime, routes and the counts of its
    journal and queues. Exit status 1 if it does not run, 4 if it runs but does not answer
    on its control socket (still starting, or stuck): what a health check wants to know.

    Only a server that holds the lock counts: a pid file naming any other process is stale.
    """
    settings = project_settings(config)
    holder = pidlock.lock_holder(settings)
    if holder is None:
        click.echo(json.dumps({"running": False}) if as_json else pidlock.not_running(settings))
        ctx.exit(1)
    try:
        report = ask_server(settings, "status", timeout=10.0)
    except MailRouterError:  # not listening yet, or not answering: a health check's failure
        report = None
    # the pid file is written once the server is ready: a ready server must answer
    recorded = pidlock.read_pid(pidlock.pid_path(settings))
    unanswered = report is None and bool(settings.control_socket) and recorded is not None
    if as_json:
        click.echo(json.dumps({"running": True, "pid": holder.pid, **(report or {})}, indent=2))
        ctx.exit(UNANSWERED if unanswered else 0)
    if holder.pid is None:
        click.echo(
            f"mailrouter is running, but the process holding {pidlock.lock_path(settings)} "
            f"cannot be identified (pid file: {recorded or 'none'})"
        )
    elif recorded is None:  # locked, and the pid file is written once the socket is bound
        click.echo(f"mailrouter is starting (pid {holder.pid})")
    else:  # the kernel's pid: the pid file's is the server's own, in its own pid namespace
        click.echo(f"mailrouter running on {pidlock.read_address(settings)} (pid {holder.pid})")
    if report is not None:
        click.echo(_described(report))
    elif unanswered:
        click.echo(f"the control socket {settings.path(settings.control_socket)} does not answer")
        ctx.exit(UNANSWERED)


def _described(report: dict[str, Any]) -> str:
    """The control socket's status report as a few lines for people."""
    lines = [
        f"version {report['version']}, up {_duration(report['uptime'])},"
        f" {_count(report['workers'], 'worker')}, {report['protocol'].upper()},"
        f" {report['mode']} mode, {_count(report['routes'], 'route')}",
        f"sessions open: {report['sessions']}, messages being delivered: {report['delivering']}",
    ]
    journal = report["journal"]
    if journal is None:
        lines.append("journal: off")
    else:
        counts = ", ".join(f"{count} {name}" for name, count in journal.items() if count)
        lines.append(f"journal: {counts or 'empty'}")
    queues = ", ".join(
        f"{name} {count}" for name, count in report["queues"].items() if count is not None
    )
    lines.append(f"queues: {queues}")
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value]
    return " ".join(shown[:2]) or "0s"


@click.command()
@config_option
def reload(config: str) -> None:
    """Rebuild the routes from what the handler files say now (the old ones stay on an error)."""
    settings = project_settings(config)
    try:
        answer = ask_server(settings, "reload", timeout=None)  # the server bounds its imports
    except NotListening:
        pid = daemon.signal_server(settings, signal.SIGHUP)
        click.echo(f"sent SIGHUP to mailrouter (pid {pid}); the log says how the reload went")
        return
    click.echo(f"reloaded: {_count(answer['routes'], 'route')}")
