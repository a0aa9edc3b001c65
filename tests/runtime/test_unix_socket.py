"""The Unix socket's permissions: ``unix_socket_mode`` and ``unix_socket_group``, as settings,
on the socket the server binds, and after the server drops root for ``user``."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import RECORDING, Project, lmtp_send, mail, running

from mailrouter.config import ConfigError, load_settings


def settings_from(tmp_path: Path, toml: str, **environ: str) -> tuple[str, str]:
    """(unix_socket_mode, unix_socket_group) read from ``toml`` and ``environ``."""
    (tmp_path / "mailrouter.toml").write_text(toml)
    settings = load_settings(tmp_path, environ=environ)
    return settings.unix_socket_mode, settings.unix_socket_group


def other_group() -> grp.struct_group:
    """A group this process may give its files: any but its own as root, else one of its own."""
    if os.geteuid() == 0:
        return next(g for g in grp.getgrall() if g.gr_gid != os.getgid())
    return grp.getgrgid(os.getgroups()[-1])


def test_the_mode_is_octal_text_or_a_toml_octal_int_and_the_group_a_name_or_gid(
    tmp_path: Path,
) -> None:
    group = grp.getgrgid(os.getgid())
    assert settings_from(tmp_path, "") == ("0660", "")
    assert settings_from(tmp_path, 'unix_socket_mode = "640"') == ("0640", "")
    assert settings_from(tmp_path, "unix_socket_mode = 0o600") == ("0600", "")
    assert settings_from(tmp_path, f'unix_socket_group = "{group.gr_name}"')[1] == group.gr_name
    assert settings_from(tmp_path, f"unix_socket_group = {group.gr_gid}")[1] == str(group.gr_gid)
    from_env = {"MAILROUTER_UNIX_SOCKET_MODE": "0o666", "MAILROUTER_UNIX_SOCKET_GROUP": "0"}
    assert settings_from(tmp_path, "", **from_env) == ("0666", "0")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('unix_socket_mode = "rw-rw----"', "unix_socket_mode"),
        ('unix_socket_mode = "0689"', "unix_socket_mode"),
        ("unix_socket_mode = 660", "unix_socket_mode"),  # decimal 660 is 0o1224: a slip
        ("unix_socket_mode = true", "unix_socket_mode"),
        ('unix_socket_group = "no-such-group"', "unix_socket_group"),
        ("unix_socket_group = 4000000000", "unix_socket_group"),
        ("unix_socket_group = [1]", "unix_socket_group"),
    ],
)
def test_a_bad_mode_or_unknown_group_is_a_config_error_naming_the_key(
    tmp_path: Path, toml: str, key: str
) -> None:
    with pytest.raises(ConfigError, match=f"setting '{key}'"):
        settings_from(tmp_path, toml)


async def test_the_socket_has_the_configured_mode_and_group(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    app = make_module(RECORDING)
    group = other_group()
    overrides = {"unix_socket_mode": "0640", "unix_socket_group": group.gr_name}
    async with running(tmp_path, app, protocol="lmtp", unix_socket="run/mr.sock", **overrides):
        sock = tmp_path / "run" / "mr.sock"
        info = sock.stat()
        message = mail()
        replies = await asyncio.to_thread(
            lmtp_send, str(sock), message.sender, message.recipients, message.data
        )
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert (info.st_uid, info.st_gid) == (os.geteuid(), group.gr_gid)
    assert [code for code, _ in replies] == [250]


async def test_by_default_the_socket_is_0660_in_the_servers_group(
    tmp_path: Path, make_module: Callable[..., str]
) -> None:
    async with running(tmp_path, make_module(RECORDING), unix_socket="run/mr.sock"):
        info = (tmp_path / "run" / "mr.sock").stat()
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == os.getegid()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
@pytest.mark.parametrize("socket_group", ["", "daemon"])
def test_a_server_that_drops_root_hands_the_socket_to_its_user_in_its_group(
    make_project: Callable[..., Project], socket_group: str
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="mailrouter-", dir="/tmp"))
    try:
        folder.chmod(0o755)  # the dropped user must reach its files
        project = make_project(folder / "project")
        grouped = ["--unix-socket-group", socket_group] if socket_group else []
        started = project.run("start", "--user", "nobody", "--unix-socket", "run/mr.sock", *grouped)
        assert started.returncode == 0, started.stderr
        pid = re.search(r"\(pid (\d+)\)", started.stdout)
        assert pid, started.stdout
        project.started.add(int(pid.group(1)))
        info = (project.folder / "run" / "mr.sock").stat()
        assert project.run("stop").returncode == 0
    finally:
        shutil.rmtree(folder)
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrnam(socket_group).gr_gid if socket_group else nobody.pw_gid
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (nobody.pw_uid, group, 0o660)
