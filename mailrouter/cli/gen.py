"""``mailrouter gen``: create a new project with settings, a hello handler and its test.

The handler, its test and pytest's settings (``pyproject.toml``: the import path and
pytest-asyncio's options, so that the test passes run alone, without warnings) are package data
in ``templates/``; the settings file is written from the defaults of
:class:`~mailrouter.config.Settings`, so it always lists every setting.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import click

from mailrouter.cli.common import CLI_SETTINGS, setting_help
from mailrouter.config import Settings
from mailrouter.errors import MailRouterError

GITIGNORE = "/run/\n/logs/\n__pycache__/\n/.pytest_cache/\n"


@click.command()
@click.argument("path", type=click.Path(file_okay=False))
def gen(path: str) -> None:
    """Create a new project in PATH: settings, a hello handler, and its test."""
    project = Path(path)
    if project.exists() and any(project.iterdir()):
        raise MailRouterError(f"{path} exists and is not empty")
    files = {
        "config/mailrouter.toml": _config_template(),
        "config/handlers/hello.py": _template("hello.py.tmpl"),
        "tests/test_hello.py": _template("test_hello.py.tmpl"),
        "pyproject.toml": _template("pyproject.toml.tmpl"),
        ".gitignore": GITIGNORE,
    }
    for name, text in files.items():
        target = project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    click.echo(f"created a mailrouter project in {path}")
    click.echo(f"  start it:  cd {path} && mailrouter start")
    click.echo("  test it:   pytest")


def _template(name: str) -> str:
    """The text of a file template shipped in ``mailrouter/cli/templates/``."""
    return (resources.files("mailrouter.cli") / "templates" / name).read_text(encoding="utf-8")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a valid TOML basic string
    return repr(value)


def _config_template() -> str:
    """A commented mailrouter.toml listing every setting with its default."""
    defaults = Settings()
    lines = [
        "# mailrouter settings. Each can also be set by a MAILROUTER_<NAME> environment variable",
        "# or a `mailrouter start --<name>` option, which take precedence over this file.",
        "# Relative paths are relative to the project folder (the parent of this folder).",
    ]
    for name in CLI_SETTINGS:
        value = _toml_value(getattr(defaults, name))
        lines += ["", f"# {setting_help(name)}"]
        lines.append(f"{name} = {value}" if name == "handlers" else f"# {name} = {value}")
    lines += [
        "",
        "# Regexes for the (name) captures in route patterns, shared by all handler modules.",
        "[defaults]",
        "host = 'localhost|example\\.com'",
        "",
    ]
    return "\n".join(lines)
