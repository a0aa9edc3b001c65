"""Shared fixtures: handler modules written to disk, and project folders for the daemon."""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from helpers import Project

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


@pytest.fixture
def app(request: pytest.FixtureRequest, make_module: Callable[..., str]) -> str:
    """The test module's ``APP`` handler source, written as a module; the module's name."""
    return make_module(request.module.APP)


@pytest.fixture
def make_project(tmp_path: Path) -> Iterator[Callable[..., Project]]:
    """Make project folders for the ``mailrouter`` command; kill every daemon they started.

    ``make_project(folder, config=None, **handlers)``: ``folder`` is relative to ``tmp_path``.
    The config names the suite's loopback DNS server (``dns_nameservers``) unless it sets one.
    Without ``config`` the project is made by ``mailrouter gen``; with it, ``config`` is the
    whole ``config/mailrouter.toml``. ``handlers`` (module name -> source) are written into
    ``config/handlers``.
    """
    from dnszone import quiet_nameserver
    from helpers import Project  # not at the top: conftest must load while the server is broken

    made: list[Project] = []

    def make(folder: str | Path = "proj", config: str | None = None, **handlers: str) -> Project:
        project = Project(tmp_path / folder)
        made.append(project)
        project.folder.mkdir(parents=True)
        if config is None:
            generated = project.run("gen", ".")
            assert generated.returncode == 0, generated.stderr
        else:
            (project.folder / "config").mkdir()
            (project.folder / "config" / "mailrouter.toml").write_text(config)
        toml = project.folder / "config" / "mailrouter.toml"
        if not re.search(r"^dns_nameservers\s*=", toml.read_text(), re.M):  # the suite's DNS
            toml.write_text(f'dns_nameservers = ["{quiet_nameserver()}"]\n' + toml.read_text())
        if handlers:
            (project.folder / "config" / "handlers").mkdir(exist_ok=True)
        for name, source in handlers.items():
            (project.folder / "config" / "handlers" / f"{name}.py").write_text(source)
        return project

    yield make
    for project in made:
        project.kill_all()


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
