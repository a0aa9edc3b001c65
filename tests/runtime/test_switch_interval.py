"""``gil_switch_interval``: the server process's GIL switch interval while it serves."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from mailrouter.config import ConfigError, load_settings
from mailrouter.runtime.serve import run_in_process


def test_the_interval_is_pythons_by_default_and_must_be_positive(tmp_path: Path) -> None:
    assert load_settings(tmp_path, environ={}).gil_switch_interval == 0.005
    assert load_settings(tmp_path, {"gil_switch_interval": 0.001}, environ={}).gil_switch_interval
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="'gil_switch_interval'"):
            load_settings(tmp_path, {"gil_switch_interval": bad}, environ={})


def test_the_server_sets_it_while_it_runs_and_restores_it(tmp_path: Path) -> None:
    overrides = {"port": 0, "state_url": "memory://", "allow_root": True}
    settings = load_settings(tmp_path / "config", {**overrides, "gil_switch_interval": 0.001}, {})
    before, seen = sys.getswitchinterval(), []

    def ready(address: str) -> None:
        seen.append(sys.getswitchinterval())
        os.kill(os.getpid(), signal.SIGTERM)  # serve() handles it: stops cleanly

    run_in_process(settings, ready, console=False)
    assert seen == [pytest.approx(0.001)]
    assert sys.getswitchinterval() == before
