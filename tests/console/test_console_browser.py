"""The console in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright) on the console of a real ``mailrouter start`` daemon.

Without /usr/bin/chromium the test is skipped, or fails under ``CI``. With
``CONSOLE_SCREENSHOTS=FOLDER`` it also saves screenshots of the main pages there (the README's
come from ``CONSOLE_SCREENSHOTS=docs``).
"""

from __future__ import annotations

import os
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from consoles import APP, TOKEN, message
from helpers import Project, free_port

CHROMIUM = Path("/usr/bin/chromium")
QUIET_BROWSER = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-pings",
    "--dns-prefetch-disable",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no name resolves but loopback
]
SENDER = "joe@example.org"
CONFIG = """
console_port = {console}
console_token = "{token}"

[defaults]
host = 'example\\.com'
"""

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # the browser talks only to the console on loopback: none of its own update checks
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=QUIET_BROWSER)
        try:
            yield browser
        finally:
            browser.close()


def _shot(page: Page, name: str) -> None:
    folder = os.environ.get("CONSOLE_SCREENSHOTS")
    if folder:  # the whole page in the viewport: a full-page shot leaves out iframes' content
        height = int(page.evaluate("document.documentElement.scrollHeight"))
        page.set_viewport_size({"width": 1280, "height": height})
        page.screenshot(path=str(Path(folder) / f"console-{name}.png"))
        page.set_viewport_size({"width": 1280, "height": 800})


def _send(port: int, recipients: list[str], data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(SENDER, recipients, data)


def test_the_console_in_a_browser(make_project: Callable[..., Project], chromium: Browser) -> None:
    console_port = free_port()
    project = make_project(config=CONFIG.format(console=console_port, token=TOKEN), app=APP)
    port, _ = project.start()
    url = f"http://127.0.0.1:{console_port}"
    page = chromium.new_page(viewport={"width": 1280, "height": 800})
    page.on("dialog", lambda dialog: dialog.accept())

    # refused without the token
    page.goto(f"{url}/queues")
    expect(page).to_have_url(f"{url}/login?next=%2Fqueues")
    page.fill("input[name=token]", "not-the-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".error")).to_have_text("wrong token")
    assert page.request.get(f"{url}/messages/rows", max_redirects=0).status == 303

    # logged in, a message sent over SMTP appears without a reload
    page.fill("input[name=token]", TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{url}/queues/undeliverable")
    page.goto(f"{url}/messages")
    page.evaluate("window.notReloaded = true")
    _send(port, ["ok@example.com", "nobody@example.com"], message("from the browser test"))
    row = page.locator("#rows tr", has_text="from the browser test")
    expect(row).to_be_visible(timeout=20_000)
    assert page.evaluate("window.notReloaded") is True

    # its page: text, the HTML part sandboxed (its script never runs), the attachment
    row.locator("a").click()
    expect(page.locator("pre.text-part")).to_have_text("The text part.")
    frame = page.frame_locator("iframe.html-part")
    expect(frame.locator("#x")).to_have_text("The HTML part.")
    assert page.locator("iframe.html-part").get_attribute("sandbox") == ""
    assert all(f.name != "pwned" and "pwned" not in f.url for f in page.frames)
    assert page.title().startswith("Message ")
    expect(page.locator("a.attachment")).to_have_text("report.pdf")
    _shot(page, "message")

    # compose a message: delivered through the router, its page says so
    page.click("nav >> text=Compose")
    page.fill("input[name=sender]", "ann@example.org")
    page.fill("input[name=to]", "hello@example.com")
    page.fill("input[name=subject]", "composed in the browser")
    page.fill("textarea[name=text]", "Hello from the console.")
    page.get_by_role("button", name="Deliver").click()
    expect(page.locator(".notice")).to_contain_text("delivered: 250 2.0.0")
    expect(page.locator("tr.outcome")).to_contain_text("handlers.app.RECORD")
    expect(page.locator("h1")).to_contain_text("composed in the browser")

    # a sender in ERROR: reset it, then replay the message its failure queued
    broken = project.folder / "config" / "handlers" / "broken"
    broken.write_text("")
    _send(port, ["order@example.com"], message("an order"))
    broken.unlink()
    page.click("nav >> text=States")
    stuck = page.locator(f'tr[data-sender="{SENDER}"]')
    expect(stuck).to_contain_text("RuntimeError: the order desk is down")
    _shot(page, "states")
    stuck.locator("button.reset").click()
    expect(page.locator(".notice")).to_have_text(f"{SENDER} under handlers.app: reset to START")
    page.click("nav >> text=Queues")
    entry = page.locator("tr[data-key]", has_text="an order")
    expect(entry).to_be_visible()
    _shot(page, "queues")
    entry.locator("button.replay").click()
    expect(page.locator(".notice")).to_contain_text(": delivered")
    expect(entry).to_have_count(0)
    page.goto(f"{url}/states?sender={SENDER}")
    expect(page.locator(f'tr[data-sender="{SENDER}"] .badge')).to_have_text("TAKEN")

    page.goto(f"{url}/routes?address=order@example.com&sender={SENDER}")
    expect(page.locator("table.trial")).to_contain_text("handlers.app.TAKEN")
    _shot(page, "routes")
    page.click("nav >> text=Activity")
    expect(page.locator("svg.chart rect").first).to_be_visible()
    _shot(page, "activity")
    page.click("nav >> text=Messages")
    expect(page.locator("#rows tr")).to_have_count(3)
    _shot(page, "messages")

    # a logged-out browser is refused again
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{url}/login")
    assert page.request.get(f"{url}/messages/rows", max_redirects=0).status == 303
    assert project.run("stop").returncode == 0
