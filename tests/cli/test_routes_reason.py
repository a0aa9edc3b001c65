"""``mailrouter routes --test``: when the sender's ERROR stops a state machine, say why and how
to recover."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import Project, mail
from test_cli import invoke, isolated  # noqa: F401 (isolated: autouse, undoes what commands do)

from mailrouter.cli.common import open_router
from mailrouter.state import ERROR, ShelveStorage

LISTS = """
from mailrouter import route, route_like

@route("(list)@(host)", list="news|dev")
def START(message, list=None, host=None):
    raise ValueError(f"no list {list}\\nat all")

@route_like(START)
def POSTING(message, list=None, host=None):
    pass
"""


@pytest.fixture
def project(make_project: Callable[..., Project]) -> Project:
    """A generated project with the lists handler, whose START always fails."""
    return make_project(lists=LISTS)


def routes_test(project: Project, *args: str) -> tuple[int, list[str]]:
    """``mailrouter routes --test ...`` in ``project``: its exit code and output lines."""
    result = invoke("routes", "--config", str(project.folder / "config"), "--test", *args)
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout.splitlines()


async def test_a_sender_in_error_is_told_why_and_how_to_recover(project: Project) -> None:
    with open_router(project.settings, readonly=False) as router:
        result = await router.deliver(mail("Joe <JOE@example.org>", ["news@localhost"]))
        assert "ValueError" in result.reasons["news@localhost"]
    code, lines = routes_test(project, "news@localhost", "--sender", "Joe <JOE@example.org>")
    assert code == 1
    assert lines[0] == "no handler for news@localhost (2 matching, none in the sender's state)"
    assert len(lines) == 2
    head, _, tail = lines[1].partition(": ERROR since ")
    assert head == "  handlers.lists"
    time, _, rest = tail.partition(": ")
    assert len(time) == len("2026-12-03T15:00:00Z") and time.endswith("Z")
    assert rest == (
        "handlers.lists.START raised ValueError: no list news at all"
        " (recover: mailrouter state reset joe@example.org --key handlers.lists)"
    )
    # another sender is in START, so START runs for them: no reason to show
    code, lines = routes_test(project, "news@localhost", "--sender", "ann@example.org")
    assert code == 0 and lines[1].split()[0] == "handlers.lists.START"


def test_error_without_a_recorded_reason_says_so(project: Project) -> None:
    with ShelveStorage(project.settings.path("run/state.db")) as store:
        store.set("handlers.lists", "joe@example.org", ERROR)  # as a version without reasons did
        store.set("handlers.hello", "joe@example.org", "ELSEWHERE")
    code, lines = routes_test(project, "dev@localhost", "--sender", "joe@example.org")
    assert code == 1
    assert lines == [
        "no handler for dev@localhost (2 matching, none in the sender's state)",
        "  handlers.lists: ERROR (no reason recorded)"
        " (recover: mailrouter state reset joe@example.org --key handlers.lists)",
    ]
    # a state with no handler that is not ERROR: nothing to explain
    code, lines = routes_test(project, "hello@localhost", "--sender", "joe@example.org")
    assert (code, lines) == (
        1,
        ["no handler for hello@localhost (2 matching, none in the sender's state)"],
    )
