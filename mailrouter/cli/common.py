"""Helpers shared by the ``mailrouter`` commands: settings, the router, tables and logging."""

from __future__ import annotations

import contextlib
import datetime
import difflib
import json
import logging
import logging.handlers
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from mailrouter.config import ENV_PREFIX, FIELDS, Settings, load_settings
from mailrouter.errors import MailRouterError, StoreError
from mailrouter.routing.router import Router

F = TypeVar("F", bound=Callable[..., Any])

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# One line of help per setting: used for the ``start`` options and the generated config file.
SETTING_HELP = {
    "host": "Address to listen on.",
    "port": "TCP port to listen on (0 picks a free one).",
    "unix_socket": "Listen on this Unix socket path instead of host and port.",
    "unix_socket_mode": "Permissions of the Unix socket, in octal: connecting needs write (w).",
    "unix_socket_group": "Group of the Unix socket, by name or gid (empty: the server's),"
    " such as 'postfix' for Postfix's lmtp client.",
    "protocol": "Speak SMTP or LMTP.",
    "hostname": "Name announced in greetings (empty: this machine's name).",
    "max_message_size": "Largest message accepted, in bytes (0: no limit).",
    "max_recipients": "Most recipients accepted per message.",
    "idle_timeout": "Seconds a client may stay idle before it is disconnected.",
    "session_timeout": "Seconds a whole session may last before it is disconnected.",
    "max_connections": "Clients served at once; more are turned away with 421.",
    "max_errors": "Bad commands a client may send before it is disconnected.",
    "max_received_headers": "More Received: headers than this is a mail loop (554 5.4.6).",
    "max_header_size": "Largest header section accepted, in bytes (552 5.3.4).",
    "handler_timeout": "Seconds the handlers may take for one message, then 451 (0: no limit).",
    "tls_cert": "Certificate file (PEM) that enables STARTTLS.",
    "tls_key": "Private key file (PEM) of tls_cert (empty: the key is in tls_cert).",
    "require_starttls": "Refuse mail from clients that have not used STARTTLS.",
    "reject_unroutable": "Refuse recipients no route matches at RCPT time instead of queueing.",
    "auth_policy": "Sender authentication (SPF, DKIM, DMARC, ARC; needs mailrouter[auth]):"
    " 'annotate' (verify, attach message.auth), 'enforce' (also refuse DMARC p=reject"
    " failures with 550 5.7.1) or 'off'.",
    "trusted_authserv_ids": "Authserv-ids of the MTAs in front whose Authentication-Results"
    " headers are used instead of verifying again.",
    "dns_nameservers": "Nameservers for sender authentication, as IP or IP:PORT"
    " (empty: the system's).",
    "dns_timeout": "Seconds a DNS question of sender authentication may take (then temperror).",
    "reject_unauthenticated": "Refuse mail for @authenticated handlers from senders whose"
    " From: domain is not DMARC-aligned with 550 5.7.1, instead of queueing it.",
    "state_sender": "Key senders' states on the 'envelope' sender, the 'from' address, or"
    " only an 'authenticated' (DMARC-aligned) From: address.",
    "handlers": "Handler modules to load (import strings), besides config/handlers/*.py.",
    "lock_scope": "Lock per sender and state key ('key') or one lock for all ('global').",
    "executor_threads": "Threads that run plain (non-async) handlers.",
    "io_threads": "Threads for the server's own disk and store calls (journal, queues, spool,"
    " states), apart from the handlers' threads.",
    "gil_switch_interval": "Seconds a thread may hold the GIL while another waits for it"
    " (Python's 0.005; 0.001 for CPU-bound handlers, so the loop is not kept waiting).",
    "loop_block_warning": "Warn, naming the handler, when the event loop is blocked this many"
    " seconds (an async handler doing blocking work; 0: off).",
    "event_loop": "Event loop: 'auto' (uvloop when installed), 'asyncio' or 'uvloop'.",
    "workers": "Server processes sharing the port (more than 1 needs a shared state store).",
    "mode": "'direct': answer once the handlers ran; 'spool': once the message is on disk.",
    "spool": "Spool mode's incoming maildir.",
    "spool_concurrency": "Spool mode: messages routed from the spool at once.",
    "state_url": "Where senders' states are kept: shelve://PATH, sqlite:///PATH, redis://,"
    " postgresql://, memory:// or package.module:StoreClass.",
    "undeliverable": "Maildir queue of messages no handler took.",
    "journal_url": "What became of each message, and which recipients are done: sqlite://PATH,"
    " postgresql://..., or '' (off: no duplicate check).",
    "journal_retention_days": "Days journal entries are kept before the server purges them.",
    "spool_max_attempts": "Spool mode: failed routings before a message goes to undeliverable.",
    "relay_host": "Smarthost for outgoing mail (empty: straight to the recipients' MX hosts).",
    "relay_port": "Port of the smarthost.",
    "relay_starttls": "STARTTLS to the smarthost: 'auto' (when offered), 'require' or 'off'.",
    "relay_tls": "Implicit TLS to the smarthost (port 465).",
    "relay_username": "AUTH user name for the smarthost.",
    "relay_password": "AUTH password for the smarthost (MAILROUTER_RELAY_PASSWORD keeps it"
    " out of files).",
    "relay_timeout": "Seconds each SMTP step to the relay may take.",
    "outbox": "Maildir of outgoing mail waiting to be retried.",
    "failed": "Maildir of outgoing mail refused for good or given up on.",
    "templates": "Folder of the templates that mailrouter.outbound.templates renders.",
    "dkim_domain": "DKIM-sign outgoing mail as this domain (d=; with dkim_selector and"
    " dkim_key_file).",
    "dkim_selector": "Selector of the DKIM key (s=): its public key is published at"
    " SELECTOR._domainkey.DOMAIN.",
    "dkim_key_file": "Private key file (PEM, RSA or Ed25519) that signs outgoing mail"
    " (mailrouter dkim-keygen writes one).",
    "pid_file": "Pid file of the running server.",
    "control_socket": "Unix socket the command line asks the running server on (mode 0600;"
    " '': off, and commands work on the files and by signals).",
    "log_file": "Log file of the server when it runs in the background.",
    "log_level": "Least important log messages written.",
    "log_format": "Log lines as 'text', or 'json': one object per line, one line per message.",
    "metrics_port": "Serve Prometheus metrics on this port (0: off; needs mailrouter[metrics]).",
    "metrics_host": "Address the metrics endpoint listens on.",
    "console_port": "Serve the web console on this port (0: off; needs mailrouter[console]).",
    "console_host": "Address the web console listens on (other than loopback: needs"
    " console_token).",
    "console_token": "The console's login token (empty: one is made at first start, printed"
    " once, and only its hash kept in console_token_file).",
    "console_token_file": "Where the hash of the generated console token is kept (mode 0600).",
    "console_messages": "SQLite file of the received messages' bytes, kept while the console is"
    " on (for its message page), purged with the journal ('': none kept).",
    "console_tls_cert": "Certificate file (PEM) that serves the web console over https.",
    "console_tls_key": "Private key file (PEM) of console_tls_cert (empty: the key is in it).",
    "user": "When started as root: the user to switch to after binding.",
    "group": "When started as root: the group to switch to after binding.",
    "allow_root": "Allow the server to keep running as root (not recommended).",
    "drain_timeout": "Seconds to let deliveries in progress finish when stopping.",
}

# The settings a user sets by option or in mailrouter.toml (the rest are derived).
CLI_SETTINGS = [name for name in FIELDS if name not in ("config_dir", "defaults")]


def setting_help(name: str) -> str:
    """The one line of help for a setting."""
    return SETTING_HELP.get(name) or f"The {name} setting."


def describe_os_error(exc: OSError) -> str:
    """An OSError as one short line, naming the file when there is one."""
    if exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror or str(exc) or type(exc).__name__


def config_option(func: F) -> F:
    """The ``--config`` option: the project's config folder."""
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


def project_settings(config: str, overrides: dict[str, Any] | None = None) -> Settings:
    """Load the settings of the project whose config folder is ``config`` (made absolute)."""
    folder = Path(config).absolute()
    if not folder.is_dir():
        raise MailRouterError(
            f"no config folder {config!r}: pass --config, or create a project with mailrouter gen"
        )
    _warn_unknown_environment()
    return load_settings(folder, overrides)


def _warn_unknown_environment() -> None:
    """A ``MAILROUTER_*`` variable that is neither a setting nor an option's is a typo, most
    likely: say so on stderr, with the closest name, instead of ignoring it."""
    context = click.get_current_context(silent=True)
    root = context.find_root().command if context is not None else None
    known = {f"{ENV_PREFIX}{name.upper()}" for name in FIELDS} | _option_variables(root)
    for name in sorted(os.environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            click.echo(f"Warning: unknown environment variable {name}{hint}", err=True)


def _option_variables(command: click.Command | None) -> set[str]:
    """The environment variables the options of ``command`` and its subcommands read."""
    if command is None:
        return set()
    found = {
        name
        for param in command.params
        for name in ([param.envvar] if isinstance(param.envvar, str) else param.envvar or [])
    }
    for sub in getattr(command, "commands", {}).values():
        found |= _option_variables(sub)
    return found


def ask_server(settings: Settings, command: str, timeout: float | None = 30.0, **args: Any) -> Any:
    """``command``'s result from the running server, over its control socket.

    Raises ``NotListening`` when no server holds the lock or its control socket does not
    answer (it is off, or the server is still starting): the caller works on the files.
    """
    from mailrouter.runtime import control, pidlock

    if not settings.control_socket or pidlock.lock_holder(settings) is None:
        raise control.NotListening(pidlock.not_running(settings))
    path = settings.path(settings.control_socket)
    return control.request(path, command, timeout, **args)


@contextlib.contextmanager
def open_router(settings: Settings, *, readonly: bool) -> Iterator[Router]:
    """A router built from the settings, closed (store and executor) afterwards."""
    from mailrouter.runtime import pidlock
    from mailrouter.runtime.server import build_router

    try:
        router = build_router(settings, readonly=readonly)
    except StoreError as exc:
        if pidlock.lock_holder(settings) is None:
            raise
        raise MailRouterError(
            f"{exc}: the running server does not answer on its control socket"
            " (setting 'control_socket'); stop the server first (mailrouter stop)"
        ) from None
    try:
        yield router
    finally:
        router.close()


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Rows as left-aligned columns under ``headers``, two spaces apart."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


class OneLineFormatter(logging.Formatter):
    """Escapes CR and LF in log messages: client data can never forge or split a log line.

    Tracebacks, appended after the message, keep their lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.replace("\r", "\\r").replace("\n", "\\n")
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields, any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# What every LogRecord has: anything else on a record came in ``extra``.
_RECORD_ATTRIBUTES = {*logging.makeLogRecord({}).__dict__, "message", "asctime", "taskName"}


def configure_logging(settings: Settings, *, to_file: bool) -> None:
    """Log to stderr (foreground) or the log file (background), at the configured level."""
    handler: logging.Handler
    if to_file:
        path = settings.path(settings.log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    json_lines = settings.log_format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else OneLineFormatter(LOG_FORMAT))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    # aiosmtpd logs every session and command at INFO: keep that for DEBUG.
    quiet = settings.log_level != "DEBUG"
    logging.getLogger("mail.log").setLevel(logging.WARNING if quiet else logging.NOTSET)
