"""``mailrouter messages`` with CliRunner, on real SQLite and PostgreSQL journals the API filled."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from services import SERVERS, require, unique
from test_journal import drop_tables, receive

from mailrouter.cli import main
from mailrouter.config import load_settings
from mailrouter.journal import Arrival, Journal, Outcome, open_journal

DAY = 86400.0


def data(subject: str, n: int = 0) -> bytes:
    return (
        f"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: {subject}\r\n"
        f"Date: Thu, 3 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{n}@example.org>\r\n\r\nHi.\r\n"
    ).encode()


class Project:
    """A project folder whose settings name a journal, and that journal opened by the API."""

    def __init__(self, root: Path, journal_url: str) -> None:
        self.config = root / "config"
        self.config.mkdir()
        self.url = journal_url
        (self.config / "mailrouter.toml").write_text(
            f"journal_url = {json.dumps(journal_url)}\njournal_retention_days = 2.0\n"
        )

    def journal(self) -> Journal:
        journal = open_journal(load_settings(self.config).journal_store_url())
        assert journal is not None
        return journal

    def run(self, *args: str, **env: str) -> Result:
        command, *rest = args
        return CliRunner().invoke(
            main, ["messages", command, "--config", str(self.config), *rest], env=env or None
        )


@pytest.fixture(autouse=True)
def no_mailrouter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MAILROUTER_"):
            monkeypatch.delenv(name)


@pytest.fixture(params=["sqlite", "postgres"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    require(request.param)
    if request.param == "sqlite":
        yield Project(tmp_path, "sqlite://run/journal.db")
        return
    table = unique()
    yield Project(tmp_path, f"{SERVERS['postgres']}?table={table}")
    drop_tables(table)


@pytest.fixture
def filled(project: Project) -> Iterator[tuple[Project, dict[str, str]]]:
    """Three messages: delivered (oldest), partial, deferred (newest)."""
    now = time.time()
    with project.journal() as journal:
        first = Arrival(
            "alice@example.org", ["bob@example.com"], data("first", 1), received_at=now - 30
        )
        delivered = Outcome("delivered", "250 2.0.0 ok", ("app.START",))
        journal.begin(first)
        journal.finish(first, 1, [("bob@example.com", delivered)], "250 2.0.0 ok", 0.012)
        second = Arrival(
            "ann@example.org",
            ["bob@example.com", "nobody@example.com", "list@example.com"],
            data("=?utf-8?q?h=C3=A9llo?=", 2),
            peer="192.0.2.7:4100",
            helo="mx.example.org",
            received_at=now - 20,
        )
        journal.begin(second)
        journal.record(
            second, 1, "bob@example.com", Outcome("delivered", "250 ok", ("app.A", "app.B"))
        )
        journal.record(second, 1, "nobody@example.com", Outcome("refused", "550 5.1.1 No route"))
        queued = Outcome("queued", "250 queued", queue_key="K7", reason="no route")
        journal.finish(second, 1, [("list@example.com", queued)], "250 ok", 0.25)
        third = Arrival("<>", ["bob@example.com"], data("third", 3), received_at=now - 10)
        journal.record(third, 1, "bob@example.com", Outcome("deferred", "451 4.3.0 later"))
    done, partial, deferred = first.delivery_id, second.delivery_id, third.delivery_id
    yield project, {"delivered": done, "partial": partial, "deferred": deferred}


def test_list_is_a_table_newest_first(filled: tuple[Project, dict[str, str]]) -> None:
    project, ids = filled
    result = project.run("list")
    assert result.exit_code == 0, result.output
    header, *lines = result.output.splitlines()
    assert header.split() == ["ID", "RECEIVED", "STATUS", "SENDER", "RECIPIENTS", "SUBJECT"]
    assert [line.split()[0] for line in lines] == [
        ids["deferred"][:12],
        ids["partial"][:12],
        ids["delivered"][:12],
    ]
    assert [line.split()[3] for line in lines] == ["deferred", "partial", "delivered"]
    assert header.index("STATUS") == lines[0].index("deferred")  # aligned
    assert "<>" in lines[0] and "héllo" in lines[1]
    assert "bob@example.com, nobody@example.com, list@example.com" in lines[1]


def test_list_filters_and_json(filled: tuple[Project, dict[str, str]]) -> None:
    project, ids = filled

    def listed(*args: str, **env: str) -> list[str]:
        result = project.run("list", "--json", *args, **env)
        assert result.exit_code == 0, result.output
        return [entry["id"] for entry in json.loads(result.output)]

    assert listed() == [ids["deferred"], ids["partial"], ids["delivered"]]
    assert listed("--status", "partial") == [ids["partial"]]
    assert listed("--sender", "ANN@example.org") == [ids["partial"]]
    assert listed("--sender", "<>") == listed(MAILROUTER_MESSAGES_SENDER="<>") == [ids["deferred"]]
    assert listed("--recipient", "list@example.com") == [ids["partial"]]
    assert listed("--recipient", "bob@example.com", "--limit", "2") == [
        ids["deferred"],
        ids["partial"],
    ]
    assert listed("--limit", "0") == listed()
    assert listed(MAILROUTER_MESSAGES_LIMIT="1") == [ids["deferred"]]
    assert listed(MAILROUTER_MESSAGES_STATUS="delivered") == [ids["delivered"]]
    (entry,) = json.loads(project.run("list", "--json", "--status", "partial").output)
    assert entry["status"] == "partial" and entry["sender"] == "ann@example.org"
    assert [o["status"] for o in entry["outcomes"]] == ["delivered", "refused", "queued"]
    assert entry["outcomes"][0]["handlers"] == ["app.A", "app.B"]


def test_list_says_when_nothing_is_there(project: Project) -> None:
    assert project.run("list").output == "the journal is empty\n"
    assert project.run("list", "--status", "refused").output == "no messages match\n"
    assert json.loads(project.run("list", "--json").output) == []


def test_show_tells_what_became_of_each_recipient(filled: tuple[Project, dict[str, str]]) -> None:
    project, ids = filled
    result = project.run("show", ids["partial"][:8])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    fields = dict(line.split(":", 1) for line in lines if not line.startswith((" ", "Recip")))
    assert {name: value.strip() for name, value in fields.items()} | {"Received": ""} == {
        "ID": ids["partial"],
        "Status": "partial",
        "Message-ID": "<2@example.org>",
        "Sender": "<ann@example.org>",
        "Peer": "192.0.2.7:4100 (HELO mx.example.org)",
        "Size": fields["Size"].strip(),
        "Received": "",
        "Attempts": fields["Attempts"].strip(),
        "Reply": "250 ok (after 0.250 s)",
        "Subject": "héllo",
        "From": "alice@example.org",
        "To": "bob@example.com",
        "Date": "Thu, 3 Dec 2026 12:00:00 +0000",
    }
    assert fields["Attempts"].strip().startswith("1, the last at ")
    recipients = lines[lines.index("Recipients:") + 1 :]
    assert recipients[0].split() == ["RECIPIENT", "STATUS", "AT", "DETAIL", "REPLY"]
    assert "delivered" in recipients[1] and "by app.A, app.B" in recipients[1]
    assert "refused" in recipients[2] and "550 5.1.1 No route" in recipients[2]
    assert "as K7: no route" in recipients[3] and "250 queued" in recipients[3]

    document = json.loads(project.run("show", ids["partial"], "--json").output)
    assert document["id"] == ids["partial"] and document["headers"]["Subject"] == "héllo"
    assert document["duration"] == 0.25 and document["helo"] == "mx.example.org"
    deferred = project.run("show", ids["deferred"]).output
    assert deferred.count("deferred") == 2 and "Sender:     <>\n" in deferred


def test_show_of_an_unknown_or_ambiguous_id_is_one_line(project: Project) -> None:
    result = project.run("show", "abc123")
    assert (result.exit_code, result.stderr) == (1, "Error: no message 'abc123' in the journal\n")
    with project.journal() as journal:
        seen: set[str] = set()
        n = 0
        while (
            first := receive(journal, Arrival("a@x.org", ["b@x.org"], data("x", n))).delivery_id[0]
        ) not in seen:
            seen.add(first)
            n += 1
    result = project.run("show", first)
    assert result.exit_code == 1
    assert result.stderr == f"Error: '{first}' is the start of several journal ids\n"


def test_purge_defaults_to_the_retention_setting(project: Project) -> None:
    now = time.time()
    with project.journal() as journal:
        old = Arrival("a@x.org", ["b@x.org"], data("old"), received_at=now - 5 * DAY)
        journal.record(old, 1, "b@x.org", Outcome("delivered"), at=now - 5 * DAY)
        journal.finish(old, 1, [], "250 ok", 0.1)  # a finish counts as activity, now
        older = receive(
            journal, Arrival("a@x.org", ["b@x.org"], data("older"), received_at=now - 9 * DAY)
        )
        receive(journal, Arrival("a@x.org", ["b@x.org"], data("new"), received_at=now - DAY))
    result = project.run("purge")
    assert (result.exit_code, result.output) == (
        0,
        "removed 1 journal entries idle for more than 2 days\n",
    )
    with project.journal() as journal:
        assert journal.get(older.delivery_id) is None and len(journal.entries()) == 2
    assert project.run("purge", "--older-than", "0").output == (
        "removed 2 journal entries idle for more than 0 days\n"
    )
    assert project.run("purge", "--older-than", "-1").exit_code == 2


def test_the_journal_off_is_said_clearly(tmp_path: Path) -> None:
    project = Project(tmp_path, "")
    for args in (("list",), ("show", "abc"), ("purge",)):
        result = project.run(*args)
        assert result.exit_code == 1
        assert result.stderr.startswith('Error: the journal is off (journal_url = ""): set')


def test_an_unreachable_journal_is_one_line_and_exit_1(tmp_path: Path) -> None:
    project = Project(tmp_path, "postgresql://postgres@127.0.0.1:1/test?timeout=0.5")
    result = project.run("list")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: journal postgresql://postgres@127.0.0.1:1/test")
    assert "cannot list entries" in result.stderr


def test_bad_input_is_refused(tmp_path: Path) -> None:
    project = Project(tmp_path, "mysql://db/journal")
    assert project.run("list").stderr.startswith("Error: unknown journal URL 'mysql://db/journal'")
    result = project.run("list", "--status", "lost")
    assert result.exit_code == 2 and "'lost' is not one of" in result.stderr
    result = CliRunner().invoke(main, ["messages", "list", "--config", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no config folder" in result.stderr


def test_it_reads_while_a_server_writes(tmp_path: Path) -> None:
    project = Project(tmp_path, "sqlite://run/journal.db")
    with project.journal() as journal:
        ident = receive(journal, Arrival("a@x.org", ["b@x.org"], data("busy"))).delivery_id
    database = tmp_path / "run" / "journal.db"
    with closing(sqlite3.connect(database, isolation_level=None)) as server:
        server.execute("BEGIN IMMEDIATE")  # a writer in the middle of a transaction
        server.execute("UPDATE mailrouter_journal SET reply = 'uncommitted'")
        result = project.run("show", ident[:6])
        assert result.exit_code == 0 and "uncommitted" not in result.output
        assert project.run("list").output.count(ident[:12]) == 1
        server.execute("COMMIT")


def test_client_text_cannot_reach_the_terminal_raw(project: Project) -> None:
    hostile = b"Subject: \x1b[2J\x1b]0;pwned\x07 hi\r\nTo: \xff\xfe\r\n\r\n"
    with project.journal() as journal:
        arrived = Arrival("e\x1b[31m@x.org", ["b\r\n@x.org"], hostile)
        ident = journal.begin(arrived).delivery_id
        journal.record(arrived, 1, "b\r\n@x.org", Outcome("refused", "550 \x1b[0m no"))
    for args in (("list",), ("show", ident)):
        result = project.run(*args)
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output
        assert "\r" not in result.output
    assert "\\u001b" in project.run("show", ident, "--json").output  # JSON escapes it
