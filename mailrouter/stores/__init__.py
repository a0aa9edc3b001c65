"""State stores that several mailrouter processes (or hosts) can share.

Each is opened by ``mailrouter.state.open_store`` from its URL and implements ``StateStorage``;
the class attribute ``cross_process = True`` tells the server that ``workers > 1`` may use it.

- ``sqlite:///abs/path/state.db`` (``stores.sqlite``): one host, standard library only.
- ``redis://host:port/db`` (``stores.redis``): the ``mailrouter[redis]`` extra.
- ``postgresql://user@host/db`` (``stores.postgres``): the ``mailrouter[postgres]`` extra.

Custom stores are named by an import string, ``package.module:Factory`` (``stores.custom``).
"""
