"""What an operator can ask of mailrouter: senders' states, the routes and the route tester,
the queues (list, show, remove, replay, retry), and (of a running server) status, reload, stop,
the journal's messages, their activity, and delivering a message as if it came over SMTP.

``Operations`` works on a router (its state store and handler modules), the undeliverable
queue and a relay. The running server serves them on its control socket (``server_commands``),
with its own router and relay, so they see the settings it was started with, command-line
options included; with no server running, the command line builds its own and calls the same
methods. The web console calls the same table, in the server or over the socket. Results are
plain JSON values: the control socket carries them as they are.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sized
from dataclasses import asdict
from typing import Any, Protocol

from aiosmtpd.smtp import Envelope, Session

from mailrouter import __version__
from mailrouter.config import Settings
from mailrouter.errors import MailRouterError
from mailrouter.inbound.handler import Receiver
from mailrouter.journal import Journal
from mailrouter.message import MailRequest, delivery_id
from mailrouter.outbound.sender import Relay
from mailrouter.queue import Queue
from mailrouter.routing.router import Router
from mailrouter.runtime import boxes
from mailrouter.runtime import routes as route_views
from mailrouter.runtime.control import Command
from mailrouter.runtime.copies import MessageCopies
from mailrouter.runtime.messages import Messages
from mailrouter.state import ERROR, START
from mailrouter.state.entries import StateEntry, change_state, list_states

CONSOLE_PEER = "console"  # the peer and HELO name of a message the console delivers


class Running(Protocol):
    """What ``status`` reads of the running server (``runtime.server.Server``)."""

    settings: Settings
    router: Router
    handler: Receiver
    copies: MessageCopies | None

    @property
    def address(self) -> str: ...

    @property
    def sessions(self) -> Sized: ...

    @property
    def delivering(self) -> int: ...

    @property
    def journal(self) -> Journal | None: ...


def entry_json(entry: StateEntry) -> dict[str, Any]:
    """A state entry as the control socket and ``--json`` give it."""
    return asdict(entry)


class Operations:
    """The operator's commands over one router, its undeliverable queue and a relay."""

    def __init__(self, settings: Settings, router: Router, relay: Relay | None = None) -> None:
        self.settings = settings
        self.router = router
        self._relay = relay
        self._replaying = asyncio.Lock()

    # -- states ----------------------------------------------------------------------------

    async def states(
        self, state: str | None = None, sender: str | None = None, key: str | None = None
    ) -> list[dict[str, Any]]:
        """The stored states (START is never stored), filtered by state, sender and key."""
        found = await asyncio.to_thread(
            list_states, self.router.store, state=state, sender=sender, key=key
        )
        return [entry_json(entry) for entry in found]

    async def set_state(self, sender: str, state: str, key: str | None = None) -> dict[str, Any]:
        """Put ``sender`` into ``state`` under ``key`` (which may be left out when only one
        fits); the state must be START, ERROR or a state function of the key's module."""
        key = key or await self._only_key(sender)
        self._check_state(key, state)
        previous = await asyncio.to_thread(self._change, key, sender, state)
        return {"key": key, "sender": sender, "state": state, "previous": previous}

    async def reset(self, sender: str, key: str | None = None) -> list[dict[str, Any]]:
        """Put ``sender`` back into START under ``key``, or under every key it has a state in."""
        keys = [key] if key else [entry["key"] for entry in await self.states(sender=sender)]
        changed = []
        for each in keys:
            previous = await asyncio.to_thread(self._change, each, sender, START)
            changed.append({"key": each, "sender": sender, "previous": previous})
        return changed

    def _change(self, key: str, sender: str, state: str) -> str:
        """Change one state under the store's transition lock; the state it replaced."""
        store = self.router.store
        with store.lock(key, sender):
            previous = store.get(key, sender)
            change_state(store, key, sender, state)
        return previous

    async def _only_key(self, sender: str) -> str:
        stored: list[str] = [entry["key"] for entry in await self.states(sender=sender)]
        candidates = stored or sorted(route_views.state_functions(self.router))
        if len(candidates) == 1:
            return candidates[0]
        named = ", ".join(candidates) or "none: no stateful handlers are loaded"
        raise MailRouterError(f"name the state key with --key (one of: {named})")

    def _check_state(self, key: str, state: str) -> None:
        if state in (START, ERROR):
            return
        machines = route_views.state_functions(self.router)
        if key in machines:
            allowed = machines[key]
        else:  # a key a state key generator made: a state of one of those modules
            keyed = [machines.get(module, set()) for module in self.router.state_key_modules]
            if not keyed:
                known = ", ".join(sorted(machines)) or "none"
                raise MailRouterError(
                    f"no state machine keeps states under {key!r} (known: {known})"
                )
            allowed = set().union(*keyed)
        if state not in allowed:
            known = ", ".join(sorted({START, ERROR} | allowed))
            raise MailRouterError(f"{state!r} is not a state of {key!r} (known: {known})")

    # -- queues ----------------------------------------------------------------------------

    async def replay(
        self, step: Callable[[], None] | None = None, key: str | None = None
    ) -> dict[str, Any]:
        """Deliver each undeliverable message (or only the one of ``key``) again: those handled
        now leave the queue, those partly handled are queued again for the rest; one replay at
        a time."""
        if self._replaying.locked():
            raise MailRouterError("a replay is already running")
        async with self._replaying:
            queue = Queue(self.settings.path(self.settings.undeliverable))
            keys = await asyncio.to_thread(queue.keys)
            if key is not None:
                if key not in keys:
                    raise MailRouterError(f"no message {key!r} in {boxes.LABELS['undeliverable']}")
                keys = [key]
            kept: list[tuple[str, str]] = []
            for key in keys:
                if step is not None:
                    step()
                outcome = await self._replay_one(queue, key)
                if outcome is not None:
                    kept.append(outcome)
        delivered = len(keys) - len(kept)
        return {"replayed": len(keys), "delivered": delivered, "kept": kept}

    async def _replay_one(self, queue: Queue, key: str) -> tuple[str, str] | None:
        """Redeliver one entry; the key and reason of what is still undeliverable, if any."""
        try:
            entry = await asyncio.to_thread(queue.read, key)
        except KeyError:
            return None
        except MailRouterError as exc:
            return key, str(exc)
        result = await self.router.deliver(entry.message, queue_unhandled=False)
        failing = {
            reply.recipient: result.reasons.get(reply.recipient, str(reply))
            for reply in result.replies
            if reply.code >= 300
        }
        reason = "; ".join(dict.fromkeys(failing.values()))
        if failing and len(failing) == len(set(entry.message.recipients)):
            return key, reason
        kept = None
        if failing:  # queued again for the recipients still failing
            rest = MailRequest(entry.message.peer, entry.message.sender, list(failing), entry.data)
            kept = await asyncio.to_thread(queue.push, rest, failing), reason
        with contextlib.suppress(KeyError):
            await asyncio.to_thread(queue.remove, key)
        return kept

    async def retry(self, key: str | None = None) -> dict[str, Any]:
        """One pass of the server's relay over the whole outbox (or the entry of ``key``) now,
        due or not."""
        if self._relay is None:
            raise MailRouterError("no relay to retry the outbox with")
        keys = None if key is None else {key}
        return asdict(await self._relay.retry_once(ignore_schedule=True, keys=keys))

    async def queue_list(self, box: str | None) -> list[dict[str, Any]]:
        """The entries of a box (undeliverable, outbox, failed), oldest first."""
        return await asyncio.to_thread(boxes.list_box, self.settings, boxes.box_name(box))

    async def queue_show(self, box: str | None, key: str) -> dict[str, Any]:
        """One entry of a box, its bytes included."""
        return await asyncio.to_thread(boxes.show_entry, self.settings, boxes.box_name(box), key)

    async def queue_remove(self, box: str | None, key: str) -> dict[str, Any]:
        """Delete the one entry ``key`` of a box."""
        return await asyncio.to_thread(boxes.remove_entry, self.settings, boxes.box_name(box), key)

    # -- routes ----------------------------------------------------------------------------

    async def routes(self) -> dict[str, Any]:
        """The route table in match order, and each state machine's states."""
        table = await asyncio.to_thread(route_views.route_table, self.router)
        return {"routes": table, "machines": route_views.machines(self.router)}

    async def route_trial(self, address: str, sender: str = "") -> dict[str, Any]:
        """What would run now for mail from ``sender`` to ``address`` (see ``routes``)."""
        return await asyncio.to_thread(route_views.route_trial, self.router, address, sender)


def server_commands(
    server: Running,
    operations: Operations,
    *,
    stop: Callable[[], None],
    reload: Callable[[], Awaitable[int]],
    supervisor: int | None = None,
) -> dict[str, Command]:
    """The control socket's commands for a running ``server`` (``supervisor``: the pid of the
    workers' supervisor, when this process is one of its workers)."""
    started = time.time()
    settings = server.settings
    messages = Messages(
        server.journal,
        server.copies,
        server.router.undeliverable or Queue(settings.path(settings.undeliverable)),
    )

    async def status(args: dict[str, Any]) -> dict[str, Any]:
        journal = server.journal
        counts = await asyncio.to_thread(journal.counts) if journal is not None else None
        return {
            "address": server.address,
            "pid": supervisor or os.getpid(),
            "version": __version__,
            "started_at": started,
            "uptime": round(time.time() - started, 3),
            "workers": settings.workers,
            "mode": settings.mode,
            "protocol": settings.protocol,
            "routes": len(server.router.routes()),
            "sessions": len(server.sessions),
            "delivering": server.delivering,
            "journal": counts,
            "queues": await asyncio.to_thread(queue_counts, settings),
        }

    async def stopping(args: dict[str, Any]) -> dict[str, Any]:
        stop()
        return {"pid": supervisor or os.getpid()}

    async def reloading(args: dict[str, Any]) -> dict[str, Any]:
        return {"routes": await reload()}

    async def delivering(args: dict[str, Any]) -> dict[str, Any]:
        try:
            data = base64.b64decode(args["data"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise MailRouterError("deliver: 'data' must be the message in base64") from None
        sender = args.get("sender", "")
        received = await receive(server.handler, data, sender, args["recipients"])
        if server.copies is not None:  # its page, shown next, has its bytes
            await server.copies.written()
        return received

    return {
        "status": status,
        "stop": stopping,
        "reload": reloading,
        "state.list": lambda args: operations.states(args.get("state"), args.get("sender")),
        "state.show": lambda args: operations.states(sender=args["sender"], key=args.get("key")),
        "state.set": lambda args: operations.set_state(
            args["sender"], args["state"], args.get("key")
        ),
        "state.reset": lambda args: operations.reset(args["sender"], args.get("key")),
        "queue.replay": lambda args: operations.replay(key=args.get("key")),
        "queue.retry": lambda args: operations.retry(args.get("key")),
        "queue.list": lambda args: operations.queue_list(args.get("box")),
        "queue.show": lambda args: operations.queue_show(args.get("box"), args["key"]),
        "queue.remove": lambda args: operations.queue_remove(args.get("box"), args["key"]),
        "routes": lambda args: operations.routes(),
        "routes.test": lambda args: operations.route_trial(
            args["address"], args.get("sender") or ""
        ),
        "messages.list": messages.list,
        "messages.show": messages.show,
        "messages.raw": messages.raw,
        "activity": messages.activity,
        "deliver": delivering,
    }


async def receive(
    handler: Receiver, data: bytes, sender: str, recipients: list[str]
) -> dict[str, Any]:
    """Deliver ``data`` from ``sender`` to ``recipients`` through the server's receiver, as a
    client over SMTP would: the MAIL and RCPT hooks, the size limit, then DATA (journal, router,
    reply, observers). The reply, the recipients refused at RCPT, and the delivery id."""
    loop = asyncio.get_running_loop()
    session, envelope = Session(loop), Envelope()
    session.peer = session.host_name = CONSOLE_PEER
    smtp: Any = None  # the hooks never use the SMTP session object
    refused: dict[str, str] = {}
    reply = await handler.handle_MAIL(smtp, session, envelope, sender, [])
    if reply.startswith("250"):
        for rcpt in recipients:
            answer = await handler.handle_RCPT(smtp, session, envelope, rcpt, [])
            if not answer.startswith("250"):
                refused[rcpt] = answer
        limit = handler.settings.max_message_size
        if not envelope.rcpt_tos:
            reply = "554 5.5.1 Error: no valid recipients"
        elif limit and len(data) > limit:
            reply = "552 5.3.4 Error: Too much mail data"
        else:
            envelope.original_content = data
            reply = await handler.handle_DATA(smtp, session, envelope)
    return {"reply": reply, "refused": refused, "id": delivery_id(sender, data)}


def queue_counts(settings: Settings) -> dict[str, int | None]:
    """How many messages each maildir holds (the spool: None unless in spool mode)."""
    counts: dict[str, int | None] = {
        name: len(Queue(settings.path(getattr(settings, name))))
        for name in ("undeliverable", "outbox", "failed")
    }
    counts["spool"] = (
        len(Queue(settings.path(settings.spool))) if settings.mode == "spool" else None
    )
    return counts
