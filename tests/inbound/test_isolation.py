"""One handler cannot take the server down, and a 250 always means handled or queued.

Handlers that call ``sys.exit()``, raise ``KeyboardInterrupt``, ``CancelledError`` or another
``BaseException``, return a lambda or fail while stateless: each is a handler failure (the
message is queued and acknowledged), and the server goes on serving, over real SMTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import smtplib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import mail, running, until, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from mailrouter import ERROR, START, Router
from mailrouter.queue import Queue, QueueEntry

HOSTILE = """
import asyncio, sys
from mailrouter import route, stateless


@route("exit@(host)")
@stateless
def EXIT(message, host=None):
    sys.exit(3)


@route("interrupt@(host)")
@stateless
async def INTERRUPT(message, host=None):
    raise KeyboardInterrupt


@route("cancel@(host)")
@stateless
async def CANCEL(message, host=None):
    raise asyncio.CancelledError


class Odd(BaseException):
    pass


@route("odd@(host)")
@stateless
def ODD(message, host=None):
    raise Odd("not an Exception")


@route("fine@(host)")
@stateless
def FINE(message, host=None):
    pass
"""


def entries(queue: Queue) -> list[QueueEntry]:
    return [queue.read(key) for key in queue.keys()]  # noqa: SIM118 - a Queue, not a dict


def send(port: int, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail("joe@x.org")
        client.rcpt(rcpt)
        return client.data(f"Subject: to {rcpt}\r\n\r\nHi.\r\n".encode())


@pytest.mark.parametrize("rcpt", ["exit", "interrupt", "cancel", "odd"])
async def test_a_handler_that_raises_a_base_exception_is_a_failure_not_a_stop(
    tmp_path: Path, make_module: Callable[..., str], rcpt: str
) -> None:
    app = make_module(HOSTILE)
    async with running(tmp_path, app) as server:
        code, text = await asyncio.to_thread(send, server.port, f"{rcpt}@example.com")
        assert code == 250 and text.startswith(b"2.0.0 Ok: queued as "), (code, text)
        assert (await asyncio.to_thread(send, server.port, "fine@example.com"))[0] == 250
    (entry,) = entries(Queue(tmp_path / "run" / "undeliverable"))
    assert entry.reasons[f"{rcpt}@example.com"].startswith(f"handler {app}.")


async def test_a_spooled_message_whose_handler_exits_is_queued_and_the_spool_goes_on(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    app = make_module(HOSTILE)
    queue = Queue(tmp_path / "run" / "undeliverable")
    async with running(tmp_path, app, mode="spool") as server:
        assert (await asyncio.to_thread(send, server.port, "exit@example.com"))[0] == 250
        assert (await asyncio.to_thread(send, server.port, "fine@example.com"))[0] == 250
        await until(lambda: len(queue) == 1, 20, message="the spool did not route the message")
    (entry,) = entries(queue)
    assert "SystemExit" in entry.reasons["exit@example.com"]


MACHINE = """
from mailrouter import route, stateless


@route("list@(host)", host="[a-z.]+")
@stateless
def LOG(message, host=None):
    if message["Subject"] == "fail":
        raise RuntimeError("the log is full")


@route("list@(host)", host="[a-z.]+")
def START(message, host=None):
    if message["Subject"] == "lambda":
        return lambda message: None
    return MEMBER


@route("list@(host)", host="[a-z.]+")
def MEMBER(message, host=None):
    return MEMBER
"""


async def test_a_failing_stateless_handler_leaves_the_senders_state_alone(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    app = make_module(MACHINE)
    router = Router(undeliverable=Queue(tmp_path / "queue"))
    router.load([app])
    failed = await router.deliver(mail(recipients=["list@x.org"], subject="fail"))
    assert failed.queued  # the failure is queued ...
    assert router.get_state(app, mail()) == "MEMBER"  # ... and START still ran and moved on


async def test_returning_a_lambda_is_a_handler_failure_and_never_a_state(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    app = make_module(MACHINE)
    router = Router(undeliverable=Queue(tmp_path / "queue"))
    router.load([app])
    result = await router.deliver(mail(recipients=["list@x.org"], subject="lambda"))
    assert "not a state function" in result.reasons["list@x.org"]
    assert router.get_state(app, mail()) == ERROR


# -- the invariant, over random handler outcomes ----------------------------------------------

OUTCOMES = ["ok", "next", "refuse", "defer", "raise", "exit", "lambda", "value"]

PROPERTY = """
import sys
from mailrouter import SMTPError, route, stateless

PLAN = {}  # recipient local part -> (stateless outcome, stateful outcome)


def act(outcome):
    if outcome == "refuse":
        raise SMTPError(550, "5.7.1 No")
    if outcome == "defer":
        raise SMTPError(451, "4.3.0 Later")
    if outcome == "raise":
        raise RuntimeError("bug")
    if outcome == "exit":
        sys.exit(1)
    if outcome == "lambda":
        return lambda m: None
    if outcome == "value":
        return 42
    if outcome == "next":
        return SECOND
    return None


@route("(user)@(host)", user="r[0-9]", host="[a-z.]+")
@stateless
def ALWAYS(message, user=None, host=None):
    act(PLAN[user][0])


@route("(user)@(host)", user="r[0-9]", host="[a-z.]+")
def START(message, user=None, host=None):
    return act(PLAN[user][1])


@route("(user)@(host)", user="r[0-9]", host="[a-z.]+")
def SECOND(message, user=None, host=None):
    return act(PLAN[user][1])
"""

plans = st.lists(
    st.tuples(st.sampled_from(OUTCOMES), st.sampled_from(OUTCOMES)), min_size=1, max_size=4
)


@settings(max_examples=150, deadline=None)
@given(first=plans, second=plans)
def test_a_250_means_a_handler_finished_or_the_message_was_queued(
    tmp_path_factory: pytest.TempPathFactory,
    property_app: str,
    first: list[tuple[str, str]],
    second: list[tuple[str, str]],
) -> None:
    queue = Queue(tmp_path_factory.mktemp("queue"))
    router = Router(undeliverable=queue)
    router.load([property_app])
    module = importlib.import_module(property_app)
    for plan in (first, second):  # twice: the first delivery leaves states the second meets
        module.PLAN.clear()
        module.PLAN.update({f"r{i}": outcome for i, outcome in enumerate(plan)})
        recipients = [f"r{i}@x.org" for i in range(len(plan))]
        result = asyncio.run(router.deliver(mail(recipients=recipients)))
        for reply in result.replies:
            if reply.code != 250:
                continue
            outcome = result.outcomes[reply.recipient]
            queued = result.queued and reply.recipient in result.reasons
            assert outcome.finished or queued, (plan, reply, outcome)
            assert outcome.ran or queued, (plan, reply)
    assert router.get_state(property_app, mail()) in (START, ERROR, "SECOND")


@pytest.fixture(scope="module")
def property_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import sys

    folder = tmp_path_factory.mktemp("property_app")
    (folder / "property_handlers.py").write_text(PROPERTY)
    sys.path.insert(0, str(folder))
    yield "property_handlers"
    sys.path.remove(str(folder))
    sys.modules.pop("property_handlers", None)


HANGING = """
import threading
from pathlib import Path
from mailrouter import route, stateless

@route("hang@(host)")
@stateless
def HANG(message, host=None):
    Path({started!r}).touch()
    threading.Event().wait()  # never returns
"""


@pytest.mark.parametrize("mode", ["direct", "spool"])
def test_a_stop_honours_drain_timeout_when_a_plain_handler_hangs(
    tmp_path: Path, make_project: Callable[..., Any], mode: str
) -> None:
    started = tmp_path / "started"
    config = f"mode = \"{mode}\"\ndrain_timeout = 1.0\n[defaults]\nhost = 'example\\.com'\n"
    project = make_project(config=config, hanging=HANGING.format(started=str(started)))
    port, pid = project.start()
    client = threading.Thread(target=_send_ignoring_errors, args=(port, "hang@example.com"))
    client.start()
    wait_for(started.exists, 20, message="the handler never started")
    stopped = project.run("stop", "--timeout", "20")
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: not _alive(pid), 20, message="the server outlived its drain_timeout")
    client.join(30)
    log = (project.folder / "logs" / "mailrouter.log").read_text()
    assert "still running" in log or "still being routed" in log
    if mode == "spool":  # never routed to the end: still in the spool for the next start
        assert list((project.folder / "run" / "spool").rglob("cur/*"))


def _send_ignoring_errors(port: int, rcpt: str) -> None:
    with contextlib.suppress(smtplib.SMTPException, OSError):
        send(port, rcpt)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# -- hung plain handlers cost their own threads, nothing more --------------------------------

HUNG = """
import threading
from mailrouter import route, stateless

started = []
release = threading.Event()


@route("hang@(host)")
@stateless
def HANG(message, host=None):
    started.append(message.sender)
    release.wait(60)
"""

WORKING = """
from mailrouter import route, stateless

handled = []


@route("plain@(host)")
@stateless
def PLAIN(message, host=None):
    handled.append(("plain", message.sender))


@route("async@(host)")
async def START(message, host=None):
    handled.append(("async", message.sender))
    return START
"""


def send_from(port: int, sender: str, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail(sender)
        client.rcpt(rcpt)
        return client.data(f"Subject: to {rcpt}\r\n\r\nHi.\r\n".encode())


@contextlib.contextmanager
def released(module: Any) -> Iterator[None]:
    """Let the hung handlers' threads end when the test is over."""
    try:
        yield
    finally:
        module.release.set()


async def test_hung_plain_handlers_leave_unroutable_and_async_mail_served(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    hung, working = make_module(HUNG), make_module(WORKING)
    modules = importlib.import_module(hung), importlib.import_module(working)
    with released(modules[0]):
        async with running(tmp_path, hung, working, executor_threads=2, handler_timeout=0.5) as s:
            timed_out = await asyncio.gather(
                asyncio.to_thread(send_from, s.port, "a@x.org", "hang@example.com"),
                asyncio.to_thread(send_from, s.port, "b@x.org", "hang@example.com"),
            )
            assert [code for code, _ in timed_out] == [451, 451], timed_out
            assert sorted(modules[0].started) == ["a@x.org", "b@x.org"]  # both threads hung
            code, text = await asyncio.to_thread(send_from, s.port, "c@x.org", "nobody@else.org")
            assert code == 250 and text.startswith(b"2.0.0 Ok: queued as "), (code, text)
            code, _ = await asyncio.to_thread(send_from, s.port, "c@x.org", "async@example.com")
            assert code == 250
            assert modules[1].handled == [("async", "c@x.org")]
            assert not modules[0].release.is_set()  # nothing waited for the hung handlers
    (entry,) = entries(Queue(tmp_path / "run" / "undeliverable"))
    assert entry.reasons == {"nobody@else.org": "no route"}


async def test_a_sender_retrying_a_hung_handler_takes_no_more_threads(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    hung, working = make_module(HUNG), make_module(WORKING)
    modules = importlib.import_module(hung), importlib.import_module(working)
    with released(modules[0]):
        async with running(tmp_path, hung, working, executor_threads=2, handler_timeout=0.5) as s:
            for _ in range(3):  # the MTA's retries: they wait for the sender's lock, off-thread
                code, _ = await asyncio.to_thread(send_from, s.port, "a@x.org", "hang@example.com")
                assert code == 451
            assert modules[0].started == ["a@x.org"]
            code, _ = await asyncio.to_thread(send_from, s.port, "b@x.org", "plain@example.com")
            assert code == 250  # the retries took no thread: the second one is still free
            assert modules[1].handled == [("plain", "b@x.org")]
