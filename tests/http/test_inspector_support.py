"""The inspector (/ui) as a support person relies on it, in Debian's Chromium against a real `chatdock serve
--http` (tests/http/browser.py): a timeline that never skips a message, whatever arrives while it is read;
chats told apart; whose key it is; contacts and a search scope that follow what happened elsewhere; an outage
that cannot be missed; text that is not what it looks like; a long identifier on a phone-sized window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from tests.http.browser import accessible, chromium, q, sign_in, watched
from tests.transports import Rest, create_key, free_port, http_server

pytestmark = pytest.mark.process

ANN = "+31612345678"
LIVE = "Live: changes appear as they happen."


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, for one test (as in test_inspector.py)."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium())
        try:
            yield launched
        finally:
            await launched.close()


async def open_contact(page: Page, identifier: str) -> None:
    await page.get_by_label("Open a contact by any of its identifiers").fill(identifier)
    await page.get_by_label("Open a contact by any of its identifiers").press("Enter")
    await expect(page.get_by_role("heading", name=identifier, level=1)).to_be_visible()


async def shown(page: Page) -> list[str]:
    """The contents of the timeline's messages, top to bottom."""
    return [text.strip() for text in await page.locator("#timeline > li .content").all_inner_texts()]


def stored(rest: Rest, contact: str) -> list[str]:
    """The contact's messages as the API lists them, oldest first."""
    contents: list[str] = []
    cursor = None
    while True:
        listed = rest.ok("GET", "/chats", contact_id=contact, limit=200, **({"cursor": cursor} if cursor else {}))
        contents += [message["content"] for message in listed["messages"]]
        cursor = listed["next_cursor"]
        if not cursor:
            return contents[::-1]


def said(contact: str, content: str, at: str | None = None) -> dict[str, str]:
    return {"contact_id": contact, "channel": "sms", "role": "user", "content": content} | (
        {"created_at": at} if at else {}
    )


async def test_messages_arriving_while_an_older_page_loads_leave_no_gap(tmp_path: Path, browser: Browser) -> None:
    """More than a page of messages arrives while "Load older messages" is on its way: the timeline shows
    every message from the oldest loaded to the newest, none skipped between the pages."""
    db = str(tmp_path / "gap.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        async with watched(browser) as seen:
            rest, page = Rest(base, key), seen.page
            for n in range(120):
                rest.ok("POST", "/chats", said(ANN, f"earlier {n}", f"2026-11-20T{8 + n // 60:02d}:{n % 60:02d}:00Z"))
            await sign_in(page, base, key)
            await open_contact(page, ANN)
            await expect(page.locator("#live")).to_have_text(LIVE)
            older = page.get_by_role("button", name="Load older messages")
            await older.click()
            await expect(page.locator("#timeline > li")).to_have_count(100)

            # the next older page is held on its way while 60 messages arrive and the page hears of them
            held, release = asyncio.Event(), asyncio.Event()

            async def hold(route: Route) -> None:
                if "cursor=" in route.request.url and not held.is_set():
                    held.set()
                    await release.wait()
                await route.continue_()

            await page.route("**/chats?*", hold)
            clicked = asyncio.ensure_future(older.click())
            await held.wait()
            for n in range(60):
                rest.ok("POST", "/chats", said(ANN, f"burst {n}"))
            await expect(page.locator("#contact-summary")).to_contain_text("180 messages")
            await page.wait_for_timeout(1000)  # the refresh that the burst started has had its turn
            release.set()
            await clicked

            everything = stored(rest, ANN)
            await expect(page.locator("#timeline > li")).to_have_count(180)
            await expect(page.locator("#timeline > li").last).to_contain_text("burst 59")
            assert await shown(page) == everything
            await expect(older).to_be_hidden()


async def test_a_late_message_and_linked_history_show_in_their_place(tmp_path: Path, browser: Browser) -> None:
    """A webhook's message dated inside the loaded range, and history linked in from another identifier, both
    older than the newest page, appear live where they belong."""
    db = str(tmp_path / "late.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        async with watched(browser) as seen:
            rest, page = Rest(base, key), seen.page
            for minute in range(60):
                rest.ok("POST", "/chats", said(ANN, f"turn {minute}", f"2026-11-20T09:{minute:02d}:00Z"))
            await sign_in(page, base, key)
            await open_contact(page, ANN)
            await page.get_by_role("button", name="Load older messages").click()
            await expect(page.locator("#timeline > li")).to_have_count(60)
            await expect(page.locator("#live")).to_have_text(LIVE)

            rest.ok("POST", "/chats", said(ANN, "late webhook", "2026-11-20T09:05:30Z"))
            late = page.locator("#timeline > li", has_text="late webhook")
            await expect(late).to_be_visible()
            assert (await shown(page))[5:8] == ["turn 5", "late webhook", "turn 6"]

            rest.ok(
                "POST",
                "/chats",
                said("ann@example.com", "from the email", "2026-11-20T09:02:30Z") | {"channel": "email"},
            )
            rest.ok("POST", f"/contacts/{q(ANN)}/aliases", {"identifier": "ann@example.com"})
            await expect(page.locator("#timeline > li", has_text="from the email")).to_be_visible()
            assert (await shown(page))[2:5] == ["turn 2", "from the email", "turn 3"]
            assert await shown(page) == stored(rest, ANN)


async def test_a_message_written_while_the_page_connects_its_stream_shows(tmp_path: Path, browser: Browser) -> None:
    db = str(tmp_path / "connect.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        async with watched(browser) as seen:
            rest, page = Rest(base, key), seen.page
            rest.ok("POST", "/chats", said(ANN, "first"))
            await sign_in(page, base, key)
            connecting, written = asyncio.Event(), asyncio.Event()

            async def slow(route: Route) -> None:  # the timeline is read; the stream does not listen yet
                connecting.set()
                await written.wait()
                await route.continue_()

            await page.route("**/events", slow)
            opening = asyncio.ensure_future(open_contact(page, ANN))
            await connecting.wait()
            rest.ok("POST", "/chats", said(ANN, "written meanwhile"))
            written.set()
            await opening
            await expect(page.locator("#live")).to_have_text(LIVE)
            await expect(page.locator("#timeline > li").last).to_contain_text("written meanwhile")


async def test_chats_are_told_apart_and_all_counted(tmp_path: Path, browser: Browser) -> None:
    """Chats opened in the same minute (their ids begin alike) are named by the end of their ids, in the chat
    list, the status controls and the messages; up to 200 are listed, and a note says when there are more."""
    db = str(tmp_path / "chats.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        async with watched(browser) as seen:
            rest, page = Rest(base, key), seen.page
            chats = [rest.ok("POST", f"/contacts/{q(ANN)}/chats", {"channel": "web"})["id"] for _ in range(3)]
            assert len({chat[:8] for chat in chats}) == 1  # the time part of a UUIDv7
            for number, chat in enumerate(chats):
                rest.ok("POST", "/chats", said(ANN, f"in chat {number}") | {"channel": "web", "chat_id": chat})
            await sign_in(page, base, key)
            await open_contact(page, ANN)
            names = await page.locator("#chats > li > p").all_inner_texts()
            assert len({name.split(" on ")[0] for name in names}) == 3, names
            for number, chat in enumerate(chats):
                await expect(page.get_by_label(f"New status of chat …{chat[-8:]}")).to_have_count(1)
                message = page.locator("#timeline > li", has_text=f"in chat {number}")
                await expect(message.locator(".head")).to_contain_text(f"chat …{chat[-8:]}")
            await expect(page.locator("#chats-note")).to_be_empty()

            for _ in range(202):
                rest.ok("POST", f"/contacts/{q(ANN)}/chats", {"channel": "voice"})
            await page.get_by_role("button", name="Back to contacts").click()
            await open_contact(page, ANN)
            await expect(page.locator("#chats > li")).to_have_count(200)
            await expect(page.locator("#chats-note")).to_have_text(
                "Showing the newest 200 of 205 chats (the API lists no more)."
            )


async def test_the_header_says_whose_key_and_a_long_identifier_stays_short(tmp_path: Path, browser: Browser) -> None:
    """The header names the organization and the key's prefix (never the key); at 360 pixels wide a 256-character
    identifier takes one line of the header and two of the heading, cut with an ellipsis, whole in their titles."""
    db = str(tmp_path / "header.db")
    key = create_key(db, "globex", "support")
    long = "a" * 256
    with http_server(db) as base:
        async with watched(browser, {"width": 360, "height": 740}) as seen:
            rest, page = Rest(base, key), seen.page
            rest.ok("POST", "/chats", said(long, "hi"))
            rest.ok("POST", "/chats", said(ANN, "hello"))
            await sign_in(page, base, key)
            prefix = "_".join(key.split("_")[:2])
            await expect(page.locator("header")).to_contain_text(f"Organization globex · key {prefix}")
            assert key not in await page.locator("body").inner_text()

            await open_contact(page, ANN)
            header = page.locator("header")
            short = await header.evaluate("node => node.getBoundingClientRect().height")
            await page.get_by_role("button", name="Back to contacts").click()
            await open_contact(page, long)
            scope = page.locator("#search-scope-name")
            await expect(scope).to_have_attribute("title", long)
            assert await scope.evaluate("node => node.scrollWidth > node.clientWidth")  # cut, with an ellipsis
            line = await scope.evaluate("node => parseFloat(getComputedStyle(node).lineHeight)")
            height = await page.locator("#search-scope-box").evaluate("node => node.getBoundingClientRect().height")
            assert height < 2 * line, (height, line)  # one line
            assert await header.evaluate("node => node.getBoundingClientRect().height") <= short + 2 * line
            heading = page.get_by_role("heading", name=long, level=1)
            await expect(heading).to_have_attribute("title", long)
            height = await heading.evaluate("node => node.getBoundingClientRect().height")
            size = await heading.evaluate("node => parseFloat(getComputedStyle(node).lineHeight)")
            assert height <= 2 * size + 1, (height, size)
            await expect(page.locator("#identifiers")).to_contain_text(long)  # whole where it is read
            assert await page.evaluate("document.documentElement.scrollWidth") <= 360
            await accessible(page, "a long identifier at 360 px")


async def test_contacts_and_the_search_scope_follow_what_happened_elsewhere(tmp_path: Path, browser: Browser) -> None:
    """A contact that becomes active while the list is paged shows at the top once its end is reached; a contact
    forgotten elsewhere is no longer offered as the search's scope."""
    db = str(tmp_path / "contacts.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        async with watched(browser) as seen:
            rest, page = Rest(base, key), seen.page
            for n in range(55):
                rest.ok("POST", "/chats", said(f"walk-in-{n:02d}", "hi"))
            await sign_in(page, base, key)
            contacts = page.locator("#contacts > li")
            await expect(contacts).to_have_count(50)
            rest.ok("POST", "/chats", said("walk-in-00", "I wrote again"))  # from the second page to the first
            await page.get_by_role("button", name="More contacts").click()
            await expect(contacts).to_have_count(55)
            await expect(contacts.first).to_have_text("walk-in-00")
            await expect(page.get_by_role("status")).to_contain_text(
                "1 contact(s) that became active meanwhile are at the top of the list"
            )

            await open_contact(page, "walk-in-07")
            await expect(page.locator("#live")).to_have_text(LIVE)
            await expect(page.get_by_label("only walk-in-07")).to_be_visible()
            rest.ok("DELETE", "/contacts/walk-in-07")
            await expect(page.locator("#problem")).to_contain_text("walk-in-07 is not a contact any more")
            await expect(page.locator("#search-scope-box")).to_be_hidden()
            await page.get_by_role("searchbox", name="Search", exact=True).fill("hi")
            await page.get_by_role("button", name="Search", exact=True).click()
            await expect(page.locator("#results-summary")).to_contain_text("in the organization")


async def test_an_outage_shows_a_banner_that_stays_in_sight(tmp_path: Path, browser: Browser) -> None:
    """While the contact's event stream is down a banner says so, with the server's 503 when it answered one,
    announced (role alert) and in sight wherever the page is scrolled; it goes when the stream is back."""
    db, port = str(tmp_path / "outage.db"), free_port()
    key = create_key(db, "acme", "support")
    unavailable = '{"error": "Service unavailable", "message": "the database did not answer within 5 s"}'
    banner = None
    async with watched(browser) as seen:
        page = seen.page
        with http_server(db, port=port) as base:
            rest = Rest(base, key)
            for minute in range(40):
                rest.ok("POST", "/chats", said(ANN, f"turn {minute}", f"2026-11-20T09:{minute:02d}:00Z"))
            await sign_in(page, base, key)
            refused = asyncio.Event()

            async def down(route: Route) -> None:  # the first listen meets a database that does not answer
                if refused.is_set():
                    await route.continue_()
                    return
                refused.set()
                await route.fulfill(status=503, body=unavailable, content_type="application/json")

            await page.route("**/events", down)
            await open_contact(page, ANN)
            banner = page.get_by_role("alert").filter(has_text="Offline")
            await expect(banner).to_contain_text(
                "the event stream answered 503 Service unavailable: the database did not answer within 5 s"
            )
            await expect(banner).to_be_hidden(timeout=10000)  # it listens again a second later
            await expect(page.locator("#live")).to_have_text(LIVE)
        # the server is gone
        await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        await expect(banner).to_contain_text("Offline: chatdock did not answer")
        await expect(banner).to_be_in_viewport()
        await accessible(page, "offline")
        with http_server(db, port=port):
            await expect(banner).to_be_hidden(timeout=20000)
            await expect(page.locator("#live")).to_have_text(LIVE)
        seen.errors = [error for error in seen.errors if "net::ERR_" not in error]


async def test_invisible_characters_are_shown(tmp_path: Path, browser: Browser) -> None:
    """A right-to-left override and a zero-width space show as their code points (the text is not what it looks
    like), in the timeline and in search results; an emoji's zero-width joiner keeps joining."""
    db = str(tmp_path / "invisible.db")
    key = create_key(db, "acme", "support")
    tricky = "open invoice\u202egnp.exe now, pay\u200bpal"
    with http_server(db) as base:
        async with watched(browser) as seen:
            rest, page = Rest(base, key), seen.page
            rest.ok("POST", "/chats", said(ANN, tricky))
            rest.ok("POST", "/chats", said(ANN, "coder \U0001f469\u200d\U0001f4bb here"))
            await sign_in(page, base, key)
            await open_contact(page, ANN)
            content = page.locator("#timeline .content").first
            await expect(content).to_have_text("open invoice⟨U+202E⟩gnp.exe now, pay⟨U+200B⟩pal")
            await expect(content.locator(".invisible")).to_have_count(2)
            await expect(page.locator("#timeline .content").last).to_have_text("coder \U0001f469\u200d\U0001f4bb here")
            await page.get_by_role("searchbox", name="Search", exact=True).fill("invoice")
            await page.get_by_role("button", name="Search", exact=True).click()
            await expect(page.locator("#hits .snippet")).to_contain_text("⟨U+202E⟩gnp.exe")
            await accessible(page, "invisible characters")
