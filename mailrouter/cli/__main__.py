"""``python -m mailrouter.cli``: the same as the ``mailrouter`` command."""

from __future__ import annotations

from mailrouter.cli import main

main(prog_name="mailrouter")
