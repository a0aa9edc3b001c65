"""Templates for responses: ``render`` and ``respond`` from ``mailrouter.outbound.templates``."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailrouter import MailResponse, MailRouterError
from mailrouter.config import Settings, load_settings
from mailrouter.outbound import templates as views
from mailrouter.outbound.response import HeaderInjectionError
from mailrouter.runtime.serve import serve
from mailrouter.testing import Conversation

TEXT = "Hello {{ name }} <{{ address }}>,\nwelcome to {{ list }}.\n"
HTML = "<p>Hello {{ name }}, welcome to <b>{{ list }}</b>.</p>\n"
NEWS = {"name": "Ann & <Bob>", "address": "ann@example.com", "list": "news"}


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """A templates folder with a text and an HTML welcome, configured for the test."""
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "welcome.txt").write_text(TEXT)
    (folder / "welcome.html").write_text(HTML)
    with views.using(folder):
        yield folder


def test_text_templates_are_not_escaped(folder: Path) -> None:
    assert views.render("welcome.txt", **NEWS) == (
        "Hello Ann & <Bob> <ann@example.com>,\nwelcome to news.\n"
    )


def test_html_templates_are_escaped(folder: Path) -> None:
    (folder / "page.htm").write_text("<i>{{ list }}</i>")
    expected = "<p>Hello Ann &amp; &lt;Bob&gt;, welcome to <b>a &amp; b</b>.</p>\n"
    assert views.render("welcome.html", name=NEWS["name"], list="a & b") == expected
    assert views.render("page.htm", list="<x>") == "<i>&lt;x&gt;</i>"


def test_a_variable_named_template_is_a_variable(folder: Path) -> None:
    (folder / "t.txt").write_text("{{ template }}")
    assert views.render("t.txt", template="mine") == "mine"


def test_a_missing_variable_is_an_error_naming_it_and_the_template(folder: Path) -> None:
    with pytest.raises(views.TemplateError, match=r"'welcome\.txt'.*'list' is undefined"):
        views.render("welcome.txt", name="Ann", address="ann@example.com")


def test_a_missing_template_is_an_error_naming_it_and_the_folder(folder: Path) -> None:
    with pytest.raises(views.TemplateError) as caught:
        views.render("nope.txt")
    assert str(caught.value) == f"template 'nope.txt' not found in {folder}"
    assert isinstance(caught.value, MailRouterError)
    (folder / "outer.txt").write_text("{% include 'inner.txt' %}")
    with pytest.raises(views.TemplateError, match=r"'inner\.txt' not found"):
        views.render("outer.txt")
    with pytest.raises(views.TemplateError, match="not found"):
        views.render("../templates/welcome.txt", **NEWS)  # no way out of the folder


def test_respond_renders_both_alternatives_with_the_headers(folder: Path) -> None:
    response = views.respond(
        NEWS,
        text="welcome.txt",
        html="welcome.html",
        to="Ann <ann@example.com>",
        sender="news@lists.example.com",
        subject="Welcome to news",
        headers={"X-List": "news"},
    )
    assert isinstance(response, MailResponse)
    assert response.recipients == ("ann@example.com",)
    assert response.envelope_sender == "news@lists.example.com"
    message = response.message()
    assert message.get_content_type() == "multipart/alternative"
    assert message["Subject"] == "Welcome to news"
    assert message["To"] == "Ann <ann@example.com>"
    assert message["X-List"] == "news"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert text.get_content() == "Hello Ann & <Bob> <ann@example.com>,\nwelcome to news.\n"
    assert html.get_content_type() == "text/html"
    assert "Ann &amp; &lt;Bob&gt;" in html.get_content()


def test_respond_with_one_template_or_none(folder: Path) -> None:
    fields = {"to": "ann@example.com", "sender": "news@example.com", "subject": "Hi"}
    only_html = views.respond(NEWS, html="welcome.html", **fields).message()
    assert only_html.get_content_type() == "text/html"
    only_text = views.respond(NEWS, text="welcome.txt", **fields).message()
    assert only_text.get_content_type() == "text/plain"
    with pytest.raises(ValueError, match="text or an html template"):
        views.respond(NEWS, **fields)


def test_header_values_from_variables_are_still_checked(folder: Path) -> None:
    evil = {**NEWS, "name": "Ann\r\nBcc: victim@example.org"}
    fields = {"to": "ann@example.com", "sender": "news@example.com"}
    with pytest.raises(HeaderInjectionError):
        views.respond(evil, text="welcome.txt", subject=f"Welcome {evil['name']}", **fields)
    with pytest.raises(HeaderInjectionError):
        views.respond(
            evil, text="welcome.txt", subject="Hi", headers={"X-Name": evil["name"]}, **fields
        )


def test_header_values_are_not_templates(folder: Path) -> None:
    subject = "Re: {{ 7 * 7 }}"  # say, an incoming subject: never run as a template
    response = views.respond(
        NEWS, text="welcome.txt", to="ann@example.com", sender="news@example.com", subject=subject
    )
    assert response.message()["Subject"] == subject


def test_using_switches_folders_for_its_block_and_changed_files_reload(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for where, text in ((first, "one {{ n }}"), (second, "two {{ n }}")):
        where.mkdir()
        (where / "t.txt").write_text(text)
    with views.using(str(first)) as chosen:
        assert chosen == views.current() == first
        assert views.render("t.txt", n=1) == "one 1"
        with views.using(second):
            assert views.render("t.txt", n=2) == "two 2"
            (second / "t.txt").write_text("changed {{ n }}")
            stat = (second / "t.txt").stat()
            os.utime(second / "t.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
            assert views.render("t.txt", n=3) == "changed 3"
        assert views.current() == first
        assert views.render("t.txt", n=4) == "one 4"
    assert views.current() == Path("templates")


def test_the_default_folder_is_templates_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.txt").write_text("here")
    monkeypatch.chdir(tmp_path)
    assert views.current() == Path("templates")
    assert views.render("t.txt") == "here"


def test_without_jinja2_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "jinja2", None)  # makes `import jinja2` fail
    with (
        views.using(tmp_path),  # a folder not loaded before
        pytest.raises(views.TemplatesUnavailable, match=r"pip install 'mailrouter\[templ"),
    ):
        views.render("t.txt")


def test_the_templates_setting_is_relative_to_the_project(tmp_path: Path) -> None:
    assert Settings().templates == "templates"
    settings = load_settings(tmp_path / "config", {"templates": "mail/views"}, environ={})
    assert settings.path(settings.templates) == tmp_path / "mail" / "views"


async def test_the_server_loads_templates_from_the_setting(tmp_path: Path) -> None:
    overrides = {
        "port": 0,
        "state_url": "memory://",
        "allow_root": True,
        "templates": "views",
    }
    settings = load_settings(tmp_path / "config", overrides, environ={})
    seen: list[Path] = []

    def ready(address: str) -> None:
        seen.append(views.current())
        os.kill(os.getpid(), signal.SIGTERM)  # serve() handles it: stops cleanly

    await serve(settings, on_ready=ready)
    assert seen == [tmp_path / "views"]
    assert views.current() == Path("templates")  # the server's folder was for its run only


WELCOME = """
from mailrouter import route
from mailrouter.outbound import sender as relay
from mailrouter.outbound.templates import respond

@route("welcome@(host)", host="example\\\\.com")
def START(message, host=None):
    relay.send(
        respond(
            {"subject": message["Subject"], "host": host},
            text="welcome.txt",
            html="welcome.html",
            to=message.sender,
            sender="welcome@" + host,
            subject="Welcome",
        )
    )
"""


def test_a_handler_responds_with_templates_in_a_conversation(
    conversation: Conversation, make_module: Callable[..., str], tmp_path: Path
) -> None:
    (tmp_path / "welcome.txt").write_text("You wrote {{ subject }} to {{ host }}.")
    (tmp_path / "welcome.html").write_text("<p>You wrote {{ subject }} to {{ host }}.</p>")
    with views.using(tmp_path):
        conversation.router.load([make_module(WELCOME)])
        result = conversation.say("welcome@example.com", subject="<b>hi</b> & bye")
    assert [reply.code for reply in result.replies] == [250]
    (sent,) = conversation.delivered(to=conversation.sender, subject="^Welcome$")
    assert sent["From"] == "welcome@example.com"
    text, html = sent.iter_parts()
    assert text.get_content().rstrip() == "You wrote <b>hi</b> & bye to example.com."
    escaped = "&lt;b&gt;hi&lt;/b&gt; &amp; bye"
    assert html.get_content().rstrip() == f"<p>You wrote {escaped} to example.com.</p>"
