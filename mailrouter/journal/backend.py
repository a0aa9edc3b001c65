"""What a journal backend provides: a ``Database`` (work on a cursor, in a transaction), its
``Dialect``, and ``JournalError`` for every failure; and the parsing of journal URLs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mailrouter.errors import StoreError
from mailrouter.state.shared import redact

T = TypeVar("T")

DEFAULT_TABLE = "mailrouter_journal"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")  # a [schema.]table


class JournalError(StoreError):
    """The journal's database could not be reached or used (the server answers 451)."""


class Cursor(Protocol):
    """The DB-API cursor that work runs on (sqlite3's and psycopg's both are one)."""

    @property
    def rowcount(self) -> int:
        """Rows the last statement changed."""

    def execute(self, sql: str, params: Sequence[Any], /) -> object:
        """Run one statement."""

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> object:
        """Run one statement once per parameter row."""

    def fetchall(self) -> list[Any]:
        """The rows of the last statement."""


@dataclass(frozen=True)
class Dialect:
    """What differs between the databases' SQL: placeholders, types, DDL details."""

    placeholder: str  # "?" or "%s"
    real: str  # a double-precision column type
    bigint: str
    exists: str  # a row if the table exists ({name}: plain, {quoted}: quoted [schema.]name)
    keyed_table: str = ""  # after CREATE TABLE of a table looked up by its primary key only
    ddl_lock: str = ""  # run first in the transaction that creates the tables (param: table)


@dataclass(frozen=True)
class Work:
    """A write to run on a cursor (``atomic=False``: one statement, that may commit alone)."""

    what: str  # what it does, for error messages: "record a reply"
    run: Callable[[Cursor], None]
    atomic: bool


class Database(Protocol):
    """A backend: runs work on a cursor, in one transaction, raising only ``JournalError``."""

    dialect: Dialect
    shown: str  # the URL without its password, for messages

    def run(self, what: str, work: Callable[[Cursor], T], *, write: bool, atomic: bool) -> T:
        """``work``'s result; ``atomic=False``: its one statement commits by itself."""

    def run_all(self, works: Sequence[Work]) -> list[JournalError | None]:
        """Run several writes, each atomic, together where the database can: each one's error,
        or None; one that fails leaves the others."""

    def close(self) -> None:
        """Release the connections; idempotent."""


def quoted(name: str) -> str:
    """A validated ``[schema.]table`` name, double-quoted for SQL."""
    return ".".join(f'"{part}"' for part in name.split("."))


# -- URLs ---------------------------------------------------------------------------------------


class JournalURL:
    """A journal URL: its parts, the options mailrouter reads, and the rest of the query."""

    def __init__(self, url: str, ours: Iterable[str]) -> None:
        self.shown = redact(url)
        try:
            self.parts = urlsplit(url)
            pairs = parse_qsl(self.parts.query, keep_blank_values=True)
        except ValueError as exc:
            raise JournalError(f"malformed journal URL {self.shown!r}: {exc}") from exc
        known = set(ours)
        self.options = {name: value for name, value in pairs if name in known}
        self.rest = urlencode([(name, value) for name, value in pairs if name not in known])

    def without_ours(self) -> str:
        """The URL without mailrouter's options, for the client library."""
        return urlunsplit(self.parts._replace(query=self.rest))

    def refuse_rest(self) -> None:
        """Raise if the query holds options mailrouter does not know."""
        if self.rest or self.parts.fragment:
            raise JournalError(f"journal URL {self.shown!r}: unknown option in {self.rest!r}")

    def table(self) -> str:
        """The ``table`` option: the journal table's name, the prefix of the others."""
        name = self.options.get("table", DEFAULT_TABLE)
        if not NAME.fullmatch(name):
            raise JournalError(f"journal URL {self.shown!r}: {name!r} is not a [schema.]table name")
        return name

    def number(self, name: str, default: float, *, whole: bool = False) -> float:
        """Option ``name`` as a positive number (``whole``: an integer)."""
        value = self.options.get(name)
        if value is None:
            return default
        try:
            number = int(value) if whole else float(value)
        except ValueError:
            number = -1
        if not 0 < number < float("inf"):
            kind = "a positive integer" if whole else "positive seconds"
            raise JournalError(f"journal URL {self.shown!r}: {name} must be {kind}")
        return number
