"""``mailrouter gen``: the generated project's test passes run alone from its folder, as a user
runs it, with warnings as errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import environment


def run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in ``folder``, without the variables of this test session."""
    env = {k: v for k, v in environment().items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, *args], cwd=folder, capture_output=True, text=True, timeout=120, env=env
    )


def test_the_generated_test_passes_alone_from_the_project_folder_without_warnings(
    tmp_path: Path,
) -> None:
    generated = run(tmp_path, "-m", "mailrouter", "gen", "project")
    assert generated.returncode == 0, generated.stderr
    project = tmp_path / "project"
    assert (project / "pyproject.toml").is_file()
    result = run(project, "-m", "pytest", "-W", "error", "tests/test_hello.py")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "2 passed" in output
    assert "warning" not in output.lower(), output
