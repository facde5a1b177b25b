"""The inspector (/ui) beside a server that is slow or hung, in Debian's Chromium against a real `chatdock serve
--http` (tests/http/browser.py): the page says it is waiting, gives a request up after 30 s, counts a silent event
stream as down, and does a click's work once however often it is clicked. The page's clock is Playwright's, run
forward where the test would otherwise wait half a minute."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, Route, expect

from tests.http.browser import q, sign_in, watched
from tests.transports import Rest, create_key, restartable_server

pytestmark = pytest.mark.process

ANN = "+31612345678"
LIVE = "Live: changes appear as they happen."


async def held(page: Page, pattern: str) -> tuple[asyncio.Event, list[str]]:
    """The page's requests to `pattern` wait until the event is set (a server slow to answer them); the URLs
    asked meanwhile."""
    release, asked = asyncio.Event(), []

    async def hold(route: Route) -> None:
        asked.append(route.request.url)
        await release.wait()
        await route.continue_()

    await page.route(pattern, hold)
    return release, asked


def order(n: int) -> dict[str, str]:
    return {"contact_id": f"+3161000{n:04d}", "channel": "whatsapp", "role": "user", "content": f"order {n} late"}


async def test_a_second_click_on_more_results_reads_the_page_once(tmp_path: Path, browser: Browser) -> None:
    """ "More results" clicked twice while its page is on its way: the next page is read and shown once (it was
    listed twice, "60 messages found" for 40 hits), and the button is marked busy meanwhile."""
    db = str(tmp_path / "more.db")
    key = create_key(db, "acme", "support")
    with restartable_server(db) as server:
        rest = Rest(server.url, key)
        for n in range(45):
            rest.ok("POST", "/chats", order(n))
        async with watched(browser) as seen:
            page = seen.page
            await sign_in(page, server.url, key)
            await page.get_by_role("searchbox").fill("order")
            await page.get_by_role("searchbox").press("Enter")
            await expect(page.locator("#results-summary")).to_have_text(
                "20 messages found for “order” in the organization (more below)."
            )
            release, asked = await held(page, "**/chats/search?*cursor=*")
            more = page.get_by_role("button", name="More results")
            await more.click()
            await expect(more).to_have_attribute("aria-busy", "true")
            await more.click()
            await more.dblclick()
            release.set()
            await expect(page.locator("#results-summary")).to_have_text(
                "40 messages found for “order” in the organization (more below)."
            )
            await expect(page.locator("#hits > li")).to_have_count(40)
            await expect(more).not_to_have_attribute("aria-busy", "true")
            assert len(asked) == 1, asked
            await more.click()
            await expect(page.locator("#hits > li")).to_have_count(45)
            await expect(more).to_be_hidden()


async def test_a_hung_server_is_waited_for_then_given_up_and_its_silent_stream_counts_as_down(
    tmp_path: Path, browser: Browser
) -> None:
    """chatdock stopped without a word (SIGSTOP: a request is taken and never answered, as with a hung host or a
    network gone): after a second the status line says the page is waiting; after 30 s the request is given up
    with a problem that says so; after 35 s without a byte on the event stream (the server writes every 15 s)
    the offline banner is up, where the page had kept saying "Live". When the server goes on, the stream is back
    and the problem goes without another click."""
    db = str(tmp_path / "hung.db")
    key = create_key(db, "acme", "support")
    with restartable_server(db, fresh=True) as server:
        rest = Rest(server.url, key)
        for n in range(3):
            rest.ok("POST", "/chats", {**order(n), "contact_id": ANN})
        async with watched(browser) as seen:
            page = seen.page
            await page.clock.install()  # its time flows as the wall clock's until run forward
            await sign_in(page, server.url, key)
            await page.get_by_label("Open a contact by any of its identifiers").fill(ANN)
            await page.get_by_label("Open a contact by any of its identifiers").press("Enter")
            await expect(page.locator("#live")).to_have_text(LIVE)
            server.pause()
            try:
                await page.get_by_role("searchbox").fill("order")
                await page.get_by_role("searchbox").press("Enter")
                await page.clock.run_for(1500)
                await expect(page.get_by_role("status").first).to_have_text("Waiting for chatdock…")
                await expect(page.locator("#live")).to_have_text(LIVE)  # 1.5 s of silence is nothing yet
                await page.clock.run_for(30000)
                await expect(page.locator("#problem")).to_have_text(
                    "chatdock did not answer within 30 s; is the server running?"
                )
                await expect(page.locator("#status")).to_have_text("")
                await page.clock.run_for(5000)
                await expect(page.locator("#offline")).to_contain_text(
                    "Offline: chatdock did not answer: the event stream was silent for 35 s."
                )
                await expect(page.locator("#live")).to_have_text("Live updates paused; reconnecting…")
            finally:
                server.resume()
            await page.clock.run_for(2000)  # the stream's next attempt
            await expect(page.locator("#live")).to_have_text(LIVE, timeout=20000)
            await expect(page.locator("#offline")).to_have_text("")
            await expect(page.locator("#problem")).to_have_text("")
        seen.errors = [error for error in seen.errors if "net::ERR_" not in error]


async def test_enter_again_on_a_busy_search_stays_in_the_page_and_the_last_address_wins(
    tmp_path: Path, browser: Browser
) -> None:
    """Enter pressed again while a search is on its way does nothing (the form's own submit reloaded the page as
    /ui?q=..., signing out and writing the words into the server's log); and a contact asked for by a link, slow
    to answer, then Back: the page stays on the contact Back returned to, and the address names it; a link on its
    way when the user signs out leaves the page signed out, at /ui."""
    db = str(tmp_path / "busy.db")
    key = create_key(db, "acme", "support")
    with restartable_server(db) as server:
        rest = Rest(server.url, key)
        for n in range(3):
            rest.ok("POST", "/chats", order(n))
        first, second = order(0)["contact_id"], order(1)["contact_id"]
        async with watched(browser) as seen:
            page = seen.page
            await sign_in(page, server.url, key)
            release, _ = await held(page, "**/chats/search?*")
            await page.get_by_role("searchbox").fill("order")
            await page.get_by_role("searchbox").press("Enter")
            await page.get_by_role("searchbox").press("Enter")
            await page.wait_for_timeout(300)
            assert "?" not in page.url, page.url
            release.set()
            await expect(page.locator("#results-summary")).to_contain_text("3 messages found for “order”")
            await expect(page).to_have_url(f"{server.url}/ui#q=order")
            await page.unroute("**/chats/search?*")

            await page.get_by_label("Open a contact by any of its identifiers").fill(first)
            await page.get_by_label("Open a contact by any of its identifiers").press("Enter")
            await expect(page.get_by_role("heading", name=first, level=1)).to_be_visible()
            slow, _ = await held(page, f"**/contacts/{q(second)}")
            await page.evaluate(f"location.hash = '#contact={q(second)}'")
            await page.go_back()
            await expect(page).to_have_url(f"{server.url}/ui#contact={q(first)}")
            slow.set()
            await page.wait_for_timeout(500)  # the slow answer has come
            await expect(page.get_by_role("heading", name=first, level=1)).to_be_visible()
            await expect(page).to_have_url(f"{server.url}/ui#contact={q(first)}")

            # a link on its way when the key goes: its late failure is not a refusal to step back over (the page
            # stepped back out of itself, to about:blank)
            await page.unroute(f"**/contacts/{q(second)}")
            late, _ = await held(page, f"**/contacts/{q(second)}")
            await page.evaluate(f"location.hash = '#contact={q(second)}'")
            await page.get_by_role("button", name="Sign out").click()
            late.set()
            await page.wait_for_timeout(500)  # the late answer has come
            await expect(page).to_have_url(f"{server.url}/ui")
            await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
