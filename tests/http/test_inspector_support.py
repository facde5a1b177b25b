"""The inspector (/ui) as a support person relies on it, in Debian's Chromium against a real `chatdock serve
--http` (tests/http/browser.py): a timeline that never skips a message, whatever arrives while it is read;
chats told apart; whose key it is; contacts and a search scope that follow what happened elsewhere; an outage
that cannot be missed; text that is not what it looks like; a long identifier on a phone-sized window."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, Route, expect

from tests.http.browser import Watched, accessible, q, sign_in, watched
from tests.transports import Rest, create_key, free_port, http_server, run_cli

pytestmark = pytest.mark.process

ANN = "+31612345678"
LIVE = "Live: changes appear as they happen."
# how long (ms) a page of a thousand messages may take to follow a change on a loaded machine (two CPUs, four
# browsers): waited for, never asserted
SLOW = 30000


async def open_contact(page: Page, identifier: str) -> None:
    await page.get_by_label("Open a contact by any of its identifiers").fill(identifier)
    await page.get_by_label("Open a contact by any of its identifiers").press("Enter")
    await expect(page.get_by_role("heading", name=identifier, level=1)).to_be_visible()


async def shown(page: Page) -> list[str]:
    """The contents of the timeline's messages, top to bottom."""
    return [text.strip() for text in await page.locator("#timeline > li .content").all_inner_texts()]


def stored(rest: Rest, contact: str) -> list[str]:
    """The contact's messages as the API lists them, oldest first."""
    return [message["content"] for message in stored_messages(rest, contact)]


def stored_messages(rest: Rest, contact: str) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    cursor = None
    while True:
        listed = rest.ok("GET", "/chats", contact_id=contact, limit=200, **({"cursor": cursor} if cursor else {}))
        messages += listed["messages"]
        cursor = listed["next_cursor"]
        if not cursor:
            return messages[::-1]


def said(contact: str, content: str, at: str | None = None) -> dict[str, str]:
    return {"contact_id": contact, "channel": "sms", "role": "user", "content": content} | (
        {"created_at": at} if at else {}
    )


async def burst_while_an_older_page_loads(page: Page, rest: Rest, total: int) -> None:
    """The next older page is held on its way while 60 messages arrive and the page hears of them; then it goes
    on: the timeline is the server's whole list of the contact (`total` messages), with no gap."""
    older = page.get_by_role("button", name="Load older messages")
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
    await expect(page.locator("#contact-summary")).to_contain_text(f"{total} messages", timeout=SLOW)
    await page.wait_for_timeout(1000)  # the refresh that the burst started has had its turn
    release.set()
    await clicked
    timeline = page.locator("#timeline > li")
    await expect(timeline).to_have_count(total, timeout=SLOW)
    await expect(timeline.last).to_contain_text("burst 59", timeout=SLOW)
    assert await shown(page) == stored(rest, ANN)
    await expect(older).to_be_hidden(timeout=SLOW)


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

            await burst_while_an_older_page_loads(page, rest, 180)


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


async def test_the_address_links_to_a_contact_and_a_message_and_back_goes_back(
    tmp_path: Path, browser: Browser
) -> None:
    """A support person shares where they are: the address names the open contact (and a search hit's
    message), never the key; a link followed in a new tab opens there once signed in, a message further back
    than the first page included, an alias by its contact's id; Back and Forward go between the screens."""
    db = str(tmp_path / "links.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        rest = Rest(base, key)
        first = rest.ok("POST", "/chats", said(ANN, "the very first message"))["id"]
        for n in range(80):  # the first message is further back than a page of the timeline
            rest.ok("POST", "/chats", said(ANN, f"later {n}"))
        rest.ok("POST", f"/contacts/{q(ANN)}/aliases", {"identifier": "ann@example.com"})
        async with watched(browser) as seen:
            page = seen.page
            await sign_in(page, base, key)
            await open_contact(page, ANN)
            assert page.url == f"{base}/ui#contact=%2B31612345678"
            await page.go_back()
            await expect(page.get_by_role("heading", name="Contacts", level=1)).to_be_visible()
            assert page.url == f"{base}/ui"
            await page.go_forward()
            await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_visible()
            await page.get_by_role("searchbox").fill("first")
            await page.get_by_role("searchbox").press("Enter")
            await page.get_by_role("button", name=re.compile("the very first message")).click()
            await expect(page.locator(f"#m-{first}")).to_be_focused(timeout=SLOW)
            assert page.url == f"{base}/ui#contact=%2B31612345678&message={first}"
            assert key not in page.url
        async with watched(browser) as fresh:  # the link, followed in a new tab: typed, with a plain "+"
            page = fresh.page
            await page.goto(f"{base}/ui#contact=+31612345678&message={first}")
            await page.wait_for_selector("body[data-ready]")
            await page.get_by_label("API key").fill(key)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_visible()
            await expect(page.locator(f"#m-{first}")).to_be_focused(timeout=SLOW)
            await page.evaluate("location.hash = '#contact=ann%40example.com'")  # an alias: its contact, by its id
            await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_visible()
            await expect(page).to_have_url(f"{base}/ui#contact=%2B31612345678")
            await page.evaluate("location.hash = '#contact=nobody'")
            await expect(page.locator("#problem")).to_contain_text("nobody")
            # the contact shown stays, live, and the address names it again (it showed Ann under "nobody", deaf)
            await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_visible()
            await expect(page).to_have_url(f"{base}/ui#contact=%2B31612345678")
            rest.ok("POST", "/chats", said(ANN, "written after the refused link"))
            await expect(page.locator("#timeline")).to_contain_text("written after the refused link", timeout=SLOW)
            await expect(page.locator("#problem")).to_contain_text("nobody")  # still said after the step back
            # the refused link is not a step behind Ann's: Back goes to the step before (it went to Ann again)
            await page.go_back()
            await expect(page).to_have_url(f"{base}/ui#contact=%2B31612345678&message={first}")
            await page.get_by_role("button", name="Sign out").click()
            await expect(page).to_have_url(f"{base}/ui")  # whose contact was open goes with the key


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
            await expect(contacts.first.get_by_role("button")).to_have_text("walk-in-00")
            await expect(contacts.first.locator("time")).to_have_attribute(
                "datetime", rest.ok("GET", "/contacts")["contacts"][0]["last_active_at"]
            )
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


LONG_AGO = datetime(2026, 1, 5, 9, tzinfo=UTC)


def imported(db: str, contact: str, count: int, needle: int) -> None:
    """`count` messages of `contact` a second apart from LONG_AGO (`message N`), written by `chatdock import`
    (quicker than as many requests); the one at `needle` reads "needle first", for a search to find."""
    path = Path(db).with_suffix(".jsonl")
    lines = []
    for n in range(count):
        content = "needle first" if n == needle else f"message {n}"
        lines.append(json.dumps(said(contact, content, (LONG_AGO + timedelta(seconds=n)).isoformat())))
    path.write_text("\n".join(lines) + "\n")
    done = run_cli("import", "--db", db, "--org", "acme", str(path))
    assert done.returncode == 0, done.stderr


async def reveal_needle(page: Page, base: str, key: str) -> None:
    """Sign in and open the search hit far back: the inspector pages back to it, loading all in between."""
    await sign_in(page, base, key)
    await page.get_by_role("searchbox", name="Search", exact=True).fill("needle")
    await page.get_by_role("button", name="Search", exact=True).click()
    await page.locator("#hits > li").first.get_by_role("button").click()
    await expect(page.locator("#timeline > li.found")).to_contain_text("needle first", timeout=SLOW)
    await expect(page.locator("#live")).to_have_text(LIVE, timeout=SLOW)


@contextlib.asynccontextmanager
async def a_long_range_loaded(tmp_path: Path, browser: Browser) -> AsyncIterator[tuple[Rest, Watched]]:
    """A served contact of 1,100 messages, the inspector signed in with 1,050 of them loaded (a search hit far
    back): the REST client and the watched page."""
    db = str(tmp_path / "long.db")
    key = create_key(db, "acme", "support")
    imported(db, ANN, 1100, needle=100)
    with http_server(db) as base:
        async with watched(browser) as seen:
            await reveal_needle(seen.page, base, key)
            await expect(seen.page.locator("#timeline > li")).to_have_count(1050, timeout=SLOW)
            yield Rest(base, key), seen


def timeline_reads(requested: list[str]) -> int:
    """How many of the page's requests read the timeline (GET /chats)."""
    return sum(urllib.parse.urlsplit(url).path == "/chats" for url in requested)


async def test_a_long_loaded_range_costs_a_short_read_per_change(tmp_path: Path, browser: Browser) -> None:
    """With 1,050 messages loaded (a search hit far back), a new message costs a read of the newest messages
    (at most two GET /chats), not of the whole range; many messages arriving while an older page loads still
    leave no gap, and the timeline stays exactly the server's list."""
    async with a_long_range_loaded(tmp_path, browser) as (rest, seen):
        page = seen.page
        timeline = page.locator("#timeline > li")
        await page.wait_for_timeout(500)  # the read for the stream's first `ready` has had its turn

        first = timeline_reads(seen.requested)
        for n in range(5):
            before = timeline_reads(seen.requested)
            rest.ok("POST", "/chats", said(ANN, f"turn {n}"))
            await expect(timeline.last).to_contain_text(f"turn {n}", timeout=SLOW)
            assert timeline_reads(seen.requested) - before <= 2, seen.requested[-10:]
        await page.wait_for_timeout(500)  # nothing more is read for them afterwards
        assert timeline_reads(seen.requested) - first <= 2 * 5
        await expect(timeline).to_have_count(1055, timeout=SLOW)
        assert await shown(page) == stored(rest, ANN)[-1055:]
        await expect(page.locator("#further")).to_be_empty(timeout=SLOW)

        await burst_while_an_older_page_loads(page, rest, 1165)


async def test_a_change_far_back_in_a_long_range_is_noted_and_reload_shows_it(tmp_path: Path, browser: Browser) -> None:
    """With 1,050 messages loaded, a late-dated message and a delete far back, out of reach of the read of the
    newest messages, are not left as a silent gap: an announced note counts them, new messages keep showing
    live, and "Reload timeline" reads the loaded range again and shows both in their place."""
    async with a_long_range_loaded(tmp_path, browser) as (rest, seen):
        page = seen.page
        timeline = page.locator("#timeline > li")

        late = (LONG_AGO + timedelta(seconds=500.5)).isoformat()
        rest.ok("POST", "/chats", said(ANN, "late webhook", late))
        note = page.get_by_role("status").filter(has_text="changed further back")
        await expect(note).to_have_text(re.compile(r"^1 message changed further back in the timeline"), timeout=SLOW)
        reload = page.get_by_role("button", name="Reload timeline")
        await expect(reload).to_be_visible(timeout=SLOW)
        await accessible(page, "a change further back")

        gone = next(m for m in stored_messages(rest, ANN) if m["content"] == "message 700")
        rest.ok("DELETE", f"/chats/{gone['id']}")
        await expect(note).to_have_text(re.compile(r"^2 messages changed further back in the timeline"), timeout=SLOW)
        rest.ok("POST", "/chats", said(ANN, "still live"))
        await expect(timeline.last).to_contain_text("still live", timeout=SLOW)
        await expect(note).to_have_text(re.compile(r"^2 messages"), timeout=SLOW)

        await reload.click()
        await expect(page.locator("#timeline > li", has_text="late webhook")).to_be_visible(timeout=SLOW)
        await expect(page.locator("#further")).to_be_empty(timeout=SLOW)
        await expect(reload).to_be_hidden(timeout=SLOW)
        await expect(page.locator("#status")).to_contain_text("The timeline was read again", timeout=SLOW)
        await expect(page.get_by_role("heading", name="Timeline")).to_be_focused(timeout=SLOW)
        texts = await shown(page)
        assert texts == stored(rest, ANN)[-len(texts) :]
        at = texts.index("late webhook")
        assert texts[at - 1 : at + 2] == ["message 500", "late webhook", "message 501"]
        assert "message 700" not in texts and "message 699" in texts

        # a delete made here, far back, is no change the page missed: no note
        await timeline.filter(has_text="message 699").get_by_role("button", name="Delete message").click()
        await page.get_by_role("alertdialog").get_by_role("button", name="Delete message").click()
        await expect(page.locator("#status")).to_have_text("The message was deleted.", timeout=SLOW)
        await expect(page.locator("#contact-summary")).to_contain_text("1100 messages", timeout=SLOW)
        await page.wait_for_timeout(1000)  # the read for the delete's event has had its turn
        await expect(page.locator("#further")).to_be_empty()
        assert "message 699" not in await shown(page)
