"""The routing core: patterns, order, the per-sender state machine, errors, queueing, locks."""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import mail

from mailrouter import ERROR, START, Router, SMTPError, route, stateless
from mailrouter.errors import LoadError, RouteError
from mailrouter.queue import Queue
from mailrouter.state import (
    ErrorReason,
    MemoryStorage,
    ShelveStorage,
    StateEntry,
    list_states,
    read_reason,
    record_error,
)

MakeModule = Callable[..., str]

LIST_APP = """
from mailrouter import route, route_like, stateless
calls = []

@route("(list)-(action)@(host)", list="[a-z]+", action="subscribe|confirm")
def START(message, list=None, action=None, host=None):
    calls.append(("START", list, action, host, message.recipient))
    return CONFIRMING

@route_like(START)
def CONFIRMING(message, list=None, action=None, host=None):
    calls.append(("CONFIRMING", list, action, host, message.recipient))
    return POSTING

@route("(list)@(host)", list="[a-z]+")
def POSTING(message, list=None, host=None):
    calls.append(("POSTING", list, host))
"""


def calls(module_name: str) -> list[tuple[object, ...]]:
    return sys.modules[module_name].calls  # type: ignore[no-any-return]


@pytest.fixture
def router() -> Router:
    return Router(defaults={"host": r"example\.com"})


# -- 1. patterns and captures -------------------------------------------------------------


async def test_captures_become_keyword_arguments(router: Router, make_module: MakeModule) -> None:
    app = make_module(LIST_APP)
    router.load([app])
    result = await router.deliver(mail(recipients=["news-subscribe@example.com"]))
    assert [r.code for r in result.replies] == [250]
    assert calls(app) == [
        ("START", "news", "subscribe", "example.com", "news-subscribe@example.com")
    ]


async def test_patterns_are_anchored_and_case_insensitive(
    router: Router, make_module: MakeModule
) -> None:
    app = make_module(LIST_APP)
    router.load([app])
    assert router.match("News-Subscribe@EXAMPLE.com")
    assert not router.match("xnews-subscribe@example.com.evil")
    assert not router.match("news-subscribe@example.com.evil")
    assert not router.match("news-unsubscribe@example.com")


async def test_defaults_apply_whatever_the_import_order(make_module: MakeModule) -> None:
    app = make_module(LIST_APP)
    importlib.import_module(app)  # imported long before any router exists
    one = Router(defaults={"host": r"one\.org"})
    two = Router(defaults={"host": r"two\.org"})
    one.load([app])
    two.load([app])
    assert one.match("a-confirm@one.org") and not one.match("a-confirm@two.org")
    assert two.match("a-confirm@two.org") and not two.match("a-confirm@one.org")


def test_route_captures_override_router_defaults(make_module: MakeModule) -> None:
    app = make_module(
        """
        from mailrouter import route
        @route("info@(host)", host="local\\\\.test")
        def START(message, host=None): pass
        """
    )
    router = Router(defaults={"host": r"example\.com"})
    router.load([app])
    assert router.match("info@local.test") and not router.match("info@example.com")


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ('@route("(nope)@x.org")\ndef START(message, nope=None): pass', "(nope)"),
        ('@route("(a@x.org")\ndef START(message): pass', "bad pattern"),
        ('@route("a@x.org", lst="[a-z]+")\ndef START(message): pass', "lst"),
        ('@route("(list)@x.org", list="[a-z]+")\ndef START(message): pass', "cannot be called"),
    ],
)
def test_bad_routes_fail_when_the_module_loads(
    make_module: MakeModule, source: str, fragment: str
) -> None:
    app = make_module("from mailrouter import route\n" + source)
    router = Router()
    with pytest.raises(RouteError) as info:
        router.load([app])
    assert fragment in str(info.value)
    assert f"{app}.START" in str(info.value)
    assert router.routes() == ()


def test_route_like_on_an_unrouted_function_fails_at_load(make_module: MakeModule) -> None:
    app = make_module(
        """
        from mailrouter import route_like
        def plain(message): pass
        @route_like(plain)
        def START(message): pass
        """
    )
    with pytest.raises(LoadError, match=r"route_like.*plain"):
        Router().load([app])


def test_stateless_above_route_fails_naming_the_handler(make_module: MakeModule) -> None:
    app = make_module(
        """
        from mailrouter import route, stateless
        @stateless
        @route(".+")
        def LOG(message): pass
        """
    )
    with pytest.raises(LoadError, match=r"LOG.*below @route"):
        Router().load([app])


def test_unknown_module_is_a_clear_load_error() -> None:
    with pytest.raises(LoadError, match="no_such_handlers_module"):
        Router().load(["no_such_handlers_module"])


def test_decorators_return_the_function_unchanged() -> None:
    def handler(message: object) -> None:
        return None

    assert stateless(handler) is handler
    assert route(".+")(handler) is handler


# -- 2. order --------------------------------------------------------------------------------


async def test_routes_run_in_load_then_definition_order(
    router: Router, make_module: MakeModule
) -> None:
    log: list[str] = []
    first = make_module(
        """
        from mailrouter import route, stateless
        LOG = None
        @route("(who)@(host)", who=".+")
        @stateless
        def ONE(message, who=None, host=None): LOG.append("first.ONE")
        @route(".+")
        @stateless
        def TWO(message): LOG.append("first.TWO")
        """
    )
    second = make_module(
        """
        from mailrouter import route, stateless
        LOG = None
        @route(".+")
        @stateless
        def THREE(message): LOG.append("second.THREE")
        """
    )
    router.load([second, first])
    sys.modules[first].LOG = sys.modules[second].LOG = log
    patterns = [r.pattern for r in router.routes()]
    assert patterns == [".+", "(who)@(host)"]  # second's ".+" is shared by first.TWO
    await router.deliver(mail(recipients=["x@example.com"]))
    assert log == ["second.THREE", "first.TWO", "first.ONE"]


# -- 3. which handlers run ---------------------------------------------------------------------

TWO_MODULES_A = """
from mailrouter import route, stateless
seen = []
@route("(name)@(host)", name="[a-z]+")
@stateless
def AUDIT(message, name=None, host=None): seen.append("AUDIT")
@route("(name)@(host)", name="[a-z]+")
def START(message, name=None, host=None): seen.append("A.START")
"""
TWO_MODULES_B = """
from mailrouter import route
seen = []
@route("(name)@(host)", name="[a-z]+")
def START(message, name=None, host=None): seen.append("B.START")
"""


async def test_all_stateless_and_only_the_first_stateful_handler_run(
    router: Router, make_module: MakeModule
) -> None:
    a, b = make_module(TWO_MODULES_A), make_module(TWO_MODULES_B)
    router.load([a, b])
    await router.deliver(mail(recipients=["bob@example.com"]))
    assert sys.modules[a].seen == ["AUDIT", "A.START"]
    assert sys.modules[b].seen == []
    # when A is in another state, B's START is the first stateful handler in state
    msg = mail(recipients=["bob@example.com"])
    router.set_state(a, msg, "ELSEWHERE")
    await router.deliver(msg)
    assert sys.modules[a].seen == ["AUDIT", "A.START", "AUDIT"]
    assert sys.modules[b].seen == ["B.START"]


async def test_every_recipient_is_routed(router: Router, make_module: MakeModule) -> None:
    app = make_module(LIST_APP)
    router.load([app])
    rcpts = ["a-subscribe@example.com", "b-confirm@example.com", "c@example.com"]
    result = await router.deliver(mail(recipients=rcpts))
    assert [r.recipient for r in result.replies] == rcpts
    assert [(c[0], c[1]) for c in calls(app)] == [
        ("START", "a"),
        ("CONFIRMING", "b"),
        ("POSTING", "c"),
    ]


async def test_duplicate_recipients_are_routed_once(
    router: Router, make_module: MakeModule
) -> None:
    app = make_module(LIST_APP)
    router.load([app])
    result = await router.deliver(
        mail(recipients=["news-subscribe@example.com", "NEWS-subscribe@Example.com"])
    )
    assert len(result.replies) == 2 and all(r.code == 250 for r in result.replies)
    assert len(calls(app)) == 1


def test_plan_shows_what_would_run_in_the_current_state(
    router: Router, make_module: MakeModule
) -> None:
    a, b = make_module(TWO_MODULES_A), make_module(TWO_MODULES_B)
    router.load([a, b])
    assert [m.handler.qualname for m in router.plan("bob@example.com")] == [
        f"{a}.AUDIT",
        f"{a}.START",
    ]
    router.set_state(a, mail(sender="joe@x.org"), "ELSEWHERE")
    assert [m.handler.qualname for m in router.plan("bob@example.com", "Joe <JOE@x.org>")] == [
        f"{a}.AUDIT",
        f"{b}.START",
    ]
    assert router.plan("nobody@elsewhere.org") == []


# -- 4. and 5. the state machine --------------------------------------------------------------


async def test_conversation_walks_the_state_machine(
    router: Router, make_module: MakeModule
) -> None:
    app = make_module(LIST_APP)
    router.load([app])
    joe = "Joe <JOE@x.org>"
    assert router.get_state(app, mail(sender=joe)) == START
    await router.deliver(mail(sender=joe, recipients=["news-subscribe@example.com"]))
    assert router.get_state(app, mail(sender="joe@x.org")) == "CONFIRMING"
    await router.deliver(mail(sender="<joe@X.ORG>", recipients=["news-confirm@example.com"]))
    assert router.get_state(app, mail(sender=joe)) == "POSTING"
    await router.deliver(mail(sender="joe@x.org", recipients=["news@example.com"]))
    assert [c[0] for c in calls(app)] == ["START", "CONFIRMING", "POSTING"]
    assert router.get_state(app, mail(sender=joe)) == "POSTING"  # None keeps the state
    assert router.get_state(app, mail(sender="other@x.org")) == START


def test_setting_start_removes_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with ShelveStorage(path) as store:
        router = Router(store=store)
        msg = mail()
        router.set_state("some.module", msg, "POSTING")
        assert store.get("some.module", "alice@example.org") == "POSTING"
        router.set_state("some.module", msg, START)
        assert store.get("some.module", "alice@example.org") == START
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM Dict").fetchone() == (0,)


def kicking_modules(router: Router, make_module: MakeModule) -> tuple[str, str]:
    """Two loaded modules: mail to kick@ moves the sender of the first into the second's
    WAITING state. Their names."""
    other = make_module(
        """
        from mailrouter import route
        @route("never@nowhere")
        def WAITING(message): pass
        """
    )
    app = make_module(
        f"""
        from mailrouter import route
        import {other}
        @route("kick@(host)")
        def START(message, host=None):
            return {other}.WAITING
        """
    )
    router.load([app, other])
    return app, other


async def test_a_handler_may_move_another_module(router: Router, make_module: MakeModule) -> None:
    app, other = kicking_modules(router, make_module)
    msg = mail(recipients=["kick@example.com"])
    await router.deliver(msg)
    assert router.get_state(other, msg) == "WAITING"
    assert router.get_state(app, msg) == START


async def test_stateless_return_value_is_ignored(router: Router, make_module: MakeModule) -> None:
    app = make_module(
        """
        from mailrouter import route, stateless
        @route(".+")
        @stateless
        def LOG(message):
            return ELSEWHERE
        @route("never@nowhere")
        def ELSEWHERE(message): pass
        """
    )
    router.load([app])
    msg = mail()
    result = await router.deliver(msg)
    assert result.replies[0].code == 250 and not result.queued
    assert router.get_state(app, msg) == START


async def test_state_key_generator_keys_state_per_list(
    router: Router, make_module: MakeModule
) -> None:
    app = make_module(
        """
        from mailrouter import route, state_key_generator
        @state_key_generator
        def per_list(module_name, message):
            return module_name + ":" + message.recipient.split("@")[0]
        @route("(list)@(host)", list="[a-z]+")
        def START(message, list=None, host=None):
            return MEMBER
        @route("(list)@(host)", list="[a-z]+")
        def MEMBER(message, list=None, host=None): pass
        """
    )
    router.load([app])
    await router.deliver(mail(recipients=["news@example.com"]))
    assert router.get_state(app, mail(recipients=["news@example.com"])) == "MEMBER"
    assert router.get_state(app, mail(recipients=["chat@example.com"])) == START
    assert router.store.get(f"{app}:news", "alice@example.org") == "MEMBER"


# -- 6. and 7. errors and the undeliverable queue ------------------------------------------------


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    return Queue(tmp_path / "undeliverable")


async def test_smtp_error_refuses_that_recipient_without_state_change(
    make_module: MakeModule, queue: Queue
) -> None:
    app = make_module(
        """
        from mailrouter import route, SMTPError
        @route("refuse@(host)")
        def START(message, host=None):
            raise SMTPError(550, "5.7.1 Go away")
        @route("ok@(host)")
        def OK(message, host=None): pass
        """
    )
    router = Router(defaults={"host": ".+"}, undeliverable=queue)
    router.load([app])
    router.set_state(app, mail(), START)
    msg = mail(recipients=["refuse@x.org", "other@x.org"])
    result = await router.deliver(msg)
    assert (result.replies[0].code, result.replies[0].text) == (550, "5.7.1 Go away")
    assert result.replies[1].code == 250
    assert str(result.first_refusal()) == "550 5.7.1 Go away"
    assert router.get_state(app, msg) == START
    assert list(result.reasons) == ["other@x.org"]  # only the unrouted one is queued


async def test_exception_moves_module_to_error_and_queues_once(
    make_module: MakeModule, queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_module(
        """
        from mailrouter import route, route_like
        handled = []
        @route("boom@(host)")
        def START(message, host=None):
            raise ValueError("kaboom")
        @route("fine@(host)")
        def FINE(message, host=None):
            handled.append(message.recipient)
        @route_like(START)
        def ERROR(message, host=None):
            handled.append("ERROR:" + message.recipient)
            return START
        """
    )
    router = Router(defaults={"host": ".+"}, undeliverable=queue)
    router.load([app])
    msg = mail(recipients=["boom@x.org", "nobody-routes-this", "Boom@X.org"])
    result = await router.deliver(msg)
    assert [r.code for r in result.replies] == [250, 250, 250]
    assert result.queued and len(queue) == 1
    assert set(result.reasons) == {"boom@x.org", "nobody-routes-this", "Boom@X.org"}
    assert "ValueError: kaboom" in result.reasons["boom@x.org"]
    assert result.reasons["nobody-routes-this"] == "no route"
    assert router.get_state(app, msg) == ERROR
    assert (
        sum(
            "kaboom" in r.getMessage() or "kaboom" in str(r.exc_info)
            for r in caplog.records
            if r.exc_info
        )
        == 1
    )  # the traceback is logged once
    entry = queue.read(result.queue_key or "")
    assert entry.message.data == msg.data
    assert entry.message.recipients == msg.recipients
    # in ERROR, the ERROR handler receives the sender's next message and returns a state
    await router.deliver(mail(recipients=["boom@x.org"]))
    assert sys.modules[app].handled == ["ERROR:boom@x.org"]
    assert router.get_state(app, msg) == START


async def test_other_recipients_still_run_after_a_failure(
    make_module: MakeModule, queue: Queue
) -> None:
    failing = make_module(
        """
        from mailrouter import route
        @route("boom@x.org")
        def START(message): raise RuntimeError("no")
        """
    )
    ok = make_module(
        """
        from mailrouter import route
        handled = []
        @route("fine@x.org")
        def START(message): handled.append(message.recipient)
        """
    )
    router = Router(undeliverable=queue)
    router.load([failing, ok])
    result = await router.deliver(mail(recipients=["boom@x.org", "fine@x.org"]))
    assert sys.modules[ok].handled == ["fine@x.org"]
    assert list(result.reasons) == ["boom@x.org"]
    assert queue.read(result.queue_key or "").message.recipients == ["boom@x.org"]


async def test_returning_a_non_function_is_a_handler_failure(
    make_module: MakeModule, queue: Queue
) -> None:
    app = make_module(
        """
        from mailrouter import route
        @route("odd@x.org")
        def START(message): return "POSTING"
        """
    )
    router = Router(undeliverable=queue)
    router.load([app])
    msg = mail(recipients=["odd@x.org"])
    result = await router.deliver(msg)
    assert "not a state function" in result.reasons["odd@x.org"]
    assert router.get_state(app, msg) == ERROR


async def test_without_a_queue_unrouted_is_refused_and_failures_are_temporary(
    make_module: MakeModule,
) -> None:
    app = make_module(
        """
        from mailrouter import route
        @route("boom@x.org")
        def START(message): raise RuntimeError("no")
        """
    )
    router = Router()
    router.load([app])
    result = await router.deliver(mail(recipients=["boom@x.org", "nobody@x.org"]))
    assert [(r.code, r.text[:5]) for r in result.replies] == [(451, "4.3.0"), (550, "5.1.1")]
    assert not result.queued


async def test_no_handler_in_state_is_queued_with_that_reason(
    router: Router, make_module: MakeModule, queue: Queue
) -> None:
    app = make_module(LIST_APP)
    router.undeliverable = queue
    router.load([app])
    result = await router.deliver(mail(recipients=["news@example.com"]))  # POSTING, not in state
    assert result.reasons == {"news@example.com": "no handler for the sender's state"}
    assert calls(app) == []


async def test_async_handlers_run_on_the_loop(
    router: Router, make_module: MakeModule, queue: Queue
) -> None:
    app = make_module(
        """
        import asyncio, threading
        from mailrouter import route
        seen = []
        @route("async@(host)")
        async def START(message, host=None):
            asyncio.get_running_loop()
            seen.append(threading.current_thread() is threading.main_thread())
            return NEXT
        @route("async@(host)")
        async def NEXT(message, host=None):
            raise ValueError("async failure")
        """
    )
    router.undeliverable = queue
    router.load([app])
    msg = mail(recipients=["async@example.com"])
    await router.deliver(msg)
    assert sys.modules[app].seen == [True]
    assert router.get_state(app, msg) == "NEXT"
    result = await router.deliver(msg)
    assert "async failure" in result.reasons["async@example.com"]
    assert router.get_state(app, msg) == ERROR


# -- 8. locking --------------------------------------------------------------------------------

BARRIER_APP = """
import threading
from mailrouter import route
barrier = threading.Barrier(2, timeout=10)
@route("meet@x.org")
def START(message):
    barrier.wait()
"""


async def _deliver_two(router: Router, senders: tuple[str, str]) -> list[int]:
    import asyncio

    results = await asyncio.gather(
        *(router.deliver(mail(sender=s, recipients=["meet@x.org"])) for s in senders)
    )
    return [r.replies[0].code for r in results]


async def test_key_scope_runs_different_senders_in_parallel(
    make_module: MakeModule, queue: Queue
) -> None:
    app = make_module(BARRIER_APP)
    router = Router(undeliverable=queue)
    router.load([app])
    await _deliver_two(router, ("a@x.org", "b@x.org"))
    assert len(queue) == 0  # both met at the barrier: they ran at the same time


async def test_global_scope_serialises_every_handler(make_module: MakeModule, queue: Queue) -> None:
    app = make_module(BARRIER_APP.replace("timeout=10", "timeout=0.5"))
    router = Router(undeliverable=queue, lock_scope="global")
    router.load([app])
    await _deliver_two(router, ("a@x.org", "b@x.org"))
    assert len(queue) == 2  # they never met: each timed out alone at the barrier


async def test_nolocking_handlers_run_in_parallel_for_one_sender(
    make_module: MakeModule, queue: Queue
) -> None:
    app = make_module(
        BARRIER_APP.replace(
            "from mailrouter import route", "from mailrouter import route, nolocking"
        )
        .replace("def START", "@nolocking\ndef START")
        .replace('@route("meet@x.org")\n@nolocking', '@route("meet@x.org")\n@nolocking')
    )
    router = Router(undeliverable=queue, lock_scope="global")
    router.load([app])
    await _deliver_two(router, ("a@x.org", "a@x.org"))
    assert len(queue) == 0


async def test_one_senders_transitions_never_interleave(make_module: MakeModule) -> None:
    import asyncio

    app = make_module(
        """
        import threading, time
        from mailrouter import route
        active, peak = [0], [0]
        guard = threading.Lock()
        @route("count@x.org")
        def START(message):
            with guard:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.002)
            with guard:
                active[0] -= 1
            return START
        """
    )
    router = Router()
    router.load([app])
    await asyncio.gather(
        *(router.deliver(mail(sender="same@x.org", recipients=["count@x.org"])) for _ in range(20))
    )
    assert sys.modules[app].peak == [1]


# -- 9. reload ---------------------------------------------------------------------------------


async def test_reload_rebuilds_routes_and_keeps_states(
    router: Router, make_module: MakeModule, tmp_path: Path
) -> None:
    app = make_module(LIST_APP)
    router.load([app])
    msg = mail(recipients=["news-subscribe@example.com"])
    await router.deliver(msg)
    path = tmp_path / "handler_modules" / f"{app}.py"
    path.write_text(path.read_text().replace("subscribe|confirm", "join|confirm"))
    router.reload()
    assert router.match("news-join@example.com")
    assert not router.match("news-subscribe@example.com")
    assert router.get_state(app, msg) == "CONFIRMING"


def test_failed_reload_keeps_the_old_routes(
    router: Router, make_module: MakeModule, tmp_path: Path
) -> None:
    app = make_module(LIST_APP)
    router.load([app])
    before = router.routes()
    (tmp_path / "handler_modules" / f"{app}.py").write_text("def broken(:\n")
    with pytest.raises(LoadError, match=app):
        router.reload()
    assert router.routes() == before
    assert router.match("news-subscribe@example.com")


def test_smtp_error_validates_its_code() -> None:
    assert str(SMTPError(550, "No such list")) == "550 5.0.0 No such list"
    assert SMTPError(451, "4.3.2 Later").message == "4.3.2 Later"
    with pytest.raises(ValueError):
        SMTPError(250, "fine")


def test_a_fresh_router_has_no_routes_and_a_memory_store() -> None:
    router = Router()
    assert router.routes() == () and router.match("a@b") == []
    assert isinstance(router.store, MemoryStorage)
    with pytest.raises(ValueError):
        Router(lock_scope="bogus")  # type: ignore[arg-type]
    assert threading.active_count() >= 1


async def test_one_sender_flooding_a_small_executor_never_deadlocks(
    make_module: MakeModule,
) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    app = make_module(
        """
        import asyncio
        from mailrouter import route
        count = [0]
        @route("flood@x.org")
        async def START(message):
            await asyncio.sleep(0)
            count[0] += 1
            return START
        """
    )
    with ThreadPoolExecutor(2) as executor:
        router = Router(executor=executor)
        router.load([app])
        flood = [
            router.deliver(mail(sender="same@x.org", recipients=["flood@x.org"])) for _ in range(30)
        ]
        # a deadlock would hang here; the guard turns it into a failure
        await asyncio.wait_for(asyncio.gather(*flood), timeout=60)
    assert sys.modules[app].count == [30]
    assert len(router._lanes) == 0  # no lane left behind


async def test_a_state_machine_is_resolved_under_one_lock(
    make_module: MakeModule, queue: Queue
) -> None:
    app = make_module(
        """
        from mailrouter import route, stateless
        ROUTER = None
        ran = []
        @route("x@x.org")
        def FIRST(message):
            ran.append("FIRST")
        @route("x@x.org")
        @stateless
        def FLIP(message):  # moves the module's state behind the scan, as a racing message would
            ROUTER.set_state(__name__, message, "FIRST")
        @route("x@x.org")
        def SECOND(message):
            ran.append("SECOND")
        """
    )
    router = Router(undeliverable=queue)
    router.load([app])
    sys.modules[app].ROUTER = router
    msg = mail(recipients=["x@x.org"])
    router.set_state(app, msg, "SECOND")
    # the module's handlers are one state machine: the state is read once, under the lock, and
    # its handler (SECOND) runs, whatever FLIP does to the state afterwards. (Lamson checked
    # FIRST, ran FLIP, then checked SECOND in the new state: nobody handled the message.)
    result = await router.deliver(msg)
    assert sys.modules[app].ran == ["SECOND"]
    assert not result.queued


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_cycling_state_machine_under_concurrent_mail_loses_nothing(
    make_module: MakeModule, queue: Queue, kind: str
) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    define = "async def" if kind == "async" else "def"
    app = make_module(
        f"""
        from mailrouter import route, route_like
        count = []
        @route("cycle@x.org")
        {define} START(message):
            count.append(1)
            return NEXT
        @route_like(START)
        {define} NEXT(message):
            count.append(1)
            return START
        """
    )
    with ThreadPoolExecutor(8) as executor:
        router = Router(undeliverable=queue, executor=executor)
        router.load([app])
        senders = [f"s{i % 2}@x.org" for i in range(200)]
        results = await asyncio.gather(
            *(router.deliver(mail(sender=s, recipients=["cycle@x.org"])) for s in senders)
        )
    assert [r for r in results if r.queued] == []
    assert len(sys.modules[app].count) == 200


CONTEXT_APP = """
import contextvars, threading
from mailrouter import route
current = contextvars.ContextVar("current", default=None)
seen = []

@route("(name)@x.org", name="plain|mixed")
def START(message, name=None):
    seen.append((name, current.get(), threading.current_thread() is threading.main_thread()))
    return AWAY

@route("mixed@x.org")
async def AWAY(message):
    return START
"""


async def test_plain_handlers_see_the_callers_context_variables(make_module: MakeModule) -> None:
    app = make_module(CONTEXT_APP)
    router = Router()
    router.load([app])
    module = sys.modules[app]
    token = module.current.set("the relay")  # as the server sets its relay around deliveries
    try:
        # plain@: only plain handlers, one executor call; mixed@: an async handler could run,
        # so the step runs on the loop and sends the plain handler to the executor
        for sender, rcpt in (("a@x.org", "plain@x.org"), ("b@x.org", "mixed@x.org")):
            result = await router.deliver(mail(sender=sender, recipients=[rcpt]))
            assert not result.queued
    finally:
        module.current.reset(token)
    assert module.seen == [("plain", "the relay", False), ("mixed", "the relay", False)]


class CountingExecutor(ThreadPoolExecutor):
    """A real thread pool that counts the calls handed to it."""

    def __init__(self) -> None:
        super().__init__(2)
        self.calls = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


async def test_a_plain_handlers_step_is_one_executor_call(make_module: MakeModule) -> None:
    app = make_module(CONTEXT_APP)
    with CountingExecutor() as executor:
        router = Router(executor=executor)
        router.load([app])
        msg = mail(recipients=["plain@x.org"])
        await router.deliver(msg)  # the state read, the handler and its transition
        assert executor.calls == 1
        assert router.get_state(app, msg) == "AWAY"


# -- ERROR reasons ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "error"),
    [
        (
            'def START(message): raise ValueError("boom\\nsecond line")',
            "ValueError: boom second line",
        ),
        ('async def START(message): raise KeyError("gone")', "KeyError: 'gone'"),
        (
            'def START(message): return "POSTING"',
            "TypeError: returned 'POSTING', not a state function or None",
        ),
    ],
)
async def test_a_failed_stateful_handler_leaves_error_and_why(
    make_module: MakeModule, source: str, error: str
) -> None:
    app = make_module(f"from mailrouter import route\n@route('app@x.org')\n{source}\n")
    router = Router()
    router.load([app])
    msg = mail(sender="Joe <JOE@example.org>", recipients=["app@x.org"])
    before = datetime.now(UTC).replace(microsecond=0)
    await router.deliver(msg)
    after = datetime.now(UTC)
    assert router.get_state(app, msg) == ERROR
    reason = read_reason(router.store, app, "joe@example.org")
    assert reason is not None
    assert (reason.handler, reason.error) == (f"{app}.START", error)
    assert before <= datetime.fromisoformat(reason.time.replace("Z", "+00:00")) <= after
    assert list_states(router.store) == [StateEntry(app, "joe@example.org", ERROR, reason)]


async def test_a_failed_stateless_handler_leaves_no_state_and_no_reason(
    make_module: MakeModule,
) -> None:
    app = make_module(
        """
        from mailrouter import route, stateless
        @route("audit@x.org")
        @stateless
        def AUDIT(message):
            raise RuntimeError("audit failed")
        """
    )
    router = Router()
    router.load([app])
    result = await router.deliver(mail(recipients=["audit@x.org"]))
    assert "RuntimeError: audit failed" in result.reasons["audit@x.org"]
    assert isinstance(router.store, MemoryStorage)
    assert router.store.items() == []


ERROR_APP = """
from mailrouter import route, route_like
@route("boom@x.org")
def START(message):
    raise ValueError("boom")
@route_like(START)
def ERROR(message):
    return POSTING
@route_like(START)
def POSTING(message):
    pass
"""


async def test_leaving_error_drops_the_reason(make_module: MakeModule) -> None:
    app = make_module(ERROR_APP)
    router = Router()
    router.load([app])
    msg = mail(recipients=["boom@x.org"])
    await router.deliver(msg)
    assert read_reason(router.store, app, msg.route_from) is not None
    await router.deliver(mail(recipients=["boom@x.org"]))  # the ERROR handler moves it on
    assert router.get_state(app, msg) == "POSTING"
    assert read_reason(router.store, app, msg.route_from) is None
    assert isinstance(router.store, MemoryStorage)
    assert router.store.items() == [(app, msg.route_from, "POSTING")]


async def test_set_state_out_of_error_drops_the_reason(make_module: MakeModule) -> None:
    app = make_module(ERROR_APP)
    router = Router()
    router.load([app])
    msg = mail(recipients=["boom@x.org"])
    await router.deliver(msg)
    router.set_state(app, msg, ERROR)  # into ERROR by hand: the reason stays
    assert read_reason(router.store, app, msg.route_from) is not None
    router.set_state(app, msg, START)
    assert list_states(router.store) == []


async def test_moving_another_module_out_of_error_drops_its_reason(
    router: Router, make_module: MakeModule
) -> None:
    _, other = kicking_modules(router, make_module)
    msg = mail(recipients=["kick@example.com"])
    reason = ErrorReason("x.START", "ValueError: old", "2026-12-03T15:00:00Z")
    record_error(router.store, other, msg.route_from, reason)
    await router.deliver(msg)
    assert router.get_state(other, msg) == "WAITING"
    assert read_reason(router.store, other, msg.route_from) is None


def test_route_and_load_errors_are_the_errors_python_code_expects() -> None:
    """Decorator misuse is a TypeError and a failed import an ImportError, as Salmon code
    (``except TypeError``) and Python's own conventions expect."""
    from mailrouter import stateless
    from mailrouter.errors import LoadError, RouteError

    with pytest.raises(TypeError):
        stateless(42)
    assert issubclass(RouteError, TypeError) and issubclass(LoadError, ImportError)
    with pytest.raises(ImportError):
        Router().load(["no_such_handler_module_anywhere"])
