"""``mailrouter queue``: inspect, remove and replay the messages in the undeliverable queue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from email.utils import format_datetime

import click

from .. import daemon
from ..errors import MailRouterError, StoreError
from ..message import MailRequest
from ..queue import Queue
from ..routing import Router
from .common import config_option, configure_logging, open_router, project_settings, table

# Replays of more messages than this show a progress bar.
PROGRESS_THRESHOLD = 20


@click.group()
def queue() -> None:
    """Inspect and replay the undeliverable queue."""


def _open_queue(config: str) -> Queue:
    """The undeliverable queue of the project."""
    settings = project_settings(config)
    return Queue(settings.path(settings.undeliverable))


def _not_queued(key: str) -> MailRouterError:
    return MailRouterError(f"no message {key!r} in the undeliverable queue")


@queue.command("list")
@config_option
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
    click.echo(table(header, rows) if rows else "the undeliverable queue is empty")


@queue.command("show")
@config_option
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
@config_option
def queue_count(config: str) -> None:
    """Print how many messages are queued."""
    click.echo(len(_open_queue(config)))


@queue.command("remove")
@config_option
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
@config_option
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
@config_option
def queue_replay(config: str) -> None:
    """Deliver each queued message again; remove those handled now, keep the rest."""
    settings = project_settings(config)
    store = Queue(settings.path(settings.undeliverable))
    keys = store.keys()
    if not keys:
        click.echo("the undeliverable queue is empty")
        return
    configure_logging(settings, to_file=True)
    with contextlib.ExitStack() as stack:
        try:
            router = stack.enter_context(open_router(settings, readonly=False))
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
