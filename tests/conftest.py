"""Shared fixtures: handler modules written to disk, and messages to route."""

from __future__ import annotations

import asyncio
import itertools
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

_counter = itertools.count()


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Write handler source to a uniquely named importable module; return its name."""
    folder = tmp_path / "handler_modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    created: list[str] = []

    def make(source: str, name: str | None = None) -> str:
        name = name or f"handlers_{next(_counter)}"
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        created.append(name)
        return name

    yield make
    for name in created:
        sys.modules.pop(name, None)


# The modules that speak SMTP run on both event loops: asyncio's and uvloop's (which the server
# uses when the mailrouter[speed] extra is installed).
_BOTH_LOOPS = {"test_hostile", "test_limits", "test_server", "test_spool", "test_wire"}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories = {"asyncio": asyncio.new_event_loop}
    module = getattr(item, "module", None)
    if module is not None and module.__name__ in _BOTH_LOOPS:
        import uvloop

        factories["uvloop"] = uvloop.new_event_loop
    return factories
