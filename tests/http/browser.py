"""Helpers of the browser tests (tests/http/test_inspector.py): Debian's Chromium, installed when missing; a page that
fails the test on any request off 127.0.0.1, on a script error and on a dialog; an axe-core check; screenshots
for docs/inspector.md; and a small JSON client of the REST routes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.async_playwright import Axe  # type: ignore[import-untyped]  # ships no py.typed
from playwright.async_api import Browser, ConsoleMessage, Dialog, Page, Route, ViewportSize

ROOT = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOTS = ROOT / "docs" / "inspector"
# docs/inspector/ is written only when asked (CHATDOCK_SCREENSHOTS=1): an ordinary run leaves the tree as it was
SCREENSHOTS = (
    DOCS_SCREENSHOTS
    if os.environ.get("CHATDOCK_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "chatdock-screenshots"
)
CHROMIUM = Path("/usr/bin/chromium")
WIDE: ViewportSize = {"width": 1000, "height": 700}
NARROW: ViewportSize = {"width": 400, "height": 760}
# what a browser logs by itself for an answer the test asked for (a 401 to a wrong key, a 404 for a forgotten
# contact); the answers themselves are checked by the tests
EXPECTED_LOGS = ("Failed to load resource: the server responded with a status of",)


def chromium() -> str:
    """Debian's Chromium, installed with apt-get when it is not there (CI starts from a fresh machine;
    Playwright's own browser download cannot be used). One worker installs; the others wait for it."""
    if CHROMIUM.exists():
        return str(CHROMIUM)
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    with open("/tmp/chatdock-tests-chromium.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not CHROMIUM.exists():
            environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            install = ["apt-get", "install", "-y", "-q", "chromium"]
            if subprocess.run(install, env=environment, capture_output=True, check=False).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], env=environment, capture_output=True, check=False)
                done = subprocess.run(install, env=environment, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    pytest.fail(f"apt-get install chromium failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return str(CHROMIUM)


@dataclass
class Watched:
    """A page and what it did that a test must not let pass: a request to another host, a script error or a
    Content-Security-Policy refusal in the console, a dialog opened by a script."""

    page: Page
    elsewhere: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)

    def clean(self) -> None:
        assert not self.elsewhere, f"requests left 127.0.0.1: {self.elsewhere}"
        assert not self.errors, f"errors in the page: {self.errors}"
        assert not self.dialogs, f"a script opened dialogs: {self.dialogs}"


@contextlib.asynccontextmanager
async def watched(browser: Browser, viewport: ViewportSize = WIDE) -> AsyncIterator[Watched]:
    """A fresh context (no storage, no cookies) in the viewer's time zone of Tokyo and British English; the
    page is checked clean when the block ends."""
    context = await browser.new_context(
        viewport=viewport, timezone_id="Asia/Tokyo", locale="en-GB", accept_downloads=True, service_workers="block"
    )
    page = await context.new_page()
    seen = Watched(page)

    async def elsewhere(route: Route) -> None:
        seen.elsewhere.append(route.request.url)
        await route.abort()

    def logged(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith(EXPECTED_LOGS):
            seen.errors.append(message.text)

    async def dialog(opened: Dialog) -> None:
        seen.dialogs.append(f"{opened.type}: {opened.message}")
        await opened.dismiss()

    await context.route(lambda url: urllib.parse.urlsplit(url).hostname != "127.0.0.1", elsewhere)
    page.on("console", logged)
    page.on("pageerror", lambda error: seen.errors.append(f"uncaught: {error}"))
    page.on("dialog", dialog)
    page.on("request", lambda request: seen.requested.append(request.url))
    try:
        yield seen
        seen.clean()
    finally:
        await context.close()


async def accessible(page: Page, screen: str) -> None:
    """axe-core (as axe-playwright-python ships it) finds nothing serious or critical on the screen."""
    found: list[dict[str, Any]] = (await Axe().run(page)).response["violations"]
    bad = [v for v in found if v["impact"] in ("serious", "critical")]
    assert not bad, f"{screen}: " + "; ".join(
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}" for v in bad
    )


async def screenshot(page: Page, name: str, taken: bool = True) -> None:
    """The screen as NAME.png: in docs/inspector/ (docs/inspector.md shows them) when CHATDOCK_SCREENSHOTS=1,
    else in a temporary folder."""
    if taken:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


async def opened(page: Page, base: str) -> None:
    """/ui, once its script has read the server's settings."""
    await page.goto(base + "/ui")
    await page.wait_for_selector("body[data-ready]")


async def sign_in(page: Page, base: str, key: str) -> None:
    await opened(page, base)
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name="Contacts").wait_for()


def q(identifier: str) -> str:
    return urllib.parse.quote(identifier, safe="")
