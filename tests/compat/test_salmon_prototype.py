"""The application ``salmon gen`` generates (Salmon 3.3.0's prototype), its imports rewritten as
the README says and nothing else, run on a real mailrouter server over SMTP.

The prototype comes from Salmon's sdist on PyPI, into a temporary folder (Salmon is GPL-3.0:
none of it is in this repository).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import running

from mailrouter import MailRequest
from mailrouter.compat.salmon.routing import Router
from mailrouter.compat.salmon.testing import TestConversation, relay

VERSION = "3.3.0"
HANDLERS = "app.handlers.sample"
PIP_DOWNLOAD = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
# the README's rewrite, as its sed commands give it
REWRITES = [
    (re.compile(r"\bsalmon\."), "mailrouter.compat.salmon."),
    (re.compile(r"\b(from|import) salmon\b"), r"\1 mailrouter.compat.salmon"),
]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Salmon's unpacked sdist."""
    folder = tmp_path_factory.mktemp("salmon-sdist")
    download = subprocess.run(
        [*PIP_DOWNLOAD, f"salmon-mail=={VERSION}", "-d", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if download.returncode:
        message = f"cannot download Salmon's sdist:\n{download.stderr}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with tarfile.open(folder / f"salmon_mail-{VERSION}.tar.gz") as archive:
        archive.extractall(folder, filter="data")
    return folder / f"salmon_mail-{VERSION}"


@pytest.fixture
def prototype(sdist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A generated project, its imports rewritten, importable."""
    project = tmp_path / "myapp"
    shutil.copytree(sdist / "salmon" / "data" / "prototype", project)
    for source in project.rglob("*.py"):
        text = source.read_text()
        for pattern, replacement in REWRITES:
            text = pattern.sub(replacement, text)
        source.write_text(text)
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.chdir(project)
    try:
        yield project
    finally:
        for name in [name for name in sys.modules if name == "app" or name.startswith("app.")]:
            del sys.modules[name]
        Router.clear_routes()
        Router.HANDLERS.clear()


def test_the_rewrite_leaves_no_salmon_import(prototype: Path) -> None:
    sample = (prototype / "app" / "handlers" / "sample.py").read_text()
    assert "from mailrouter.compat.salmon.routing import route, route_like" in sample
    assert not re.search(r"\b(from|import) salmon\b", sample)


async def test_the_generated_app_walks_its_states_over_smtp(prototype: Path) -> None:
    # the prototype's settings.py: router_defaults = {'host': '.+'}
    async with running(prototype, HANDLERS, defaults={"host": ".+"}) as server:
        client = TestConversation(relay(port=server.port), "somedude@localhost", "hello")

        def state() -> str:
            request = MailRequest("127.0.0.1", client.From, ["me@localhost"], b"")
            return server.router.get_state(HANDLERS, request)

        assert state() == "START"
        await asyncio.to_thread(client.say, "me@localhost", "first")  # START: NEW_USER
        assert state() == "NEW_USER"
        await asyncio.to_thread(client.say, "me@localhost", "again")  # NEW_USER stays
        assert state() == "NEW_USER"
        assert server.router.undeliverable is None or len(server.router.undeliverable) == 0
