"""Running the server: in this process, or supervised in ``workers`` processes.

The choice is made here, above both (as uvicorn's ``run`` picks a supervisor): ``workers``
imports ``server``, and ``server`` knows nothing of workers.
"""

from __future__ import annotations

from collections.abc import Callable

from mailrouter.config import Settings
from mailrouter.runtime.serve import run_in_process
from mailrouter.runtime.workers import run_workers


def run(settings: Settings, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``settings`` until stopped by a signal: in this process, or in ``workers``."""
    if settings.workers > 1:
        run_workers(settings, on_ready)
    else:
        run_in_process(settings, on_ready)
