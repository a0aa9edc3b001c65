"""Small, real handler applications for mailrouter.

- ``handlers_example.log``: a catch-all that logs every message and keeps a copy in a maildir.
- ``handlers_example.mailinglist``: a mailing list with confirmed subscriptions.

``maildir``, ``lists`` and ``listmail`` are their helpers (storage, membership, the mail a list
sends through ``mailrouter.outbound.sender``), not handler modules. Relative paths in their
settings are relative to the working directory, which ``mailrouter start`` sets to the project
folder.
"""
