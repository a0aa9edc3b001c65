"""``mailrouter messages``: the journal of received messages: ``list``, ``show`` and ``purge``.

They open the journal the settings name (``journal_url``), as the server does, and only ever hold
it for one short transaction at a time, so they work while servers are running.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import datetime

import click

from mailrouter.cli.common import config_option, project_settings, table
from mailrouter.config import ENV_PREFIX, Settings
from mailrouter.errors import MailRouterError
from mailrouter.journal import MESSAGE_STATUSES, Entry, Journal, MessageStatus, open_journal
from mailrouter.journal.records import printable

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
ID_SHOWN = 12  # hex digits of an id in the list; any unique prefix works for ``show``
WIDE = 60  # longer cells of the list are cut to this many characters
DAY = 86400.0


@click.group()
def messages() -> None:
    """What became of each received message (the journal): list, show, purge."""


@contextlib.contextmanager
def _journal(config: str) -> Iterator[tuple[Settings, Journal]]:
    """The project's settings and its journal, closed afterwards."""
    settings = project_settings(config)
    journal = open_journal(settings.journal_store_url())
    if journal is None:
        raise MailRouterError(
            'the journal is off (journal_url = ""): set journal_url in the settings,'
            " e.g. sqlite://run/journal.db, to record the messages received"
        )
    with journal:
        yield settings, journal


def _local(when: float | None) -> str:
    """Epoch seconds in local time, as the commands show them."""
    return "-" if when is None else datetime.fromtimestamp(when).strftime(TIME_FORMAT)


def _cut(text: str, width: int = WIDE) -> str:
    """``text`` fit for one cell of a line: printable and at most ``width`` characters."""
    text = printable(text)
    return text if len(text) <= width else text[: width - 3] + "..."


def _env(name: str) -> str:
    """The environment variable of a ``messages`` option."""
    return f"{ENV_PREFIX}MESSAGES_{name}"


@messages.command("list")
@config_option
@click.option(
    "--status",
    type=click.Choice(MESSAGE_STATUSES),
    envvar=_env("STATUS"),
    show_envvar=True,
    help="Only messages with this status.",
)
@click.option(
    "--sender",
    metavar="ADDRESS",
    envvar=_env("SENDER"),
    show_envvar=True,
    help="Only from this sender ('' or '<>': the null sender).",
)
@click.option(
    "--recipient",
    metavar="ADDRESS",
    envvar=_env("RECIPIENT"),
    show_envvar=True,
    help="Only to this recipient.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    envvar=_env("LIMIT"),
    show_envvar=True,
    help="Show at most this many (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list of the entries.")
def messages_list(
    config: str,
    status: MessageStatus | None,
    sender: str | None,
    recipient: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List the messages received, newest first."""
    with _journal(config) as (_, journal):
        found = journal.entries(
            status=status, sender=sender, recipient=recipient, limit=limit or None
        )
    if as_json:
        click.echo(json.dumps([entry.to_json() for entry in found], indent=2))
        return
    if not found:
        filtered = status is not None or sender is not None or recipient is not None
        click.echo("no messages match" if filtered else "the journal is empty")
        return
    rows = [
        (
            entry.id[:ID_SHOWN],
            _local(entry.received_at),
            entry.status,
            _cut(entry.sender or "<>"),
            _cut(", ".join(entry.recipients)),
            _cut(entry.subject),
        )
        for entry in found
    ]
    click.echo(table(("ID", "RECEIVED", "STATUS", "SENDER", "RECIPIENTS", "SUBJECT"), rows))


@messages.command("show")
@config_option
@click.argument("ident", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the entry as one JSON object.")
def messages_show(config: str, ident: str, as_json: bool) -> None:
    """Show one message (ID or a unique start of it): envelope, headers, each recipient."""
    with _journal(config) as (_, journal):
        entry = journal.get(ident)
    if entry is None:
        raise MailRouterError(f"no message {ident!r} in the journal")
    if as_json:
        click.echo(json.dumps(entry.to_json(), indent=2))
        return
    click.echo("\n".join(_details(entry)))


def _details(entry: Entry) -> Iterator[str]:
    """The lines of ``show``: the envelope and timings, the main headers, the recipients."""
    duration = "" if entry.duration is None else f" (after {entry.duration:.3f} s)"
    fields = [
        ("ID", entry.id),
        ("Status", entry.status),
        ("Message-ID", entry.message_id or "-"),
        ("Sender", entry.sender if entry.sender.startswith("<") else f"<{entry.sender}>"),
        ("Peer", f"{entry.peer or '-'} (HELO {entry.helo or '-'})"),
        ("Size", f"{entry.size} bytes, SHA-256 {entry.sha256}"),
        ("Received", _local(entry.received_at)),
        ("Attempts", f"{entry.attempts}, the last at {_local(entry.last_attempt_at)}"),
        ("Reply", f"{entry.reply}{duration}" if entry.reply else "- (none recorded yet)"),
        *entry.headers.items(),
    ]
    width = max(len(name) for name, _ in fields) + 2
    for name, value in fields:
        yield f"{name + ':':<{width}}{printable(value)}"
    yield "Recipients:"
    rows = []
    for record in entry.outcomes:
        outcome = record.outcome
        detail = ""
        if outcome is not None and outcome.handlers:
            detail = "by " + ", ".join(outcome.handlers)
        elif outcome is not None and outcome.queue_key:
            detail = f"as {outcome.queue_key}: {outcome.reason}"
        reply = outcome.reply if outcome else ""
        cells = (record.recipient, record.status, _local(record.at), detail, reply)
        rows.append(tuple(map(printable, cells)))
    lines = table(("RECIPIENT", "STATUS", "AT", "DETAIL", "REPLY"), rows).splitlines()
    yield from (f"  {line}" for line in lines)


@messages.command("purge")
@config_option
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(min=0),
    metavar="DAYS",
    envvar=_env("OLDER_THAN"),
    show_envvar=True,
    help="Remove entries idle for longer than this [default: journal_retention_days].",
)
def messages_purge(config: str, days: float | None) -> None:
    """Remove the entries of messages with no activity for a while."""
    with _journal(config) as (settings, journal):
        days = settings.journal_retention_days if days is None else days
        removed = journal.purge(time.time() - days * DAY)
    click.echo(f"removed {removed} journal entries idle for more than {days:g} days")
