"""``mailrouter send`` and ``sendmail`` in a project folder, as a user runs them: the server's
address and protocol come from the project's settings (file, then environment) unless options
say otherwise, and a server of the other protocol is named as such."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Project, environment, running

APP = """
from mailrouter import route, stateless

seen = []


@route("(name)@(host)", name="[a-z]+")
@stateless
def RECORD(message, name=None, host=None):
    seen.append((message.sender, message.recipient))
"""

ENVELOPE = ("--from", "alice@example.org", "--to", "ann@example.com", "--to", "bob@example.com")
BOTH = [("alice@example.org", "ann@example.com"), ("alice@example.org", "bob@example.com")]
MakeProject = Callable[..., Project]


async def mailrouter(
    folder: Path, *args: str, stdin: bytes = b"", **env: str
) -> subprocess.CompletedProcess[str]:
    """``mailrouter ARGS`` run in ``folder`` (in a worker thread: the server runs on this loop)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "mailrouter", *args],
        cwd=folder,
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment(), **env},
    )


def seen(app: str) -> list[tuple[str, str]]:
    return sys.modules[app].seen  # type: ignore[no-any-return]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and "Traceback" not in line
    return line


async def test_send_and_sendmail_use_the_port_in_the_projects_config_file(
    tmp_path: Path, app: str, make_project: MakeProject
) -> None:
    async with running(tmp_path, app) as server:
        project = make_project(config=f"port = {server.port}\n")
        sent = await mailrouter(project.folder, "send", *ENVELOPE)
        piped = await mailrouter(
            project.folder, "sendmail", "ann@example.com", stdin=b"From: carol@example.org\n\nhi\n"
        )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("250 ")
    assert piped.returncode == 0, piped.stderr
    assert seen(app) == [*BOTH, ("carol@example.org", "ann@example.com")]


async def test_send_takes_the_port_from_the_environment_and_the_option_over_both(
    tmp_path: Path, app: str, make_project: MakeProject
) -> None:
    project = make_project(config="port = 1\n")  # nothing listens there
    async with running(tmp_path, app) as server:
        port = str(server.port)
        from_env = await mailrouter(project.folder, "send", *ENVELOPE, MAILROUTER_PORT=port)
        from_option = await mailrouter(project.folder, "send", "--port", port, *ENVELOPE)
    assert from_env.returncode == 0, from_env.stderr
    assert from_option.returncode == 0, from_option.stderr
    assert seen(app) == BOTH + BOTH
    refused = await mailrouter(project.folder, "send", *ENVELOPE)
    assert "127.0.0.1:1" in one_line_error(refused)  # the file's port, when nothing overrides it


async def test_send_speaks_lmtp_when_the_project_does(
    tmp_path: Path, app: str, make_project: MakeProject
) -> None:
    async with running(tmp_path, app, protocol="lmtp") as server:
        project = make_project(config=f'protocol = "lmtp"\nport = {server.port}\n')
        result = await mailrouter(project.folder, "send", *ENVELOPE)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()  # LMTP: one reply per recipient
    assert [line.split(": ")[0] for line in lines] == ["<ann@example.com>", "<bob@example.com>"]
    assert seen(app) == BOTH


@pytest.mark.parametrize("protocol", ["lmtp", "smtp"])
async def test_send_reaches_the_projects_unix_socket(
    tmp_path: Path, app: str, make_project: MakeProject, protocol: str
) -> None:
    sock = tmp_path / "mr.sock"
    async with running(tmp_path, app, protocol=protocol, unix_socket=str(sock)):
        project = make_project(config=f'protocol = "{protocol}"\nunix_socket = "{sock}"\n')
        result = await mailrouter(project.folder, "send", *ENVELOPE)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == (2 if protocol == "lmtp" else 1)
    assert seen(app) == BOTH


async def test_smtp_to_an_lmtp_server_and_lmtp_to_an_smtp_one_say_which_option_to_use(
    tmp_path: Path, app: str
) -> None:
    async with running(tmp_path, app, protocol="lmtp") as server:
        to_lmtp = await mailrouter(tmp_path, "send", "--port", str(server.port), *ENVELOPE)
    async with running(tmp_path, app) as server:
        to_smtp = await mailrouter(
            tmp_path, "send", "--lmtp", "--port", str(server.port), *ENVELOPE
        )
    assert "refused EHLO and HELO (500 " in one_line_error(to_lmtp)
    assert one_line_error(to_lmtp).endswith("is it an LMTP server? Try --lmtp")
    assert "refused LHLO (500 " in one_line_error(to_smtp)
    assert one_line_error(to_smtp).endswith("is it an SMTP server? Try --smtp")
    assert seen(app) == []


def test_an_explicit_config_folder_that_is_missing_is_an_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mailrouter", "send", "--config", "nowhere", *ENVELOPE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
    )
    assert "no config folder 'nowhere'" in one_line_error(result)
