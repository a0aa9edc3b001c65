"""Lamson's ``view`` module: Salmon's functions, and ``LOADER`` shared with Salmon's module (set
on either, both render with it)."""

from __future__ import annotations

import sys
import types
from typing import Any

from mailrouter.compat.salmon import view as _salmon
from mailrouter.compat.salmon.view import attach, load, render, respond

__all__ = ["LOADER", "attach", "load", "render", "respond"]

LOADER: Any  # a property of the module: ``compat.salmon.view.LOADER``


class _View(types.ModuleType):
    @property
    def LOADER(self) -> Any:
        return _salmon.LOADER

    @LOADER.setter
    def LOADER(self, loader: Any) -> None:
        _salmon.LOADER = loader


sys.modules[__name__].__class__ = _View
