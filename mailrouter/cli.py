"""The ``mailrouter`` command: start, stop, status, routes, queue, send, sendmail, gen.

This is the only module that configures logging and turns exceptions into exit codes: every
``MailRouterError`` (and ``OSError``) becomes one ``Error: ...`` line and exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.handlers
import mimetypes
import os
import re
import smtplib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any, TypeVar, get_args, get_type_hints

import click

from . import __version__, daemon
from .config import ENV_PREFIX, FIELDS, Settings, load_settings
from .errors import MailRouterError, StoreError
from .message import MailRequest
from .queue import Queue
from .routing import Router

F = TypeVar("F", bound=Callable[..., Any])

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
PROGRESS_THRESHOLD = 20

# One line of help per setting: used for the ``start`` options and the generated config file.
SETTING_HELP = {
    "host": "Address to listen on.",
    "port": "TCP port to listen on (0 picks a free one).",
    "unix_socket": "Listen on this Unix socket path instead of host and port.",
    "protocol": "Speak SMTP or LMTP.",
    "hostname": "Name announced in greetings (empty: this machine's name).",
    "max_message_size": "Largest message accepted, in bytes (0: no limit).",
    "max_recipients": "Most recipients accepted per message.",
    "idle_timeout": "Seconds a client may stay idle before it is disconnected.",
    "session_timeout": "Seconds a whole session may last before it is disconnected.",
    "max_connections": "Clients served at once; more are turned away with 421.",
    "max_errors": "Bad commands a client may send before it is disconnected.",
    "tls_cert": "Certificate file (PEM) that enables STARTTLS.",
    "tls_key": "Private key file (PEM) of tls_cert (empty: the key is in tls_cert).",
    "require_starttls": "Refuse mail from clients that have not used STARTTLS.",
    "reject_unroutable": "Refuse recipients no route matches at RCPT time instead of queueing.",
    "handlers": "Handler modules to load (import strings), besides config/handlers/*.py.",
    "lock_scope": "Lock per sender and state key ('key') or one lock for all ('global').",
    "executor_threads": "Threads that run plain (non-async) handlers and state store calls.",
    "state_url": "Where senders' states are kept: shelve://PATH or memory://.",
    "undeliverable": "Maildir queue of messages no handler took.",
    "pid_file": "Pid file of the running server.",
    "log_file": "Log file of the server when it runs in the background.",
    "log_level": "Least important log messages written.",
    "user": "When started as root: the user to switch to after binding.",
    "group": "When started as root: the group to switch to after binding.",
    "allow_root": "Allow the server to keep running as root (not recommended).",
    "drain_timeout": "Seconds to let deliveries in progress finish when stopping.",
}


def _help(name: str) -> str:
    return SETTING_HELP.get(name) or f"The {name} setting."


_CLI_SETTINGS = [name for name in FIELDS if name not in ("config_dir", "defaults")]
_TYPES = get_type_hints(Settings)


class _Group(click.Group):
    """A click group that reports mailrouter's errors as one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MailRouterError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(_describe_os_error(exc)) from None


def _describe_os_error(exc: OSError) -> str:
    if exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror or str(exc) or type(exc).__name__


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mailrouter")
def main() -> None:
    """mailrouter: route incoming mail to Python handlers by address and sender state."""


# -- settings and helpers ---------------------------------------------------------------------


def _config_option(func: F) -> F:
    return click.option(
        "--config",
        "config",
        default="config",
        show_default=True,
        envvar=f"{ENV_PREFIX}CONFIG",
        show_envvar=True,
        type=click.Path(file_okay=False),
        help="The project's config folder.",
    )(func)


def _setting_options(func: F) -> F:
    """Add one option per setting; None (not given) leaves the file and env values in place."""
    for name in reversed(_CLI_SETTINGS):
        flag = "--" + name.replace("_", "-")
        kind = _TYPES[name]
        help_text = f"{_help(name)}  [env var: {ENV_PREFIX}{name.upper()}]"
        extra: dict[str, Any] = {}
        if kind is bool:
            flag = f"{flag}/--no-{flag[2:]}"
        elif name == "handlers":
            extra = {"multiple": True, "metavar": "MODULE"}
        elif name == "port":
            extra = {"type": click.IntRange(0, 65535)}
        elif get_args(kind):
            extra = {"type": click.Choice(get_args(kind), case_sensitive=False)}
        else:
            extra = {"type": kind}
        func = click.option(flag, name, default=None, help=help_text, **extra)(func)
    return func


def _settings(config: str, overrides: dict[str, Any] | None = None) -> Settings:
    """Load the settings of the project whose config folder is ``config`` (made absolute)."""
    folder = Path(config).absolute()
    if not folder.is_dir():
        raise MailRouterError(
            f"no config folder {config!r}: pass --config, or create a project with mailrouter gen"
        )
    return load_settings(folder, overrides)


@contextlib.contextmanager
def _open_router(settings: Settings, *, readonly: bool) -> Iterator[Router]:
    """A router built from the settings, its state store and executor released afterwards."""
    from .server import build_router

    router = build_router(settings, readonly=readonly)
    try:
        yield router
    finally:
        router.store.close()
        if router.executor is not None:
            router.executor.shutdown()


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Rows as left-aligned columns under ``headers``, two spaces apart."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _configure_logging(settings: Settings, *, to_file: bool) -> None:
    """Log to stderr (foreground) or the log file (background), at the configured level."""
    handler: logging.Handler
    if to_file:
        path = settings.path(settings.log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT, handlers=[handler], force=True)
    # aiosmtpd logs every session and command at INFO: keep that for DEBUG.
    quiet = settings.log_level != "DEBUG"
    logging.getLogger("mail.log").setLevel(logging.WARNING if quiet else logging.NOTSET)


# -- start, stop, status ----------------------------------------------------------------------


@main.command()
@_config_option
@click.option(
    "--foreground",
    is_flag=True,
    envvar=f"{ENV_PREFIX}FOREGROUND",
    show_envvar=True,
    help="Stay in the foreground and log to stderr.",
)
@_setting_options
def start(config: str, foreground: bool, **overrides: Any) -> None:
    """Start the server (in the background unless --foreground)."""
    if overrides.get("handlers") == ():
        overrides["handlers"] = None
    settings = _settings(config, overrides)
    from .server import run

    if foreground:
        daemon.ensure_not_running(settings)
        _configure_logging(settings, to_file=False)
        with daemon.pid_file(settings) as write_pid:

            def on_ready(address: str) -> None:
                write_pid(address)
                click.echo(f"mailrouter running on {address} (pid {os.getpid()})")

            run(settings, on_ready=on_ready)
        return

    def serve_detached(on_ready: Callable[[str], None]) -> None:
        _configure_logging(settings, to_file=True)
        run(settings, on_ready=on_ready)

    address = daemon.detach(settings, serve_detached)
    pid = daemon.read_pid(daemon.pid_path(settings))
    click.echo(f"mailrouter running on {address} (pid {pid})")


@main.command()
@_config_option
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
    settings = _settings(config)
    pid = daemon.stop(settings, settings.drain_timeout + 10 if timeout is None else timeout, force)
    click.echo(f"mailrouter stopped (pid {pid})")


@main.command()
@_config_option
@click.pass_context
def status(ctx: click.Context, config: str) -> None:
    """Say whether the server runs, with its pid and address (exit status 1 if not)."""
    settings = _settings(config)
    pid = daemon.running_pid(settings)
    if pid is None:
        click.echo("mailrouter is not running")
        ctx.exit(1)
    click.echo(f"mailrouter running on {daemon.read_address(settings)} (pid {pid})")


# -- routes -----------------------------------------------------------------------------------


@main.command()
@_config_option
@click.option("--test", "address", metavar="ADDRESS", help="Show what handles mail to ADDRESS.")
@click.option(
    "--sender", default="", metavar="ADDRESS", help="The sender for --test [default: none, START]."
)
@click.pass_context
def routes(ctx: click.Context, config: str, address: str | None, sender: str) -> None:
    """List the routes in match order, or (--test) the handlers that would run for an address."""
    settings = _settings(config)
    with _open_router(settings, readonly=True) as router:
        if address is None:
            rows = [
                (route.pattern, handler.qualname, _flags(handler.stateless, handler.nolocking))
                for route in router.routes()
                for handler in route.handlers
            ]
            click.echo(_table(("PATTERN", "HANDLER", "FLAGS"), rows) if rows else "no routes")
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
    click.echo(_table(("HANDLER", "PATTERN", "CAPTURES"), rows))


def _flags(stateless: bool, nolocking: bool) -> str:
    return ",".join(name for name, on in (("stateless", stateless), ("nolocking", nolocking)) if on)


# -- queue ------------------------------------------------------------------------------------


@main.group()
def queue() -> None:
    """Inspect and replay the undeliverable queue."""


def _open_queue(config: str) -> Queue:
    """The undeliverable queue of the project."""
    settings = _settings(config)
    return Queue(settings.path(settings.undeliverable))


def _not_queued(key: str) -> MailRouterError:
    return MailRouterError(f"no message {key!r} in the undeliverable queue")


@queue.command("list")
@_config_option
def queue_list(config: str) -> None:
    """List the queued messages, oldest first."""
    store = _open_queue(config)
    keys, rows = store.keys(), []
    for key in keys:
        try:
            entry = store.read(key)
        except KeyError:
            continue  # removed meanwhile
        except MailRouterError as exc:
            rows.append((key, "?", "?", "?", f"unreadable: {exc}"))
            continue
        rows.append(
            (
                key,
                entry.queued_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                entry.message.sender or "<>",
                ", ".join(entry.message.recipients),
                "; ".join(dict.fromkeys(entry.reasons.values())),
            )
        )
    header = ("KEY", "DATE", "SENDER", "RECIPIENTS", "REASON")
    click.echo(_table(header, rows) if rows else "the undeliverable queue is empty")


@queue.command("show")
@_config_option
@click.argument("key")
def queue_show(config: str, key: str) -> None:
    """Show one queued message: its envelope and reasons, then the message as received."""
    try:
        entry = _open_queue(config).read(key)
    except KeyError:
        raise _not_queued(key) from None
    peer = entry.message.peer
    lines = [
        f"Key:       {entry.key}",
        f"Queued:    {format_datetime(entry.queued_at)}",
        f"Sender:    <{entry.message.sender}>",
        f"Peer:      {' '.join(map(str, peer)) if isinstance(peer, tuple) else peer or '-'}",
    ]
    lines += [f"Recipient: {rcpt}: {reason}" for rcpt, reason in entry.reasons.items()]
    click.echo("\n".join(lines) + "\n")
    click.echo(entry.data, nl=False)


@queue.command("count")
@_config_option
def queue_count(config: str) -> None:
    """Print how many messages are queued."""
    click.echo(len(_open_queue(config)))


@queue.command("remove")
@_config_option
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
def queue_remove(config: str, keys: tuple[str, ...]) -> None:
    """Delete queued messages by key."""
    store = _open_queue(config)
    for key in keys:
        try:
            store.remove(key)
        except KeyError:
            raise _not_queued(key) from None
        click.echo(f"removed {key}")


@queue.command("clear")
@_config_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def queue_clear(config: str, yes: bool) -> None:
    """Delete every queued message."""
    store = _open_queue(config)
    count = len(store)
    if not count:
        click.echo("the undeliverable queue is empty")
        return
    if not yes:
        click.confirm(f"Delete all {count} queued messages?", abort=True)
    store.clear()
    click.echo(f"removed {count} messages")


@queue.command("replay")
@_config_option
def queue_replay(config: str) -> None:
    """Deliver each queued message again; remove those handled now, keep the rest."""
    settings = _settings(config)
    store = Queue(settings.path(settings.undeliverable))
    keys = store.keys()
    if not keys:
        click.echo("the undeliverable queue is empty")
        return
    _configure_logging(settings, to_file=True)
    with contextlib.ExitStack() as stack:
        try:
            router = stack.enter_context(_open_router(settings, readonly=False))
        except StoreError as exc:
            if daemon.running_pid(settings) is not None:
                raise MailRouterError(f"{exc}: stop the server first (mailrouter stop)") from None
            raise
        router.undeliverable = None  # the result itself says whether a message is handled now
        bar = stack.enter_context(
            click.progressbar(
                length=len(keys), label="replaying", hidden=len(keys) <= PROGRESS_THRESHOLD
            )
        )
        kept = asyncio.run(_replay(router, store, keys, lambda: bar.update(1)))
    for key, reason in kept:
        click.echo(f"kept {key}: {reason}")
    done = len(keys) - len(kept)
    click.echo(f"replayed {len(keys)} messages: {done} delivered, {len(kept)} still undeliverable")


async def _replay(
    router: Router, store: Queue, keys: Sequence[str], step: Callable[[], None]
) -> list[tuple[str, str]]:
    """Redeliver each entry; a partly handled one is re-queued for the rest. Returns the kept."""
    kept: list[tuple[str, str]] = []
    for key in keys:
        step()
        try:
            entry = store.read(key)
        except KeyError:
            continue
        except MailRouterError as exc:
            kept.append((key, str(exc)))
            continue
        result = await router.deliver(entry.message)
        failing = {
            reply.recipient: result.reasons.get(reply.recipient, str(reply))
            for reply in result.replies
            if reply.code >= 300
        }
        if failing and len(failing) == len(set(entry.message.recipients)):
            kept.append((key, "; ".join(dict.fromkeys(failing.values()))))
            continue
        if failing:  # re-queue only the recipients still failing
            rest = MailRequest(entry.message.peer, entry.message.sender, list(failing), entry.data)
            new_key = store.push(rest, failing)
            kept.append((new_key, "; ".join(dict.fromkeys(failing.values()))))
        with contextlib.suppress(KeyError):
            store.remove(key)
    return kept


# -- send, sendmail ---------------------------------------------------------------------------


def _client_options(func: F) -> F:
    for decorator in reversed(
        [
            click.option(
                "--host",
                default="127.0.0.1",
                show_default=True,
                envvar=f"{ENV_PREFIX}HOST",
                show_envvar=True,
                help="Server to send to.",
            ),
            click.option(
                "--port",
                type=click.IntRange(1, 65535),
                default=8825,
                show_default=True,
                envvar=f"{ENV_PREFIX}PORT",
                show_envvar=True,
                help="Port of the server.",
            ),
            click.option(
                "--lmtp",
                is_flag=True,
                envvar=f"{ENV_PREFIX}SEND_LMTP",
                show_envvar=True,
                help="Speak LMTP instead of SMTP.",
            ),
        ]
    ):
        func = decorator(func)
    return func


def _transmit(
    host: str, port: int, lmtp: bool, sender: str, recipients: Sequence[str], data: bytes
) -> list[tuple[str, int, str]]:
    """Send ``data``; the replies that matter as (whose, code, text): refusals, then DATA's.

    ``whose`` is empty for the single answer to DATA in SMTP; LMTP answers per recipient.
    """
    replies: list[tuple[str, int, str]] = []
    client_class = smtplib.LMTP if lmtp else smtplib.SMTP
    try:
        with client_class(host, port, timeout=60) as client:
            client.ehlo_or_helo_if_needed()
            code, text = client.mail(sender)
            if code != 250:
                return [(f"sender <{sender}>", code, _text(text))]
            accepted = []
            for rcpt in recipients:
                code, text = client.rcpt(rcpt)
                if code in (250, 251):
                    accepted.append(rcpt)
                else:
                    replies.append((f"<{rcpt}>", code, _text(text)))
            if accepted:
                answers = [client.data(data)]
                answers += [client.getreply() for _ in accepted[1:]] if lmtp else []
                whose = [f"<{rcpt}>" for rcpt in accepted] if lmtp else [""]
                replies += [
                    (who, code, _text(text))
                    for who, (code, text) in zip(whose, answers, strict=True)
                ]
    except smtplib.SMTPResponseException as exc:
        raise MailRouterError(
            f"{host}:{port} answered {exc.smtp_code} {_text(exc.smtp_error)}"
        ) from None
    except OSError as exc:  # smtplib's other errors are OSErrors too
        raise MailRouterError(f"cannot send to {host}:{port}: {_describe_os_error(exc)}") from None
    return replies


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _report(ctx: click.Context, replies: Sequence[tuple[str, int, str]]) -> None:
    """Print the accepting replies; the refusals as errors, then exit with status 1."""
    refusals = []
    for whose, code, text in replies:
        if code < 300:
            click.echo(f"{whose}: {code} {text}" if whose else f"{code} {text}")
        else:
            refusals.append(f"{whose} refused: {code} {text}".lstrip())
    for line in refusals:
        click.echo(f"Error: {line}", err=True)
    if refusals:
        ctx.exit(1)


@main.command()
@click.option("--to", "recipients", multiple=True, required=True, help="A recipient (repeatable).")
@click.option(
    "--from",
    "sender",
    required=True,
    envvar=f"{ENV_PREFIX}SEND_FROM",
    show_envvar=True,
    help="The sender (envelope and From header).",
)
@click.option("--subject", default="", help="The Subject header.")
@click.option("--body", default="", help="The text of the message.")
@click.option(
    "--attach",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A file to attach (repeatable).",
)
@_client_options
@click.pass_context
def send(
    ctx: click.Context,
    recipients: tuple[str, ...],
    sender: str,
    subject: str,
    body: str,
    attach: tuple[str, ...],
    host: str,
    port: int,
    lmtp: bool,
) -> None:
    """Compose a message and send it to a server; print its reply."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid()
    message.set_content(body)
    for name in attach:
        kind, encoding = mimetypes.guess_type(name)
        if kind is None or encoding is not None:
            kind = "application/octet-stream"
        maintype, subtype = kind.split("/", 1)
        message.add_attachment(
            Path(name).read_bytes(), maintype, subtype, filename=os.path.basename(name)
        )
    data = message.as_bytes(policy=SMTP_POLICY)
    _report(ctx, _transmit(host, port, lmtp, sender, recipients, data))


@main.command()
@click.argument("recipients", nargs=-1, required=True, metavar="RECIPIENT...")
@click.option(
    "-f",
    "--from",
    "sender",
    envvar=f"{ENV_PREFIX}SEND_FROM",
    show_envvar=True,
    help="Envelope sender [default: the message's From address].",
)
@_client_options
@click.pass_context
def sendmail(
    ctx: click.Context,
    recipients: tuple[str, ...],
    sender: str | None,
    host: str,
    port: int,
    lmtp: bool,
) -> None:
    """Send the message on stdin, as is, to the RECIPIENTs."""
    data = sys.stdin.buffer.read()
    data = re.sub(rb"\r?\n", b"\r\n", data)
    if sender is None:
        sender = parseaddr(str(BytesHeaderParser().parsebytes(data).get("From", "")))[1]
        if not sender:
            raise MailRouterError("no sender: the message has no From address; pass --from")
    _report(ctx, _transmit(host, port, lmtp, sender, recipients, data))


# -- gen --------------------------------------------------------------------------------------


@main.command()
@click.argument("path", type=click.Path(file_okay=False))
def gen(path: str) -> None:
    """Create a new project in PATH: settings, a hello handler, and its test."""
    project = Path(path)
    if project.exists() and any(project.iterdir()):
        raise MailRouterError(f"{path} exists and is not empty")
    files = {
        "config/mailrouter.toml": _config_template(),
        "config/handlers/hello.py": HELLO_HANDLER,
        "tests/test_hello.py": HELLO_TEST,
        ".gitignore": "/run/\n/logs/\n__pycache__/\n",
    }
    for name, text in files.items():
        target = project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    click.echo(f"created a mailrouter project in {path}")
    click.echo(f"  start it:  cd {path} && mailrouter start")
    click.echo("  test it:   pytest")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a valid TOML basic string
    return repr(value)


def _config_template() -> str:
    """A commented mailrouter.toml listing every setting with its default."""
    defaults = Settings()
    lines = [
        "# mailrouter settings. Each can also be set by a MAILROUTER_<NAME> environment variable",
        "# or a `mailrouter start --<name>` option, which take precedence over this file.",
        "# Relative paths are relative to the project folder (the parent of this folder).",
    ]
    for name in _CLI_SETTINGS:
        value = _toml_value(getattr(defaults, name))
        lines += ["", f"# {_help(name)}"]
        lines.append(f"{name} = {value}" if name == "handlers" else f"# {name} = {value}")
    lines += [
        "",
        "# Regexes for the (name) captures in route patterns, shared by all handler modules.",
        "[defaults]",
        "host = 'localhost|example\\.com'",
        "",
    ]
    return "\n".join(lines)


HELLO_HANDLER = '''\
"""An example handler: mail to hello@ one of the domains of [defaults] host in mailrouter.toml.

Every module in config/handlers/ is loaded when mailrouter starts. A function decorated with
@route handles mail to matching addresses while the sender is in the state named like the
function (START first); it returns the handler for the sender's next message, or None to stay.
"""

from __future__ import annotations

import logging

from mailrouter import MailRequest, route, route_like

log = logging.getLogger(__name__)


@route("hello@(host)")
def START(message: MailRequest, host: str) -> object:
    """A sender's first message: log it, and remember that we have met."""
    log.info("hello from %s to %s: %s", message.sender, message.recipient, message["Subject"])
    return GREETED


@route_like(START)
def GREETED(message: MailRequest, host: str) -> object:
    """Every later message from the same sender."""
    log.info("%s wrote to hello@%s again", message.sender, host)
    return None
'''

HELLO_TEST = '''\
"""Tests of the hello handler, in-process: run ``pytest`` in the project folder."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mailrouter import MailRequest, Router
from mailrouter.config import load_settings

CONFIG = Path(__file__).resolve().parent.parent / "config"
if str(CONFIG) not in sys.path:
    sys.path.insert(0, str(CONFIG))  # config/handlers/hello.py imports as handlers.hello


def make_router() -> Router:
    """A router with the project's capture defaults and the hello handler loaded."""
    router = Router(defaults=load_settings(CONFIG).defaults)
    router.load(["handlers.hello"])
    return router


def mail(to: str, sender: str = "alice@example.org") -> MailRequest:
    data = f"From: {sender}\\r\\nTo: {to}\\r\\nSubject: hi\\r\\n\\r\\nHello!\\r\\n".encode()
    return MailRequest(("127.0.0.1", 40000), sender, [to], data)


def test_hello_greets_then_remembers_the_sender() -> None:
    router = make_router()
    first = asyncio.run(router.deliver(mail("hello@localhost")))
    assert [reply.code for reply in first.replies] == [250]
    assert router.get_state("handlers.hello", mail("hello@localhost")) == "GREETED"
    again = asyncio.run(router.deliver(mail("hello@example.com")))
    assert [reply.code for reply in again.replies] == [250]


def test_other_addresses_have_no_route() -> None:
    router = make_router()
    for address in ("someone@localhost", "hello@example.org"):
        result = asyncio.run(router.deliver(mail(address)))
        assert [reply.code for reply in result.replies] == [550]
'''


if __name__ == "__main__":
    main(prog_name="mailrouter")
