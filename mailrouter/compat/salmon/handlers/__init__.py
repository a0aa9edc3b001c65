"""Salmon's ready-made handler modules: ``log``, ``queue`` and ``forward``."""
