"""Salmon's and Lamson's module layouts over mailrouter's API, so their handler code runs here.

``compat.salmon`` mirrors Salmon 3.3's modules (``routing``, ``mail``, ``view``, ``server``,
``queue``, ``handlers``, ``testing``, ``utils``, ``encoding``); ``compat.lamson`` gives Lamson 1.x
the names where it differs and re-exports the rest. Every piece routes, parses, builds and sends
with mailrouter's own classes; the README's "Migrating from Salmon or Lamson" maps them.
"""
