"""Lamson 1.x's modules over mailrouter: where Lamson's names differ from Salmon's (its
MailRequest's ``route_to`` and ``original``) they are here; the rest re-exports
``compat.salmon``, which Salmon forked from Lamson."""
