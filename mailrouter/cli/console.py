"""``mailrouter console``: serve the web console beside a running server, over its control
socket (the console inside the server is ``console_port``; this one needs neither)."""

from __future__ import annotations

import asyncio
import signal

import click

from mailrouter.cli.common import ask_server, config_option, configure_logging, project_settings
from mailrouter.config import ENV_PREFIX, Settings
from mailrouter.errors import MailRouterError
from mailrouter.runtime.control import NotListening
from mailrouter.runtime.web import load_console


@click.command()
@config_option
@click.option(
    "--host",
    metavar="ADDRESS",
    help=f"Listen here [default: console_host, {ENV_PREFIX}CONSOLE_HOST].",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help=f"Listen on this port (0: a free one) [default: console_port, {ENV_PREFIX}CONSOLE_PORT].",
)
def console(config: str, host: str | None, port: int | None) -> None:
    """Serve the web console for the running server, through its control socket."""
    settings = project_settings(config, {"console_host": host, "console_port": port})
    if port is None and not settings.console_port:
        raise MailRouterError("give the console a port: --port, or the console_port setting")
    load_console()  # the extra's error, before anything else
    try:
        ask_server(settings, "status")
    except NotListening as exc:
        raise MailRouterError(f"{exc}: the console needs a running server") from None
    configure_logging(settings, to_file=False)
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    from mailrouter.console.client import SocketCommands
    from mailrouter.console.service import ConsoleServer

    commands = SocketCommands(settings.path(settings.control_socket))
    server = ConsoleServer(settings, commands)
    await server.start()
    click.echo(f"mailrouter console on {server.url}")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        await server.stop()
