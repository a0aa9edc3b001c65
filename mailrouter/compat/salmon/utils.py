"""Salmon's ``utils.settings``: the project's settings, which handler modules read.

``import_settings()`` imports Salmon's settings module (``SALMON_SETTINGS_MODULE``, default
``config.settings``) once. A mailrouter project without one gets its own settings
(``config/mailrouter.toml``) as attributes, with ``relay``: mailrouter's relay of the moment
(the server's, or a test's outbox) and ``router_defaults``: the ``[defaults]`` table.
"""

from __future__ import annotations

import importlib
import os
from types import SimpleNamespace
from typing import Any

from mailrouter.compat.salmon import server
from mailrouter.config import load_settings

__all__ = ["import_settings", "settings"]

settings: Any = None


def import_settings(boot_also: bool, boot_module: str = "config.boot") -> Any:
    """The project's settings, loaded on the first call; imports ``boot_module`` too if
    ``boot_also``."""
    global settings
    if settings is None:
        name = os.getenv("SALMON_SETTINGS_MODULE", "config.settings")
        try:
            settings = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise  # the settings module exists and imports something missing
            found = load_settings("config")
            settings = SimpleNamespace(
                **vars(found), relay=server.current(), router_defaults=dict(found.defaults)
            )
    if boot_also:
        importlib.import_module(boot_module)
    return settings
