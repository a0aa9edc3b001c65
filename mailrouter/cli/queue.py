"""``mailrouter queue``: the undeliverable queue and the relay's outbox and failed maildir.

``list``, ``show``, ``count``, ``remove`` and ``clear`` work on any of the three (``--box``);
``replay`` routes the undeliverable queue into the handlers again; ``retry`` makes one relay pass
over the whole outbox now. Both are done by the running server when one runs (its store, its
relay and options), else by this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Literal, get_args

import click

from mailrouter.cli.common import (
    F,
    ask_server,
    config_option,
    configure_logging,
    open_router,
    project_settings,
    table,
)
from mailrouter.config import ENV_PREFIX
from mailrouter.errors import MailRouterError
from mailrouter.outbound.outbox import replies_of, schedule_of
from mailrouter.queue import Queue, QueueEntry
from mailrouter.runtime.commands import Operations
from mailrouter.runtime.control import NotListening

# Replays of more messages than this show a progress bar.
PROGRESS_THRESHOLD = 20

BoxName = Literal["undeliverable", "outbox", "failed"]
LABELS: dict[BoxName, str] = {
    "undeliverable": "the undeliverable queue",
    "outbox": "the outbox",
    "failed": "the failed maildir",
}
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
ENVELOPE_HEADER = ("KEY", "DATE", "SENDER", "RECIPIENTS")


@dataclass(frozen=True)
class Box:
    """One of the maildirs the commands work on, with the name messages give it."""

    name: BoxName
    queue: Queue

    @property
    def label(self) -> str:
        """How messages name this box: "the outbox", ..."""
        return LABELS[self.name]

    def missing(self, key: str) -> MailRouterError:
        """The error for a key that is not in this box."""
        return MailRouterError(f"no message {key!r} in {self.label}")


@click.group()
def queue() -> None:
    """Inspect the undeliverable queue, the outbox and the failed maildir; replay, retry."""


def box_option(func: F) -> F:
    """The ``--box`` option: which maildir a command works on."""
    return click.option(
        "--box",
        type=click.Choice(get_args(BoxName)),
        default="undeliverable",
        show_default=True,
        envvar=f"{ENV_PREFIX}QUEUE_BOX",
        show_envvar=True,
        help="The undeliverable queue, the relay's outbox, or its failed maildir.",
    )(func)


def _open_box(config: str, name: BoxName) -> Box:
    """The project's maildir called ``name``."""
    settings = project_settings(config)
    paths = {
        "undeliverable": settings.undeliverable,
        "outbox": settings.outbox,
        "failed": settings.failed,
    }
    return Box(name, Queue(settings.path(paths[name])))


def _local(when: datetime | float) -> str:
    """``when`` (a datetime or epoch seconds) in local time, as the tables show it."""
    moment = when if isinstance(when, datetime) else datetime.fromtimestamp(when)
    return moment.astimezone().strftime(TIME_FORMAT)


def _joined(texts: Iterable[str]) -> str:
    """Distinct ``texts`` in order, on one line."""
    return "; ".join(dict.fromkeys(texts))


def _row(box: Box, entry: QueueEntry) -> tuple[str, ...]:
    """The ``list`` line of an entry: envelope, then its reasons or (outbox) its schedule."""
    envelope = (
        entry.key,
        _local(entry.queued_at),
        entry.message.sender or "<>",
        ", ".join(entry.message.recipients),
    )
    if box.name != "outbox":
        return (*envelope, _joined(entry.reasons.values()))
    schedule = schedule_of(entry)
    last = _joined(reply for _, reply in replies_of(entry).values())
    return (*envelope, str(schedule.attempts), _local(schedule.next), last)


@queue.command("list")
@config_option
@box_option
def queue_list(config: str, box: BoxName) -> None:
    """List the messages in a box, oldest first."""
    where = _open_box(config, box)
    extra = ("ATTEMPTS", "NEXT", "LAST REPLY") if box == "outbox" else ("REASON",)
    header = (*ENVELOPE_HEADER, *extra)
    rows: list[tuple[str, ...]] = []
    for key in where.queue.keys():  # noqa: SIM118 (a Queue is not a mapping)
        try:
            entry = where.queue.read(key)
        except KeyError:
            continue  # removed meanwhile
        except MailRouterError as exc:
            rows.append((key, *["?"] * (len(header) - 2), f"unreadable: {exc}"))
            continue
        rows.append(_row(where, entry))
    click.echo(table(header, rows) if rows else f"{where.label} is empty")


@queue.command("show")
@config_option
@box_option
@click.argument("key")
def queue_show(config: str, box: BoxName, key: str) -> None:
    """Show one message: its envelope and reasons, then the message as received."""
    where = _open_box(config, box)
    try:
        entry = where.queue.read(key)
    except KeyError:
        raise where.missing(key) from None
    peer = entry.message.peer
    lines = [
        f"Key:       {entry.key}",
        f"Queued:    {format_datetime(entry.queued_at)}",
        f"Sender:    <{entry.message.sender}>",
        f"Peer:      {' '.join(map(str, peer)) if isinstance(peer, tuple) else peer or '-'}",
    ]
    if box == "outbox":
        lines += [
            f"Recipient: {rcpt}: attempts {schedule.attempts}, next {_local(schedule.next)}, "
            f"last reply {reply}"
            for rcpt, (schedule, reply) in replies_of(entry).items()
        ]
    else:
        lines += [f"Recipient: {rcpt}: {reason}" for rcpt, reason in entry.reasons.items()]
    click.echo("\n".join(lines) + "\n")
    click.echo(entry.data, nl=False)


@queue.command("count")
@config_option
@box_option
def queue_count(config: str, box: BoxName) -> None:
    """Print how many messages are in a box."""
    click.echo(len(_open_box(config, box).queue))


@queue.command("remove")
@config_option
@box_option
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
def queue_remove(config: str, box: BoxName, keys: tuple[str, ...]) -> None:
    """Delete messages from a box by key."""
    where = _open_box(config, box)
    for key in keys:
        try:
            where.queue.remove(key)
        except KeyError:
            raise where.missing(key) from None
        click.echo(f"removed {key}")


@queue.command("clear")
@config_option
@box_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def queue_clear(config: str, box: BoxName, yes: bool) -> None:
    """Delete every message in a box."""
    where = _open_box(config, box)
    count = len(where.queue)
    if not count:
        click.echo(f"{where.label} is empty")
        return
    if not yes:
        click.confirm(f"Delete all {count} messages in {where.label}?", abort=True)
    where.queue.clear()
    click.echo(f"removed {count} messages")


@queue.command("retry")
@config_option
def queue_retry(config: str) -> None:
    """Try every outbox entry once now, due or not: by the running server, through its relay
    (as it was started, options included), else through the configured one."""
    settings = project_settings(config)
    try:
        report = ask_server(settings, "queue.retry", timeout=None)
    except NotListening:
        if not len(Queue(settings.path(settings.outbox))):
            click.echo(f"{LABELS['outbox']} is empty")
            return
        from mailrouter.outbound.sender import from_settings  # aiosmtplib, dnspython: only here

        configure_logging(settings, to_file=True)
        relay = from_settings(settings)
        report = dataclasses.asdict(asyncio.run(relay.retry_once(ignore_schedule=True)))
    if report["busy"]:
        raise MailRouterError(
            "another process is in the middle of a retry pass over "
            f"{settings.path(settings.outbox)}: try again in a moment"
        )
    if not report["entries"]:
        click.echo(f"{LABELS['outbox']} is empty")
        return
    click.echo(
        f"outbox entries tried: {report['entries']}; recipients: {report['delivered']} delivered,"
        f" {report['deferred']} deferred again, {report['failed']} failed"
    )


@queue.command("replay")
@config_option
def queue_replay(config: str) -> None:
    """Deliver each queued message again; remove those handled now, keep the rest. Done by the
    running server when one runs, else here."""
    settings = project_settings(config)
    try:
        report = ask_server(settings, "queue.replay", timeout=None)
    except NotListening:
        keys = Queue(settings.path(settings.undeliverable)).keys()
        if not keys:
            click.echo(f"{LABELS['undeliverable']} is empty")
            return
        configure_logging(settings, to_file=True)
        with contextlib.ExitStack() as stack:
            router = stack.enter_context(open_router(settings, readonly=False))
            bar = stack.enter_context(
                click.progressbar(
                    length=len(keys), label="replaying", hidden=len(keys) <= PROGRESS_THRESHOLD
                )
            )
            report = asyncio.run(Operations(settings, router).replay(lambda: bar.update(1)))
    if not report["replayed"]:
        click.echo(f"{LABELS['undeliverable']} is empty")
        return
    for key, reason in report["kept"]:
        click.echo(f"kept {key}: {reason}")
    click.echo(
        f"replayed {report['replayed']} messages: {report['delivered']} delivered,"
        f" {len(report['kept'])} still undeliverable"
    )
