"""The inspector (/ui) and the API docs (/docs) in a real browser: Debian's Chromium driven by Playwright, against
a real `chatdock serve --http` on 127.0.0.1. Each test fails on any request to another host, on a script error
or CSP refusal and on a dialog a script opens (tests/http/browser.py); each screen passes axe-core with nothing
serious or critical; the screenshots are docs/inspector.md's."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, Response, Route, expect

from tests.http.browser import NARROW, accessible, opened, q, screenshot, sign_in, watched
from tests.transports import Rest, create_key, free_port, http_server, run_cli

pytestmark = pytest.mark.process

ANN = "+31612345678"
WRITES = ("Delete message", "Forget contact", "Link identifier", "Unlink identifier", "Set chat status")


def seed(rest: Rest) -> dict[str, str]:
    """A contact with a morning on WhatsApp and SMS (times of the past, so the screenshots keep still) and a
    voice call posted as parts with timestamps; the ids of what a test needs."""
    said = [
        ("whatsapp", "user", "Hi, I ordered a kettle last week (order 1234).", "2026-11-20T08:58:00Z"),
        ("whatsapp", "assistant", "Thanks! Order 1234 shipped on Monday.", "2026-11-20T08:58:30Z"),
        ("sms", "user", "Where is my refund for the broken lid?", "2026-11-20T09:30:00Z"),
        ("sms", "assistant", "The refund was sent today; it takes 3 to 5 days.", "2026-11-20T09:31:00Z"),
    ]
    ids = {}
    for number, (channel, role, content, at) in enumerate(said):
        metadata = {"provider_message_id": f"wamid.{number}"} if channel == "whatsapp" else None
        body = {"contact_id": ANN, "channel": channel, "role": role, "content": content, "created_at": at}
        ids[content] = rest.ok("POST", "/chats", {**body, "metadata": metadata})["id"]
    chat = rest.ok("POST", f"/contacts/{q(ANN)}/chats", {"channel": "voice", "agent_id": "phone-bot"})
    parts = [
        {"type": "text", "text": "Hello, it's Ann again.", "start_timestamp": 0.4, "end_timestamp": 1.9},
        {"type": "text", "text": "Did the refund go out?", "start_timestamp": 2.1, "end_timestamp": 3.6},
    ]
    rest.ok("POST", f"/contacts/{q(ANN)}/chats/{chat['id']}/messages", {"message": parts})
    ids["chat"] = chat["id"]
    return ids


# how long the test holds a DELETE's answer for the event stream's refresh (a loaded machine is slow)
HELD = 10


async def timeline_texts(page: Page) -> list[str]:
    shown = page.locator("#timeline > li .content, #timeline > li .parts")
    return [text.strip() for text in await shown.all_inner_texts()]


async def test_sign_in_list_open_follow_live_search_delete_and_forget(db: str, browser: Browser) -> None:
    """The main flow, on each engine: what a support person does, screen by screen."""
    pictures = not db.startswith("postgresql")  # one set of screenshots (the SQLite run's)
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        async with watched(browser) as seen:
            rest, page = Rest(base, key), seen.page
            ids = seed(rest)

            await opened(page, base)
            await expect(page.get_by_label("API key")).to_be_focused()
            await accessible(page, "sign in")
            await screenshot(page, "sign-in", pictures)
            await sign_in(page, base, key)
            await expect(page.get_by_role("button", name=ANN)).to_be_visible()
            search = page.get_by_role("searchbox", name="Search", exact=True)
            await expect(search).to_be_visible()  # there from the first screen

            # a contact appended over REST shows in the list
            bob = {"contact_id": "bob@example.com", "channel": "email", "role": "user", "content": "hi"}
            rest.ok("POST", "/chats", bob)
            await page.get_by_role("button", name="Refresh contacts").click()
            await expect(page.get_by_role("button", name="bob@example.com")).to_be_visible()
            await accessible(page, "contacts")
            await screenshot(page, "contacts", pictures)

            # the timeline: oldest to newest, across channels, in the viewer's time zone, parts with their times
            await page.get_by_role("button", name=ANN).click()
            await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_visible()
            await expect(page.locator("#timeline > li")).to_have_count(5)
            texts = await timeline_texts(page)
            assert texts[0].startswith("Hi, I ordered a kettle") and texts[3].startswith("The refund was sent")
            assert "0:00.4\u20130:01.9" in texts[4] and "Did the refund go out?" in texts[4], texts[4]
            sms = page.locator("#timeline > li", has_text="Where is my refund")
            await expect(sms.locator("time")).to_have_text("20 Nov 2026, 18:30:00 GMT+9")  # 09:30 UTC in Tokyo
            await expect(sms.locator(".head")).to_contain_text("sms")
            await expect(page.locator("#chats")).to_contain_text("on voice with phone-bot")
            await expect(page.locator("#chats")).to_contain_text("RUNNING")
            await accessible(page, "contact")
            await screenshot(page, "contact", pictures)
            await page.evaluate("document.getElementById('timeline-title').scrollIntoView()")
            await screenshot(page, "timeline", pictures)
            first = page.locator("#timeline > li").first
            await first.get_by_text("Metadata", exact=True).click()
            await expect(first.locator("pre")).to_contain_text('"provider_message_id": "wamid.0"')
            await accessible(page, "timeline with metadata")

            # live: a message appended by someone else appears, no reload
            await expect(page.locator("#live")).to_have_text("Live: changes appear as they happen.")
            late = {"contact_id": ANN, "channel": "widget", "role": "user", "content": "Still there?"}
            rest.ok("POST", "/chats", late)
            await expect(page.locator("#timeline > li").last).to_contain_text("Still there?", timeout=2000)
            assert (await timeline_texts(page))[-1] == "Still there?"

            # search the organization, and follow a hit to its place in the timeline
            await page.get_by_role("searchbox", name="Search", exact=True).fill("refund")
            await page.get_by_role("button", name="Search", exact=True).click()
            hits = page.locator("#hits > li")
            await expect(hits).to_have_count(3)
            await expect(hits.first.locator("mark").first).to_have_text(re.compile("refund", re.I))
            await accessible(page, "search results")
            await screenshot(page, "search", pictures)
            await hits.filter(has_text="broken lid").click()
            found = page.locator(f"[id='m-{ids['Where is my refund for the broken lid?']}']")
            await expect(found).to_be_focused()
            await expect(found).to_have_class(re.compile("found"))

            # delete with confirmation: cancelling keeps it, confirming deletes it (also for GET /chats)
            await found.get_by_role("button", name="Delete message").click()
            dialog = page.get_by_role("alertdialog")
            await expect(dialog).to_be_visible()
            await expect(dialog).to_contain_text("broken lid")
            await accessible(page, "confirmation")
            await screenshot(page, "confirm", pictures)
            await dialog.get_by_role("button", name="Cancel").click()
            await expect(found).to_be_visible()
            await found.get_by_role("button", name="Delete message").click()
            await dialog.get_by_role("button", name="Delete message").click()
            await expect(found).to_have_count(0)
            listed = rest.ok("GET", "/chats", contact_id=ANN)["messages"]
            assert ids["Where is my refund for the broken lid?"] not in {m["id"] for m in listed}
            assert len(listed) == 5

            # forget the contact: gone from the list and from the API. Its event stream announces the erasure;
            # the DELETE's answer is held until the refresh that starts has read the contact's 404, the order
            # a busy server can give, and the page still says what was erased.
            contact_url = f"{base}/contacts/{q(ANN)}"
            refreshed = asyncio.Event()

            def noticed(response: Response) -> None:
                if response.url == contact_url and response.request.method == "GET" and response.status == 404:
                    refreshed.set()

            page.on("response", noticed)

            async def held(route: Route) -> None:
                if route.request.method != "DELETE":
                    await route.continue_()
                    return
                answer = await route.fetch()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(refreshed.wait(), HELD)
                await route.fulfill(response=answer)

            await page.route(lambda url: url == contact_url, held)
            await page.get_by_role("button", name="Forget contact").click()
            await dialog.get_by_role("button", name="Forget contact").click()
            forgot = f"Forgot {ANN}: 5 message(s), 1 chat(s)"  # after the hold, however long it was
            await expect(page.get_by_role("status")).to_contain_text(forgot, timeout=(HELD + 5) * 1000)
            assert refreshed.is_set(), "the event stream's refresh never read the forgotten contact"
            await expect(page.locator("#problem")).to_be_empty()  # no "not a contact any more"
            await expect(page.get_by_role("button", name="bob@example.com")).to_be_visible()
            await expect(page.get_by_role("button", name=ANN, exact=True)).to_have_count(0)
            await expect(hits).to_have_count(0)  # its search hits went with it
            assert rest("GET", f"/contacts/{q(ANN)}")[0] == 404

            # an identifier with a '/' (a web session's) opens, and is followed live, as any other
            web = {"contact_id": "session/4f2a", "channel": "widget", "role": "user", "content": "from a web tab"}
            rest.ok("POST", "/chats", web)
            await page.get_by_role("button", name="Refresh contacts").click()
            await page.get_by_role("button", name="session/4f2a").click()
            await expect(page.get_by_role("heading", name="session/4f2a", level=1)).to_be_visible()
            await expect(page.locator("#timeline > li")).to_have_count(1)
            rest.ok("POST", "/chats", {**web, "content": "still in the tab"})
            await expect(page.locator("#timeline > li").last).to_contain_text("still in the tab", timeout=2000)
            await expect(page.locator("#problem")).to_be_empty()
            assert not [url for url in seen.requested if key in url]  # the key never went into a URL


async def test_a_wrong_key_is_refused_and_signing_out_forgets_the_key(tmp_path: Path, browser: Browser) -> None:
    db = str(tmp_path / "keys.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        async with watched(browser) as seen:
            page = seen.page
            await opened(page, base)
            await page.get_by_label("API key").fill("cdk_wrong_0000000000000000000000")
            await page.get_by_label("API key").press("Enter")  # the keyboard signs in too
            refusal = page.locator("#sign-in-problem")
            await expect(refusal).to_contain_text("That key was refused")
            await expect(refusal).to_contain_text("unknown or revoked")
            await expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
            await accessible(page, "refused key")
            await screenshot(page, "refused")

            await sign_in(page, base, key)
            assert await page.evaluate("localStorage.length + sessionStorage.length") == 0
            assert await page.context.cookies() == []
            await page.get_by_role("button", name="Sign out").click()
            await expect(page.get_by_label("API key")).to_be_visible()
            await expect(page.get_by_label("API key")).to_have_value("")
            await expect(page.get_by_role("status")).to_contain_text("Signed out")
            assert not [url for url in seen.requested if key in url]


async def test_hostile_text_stays_text_and_runs_nothing(tmp_path: Path, browser: Browser) -> None:
    db = str(tmp_path / "hostile.db")
    key = create_key(db, "acme", "support")
    hostile = '[URGENT] \\ <img src=x onerror="window.pwned=1;alert(1)"> refund <script>window.pwned=2</script>'
    contact = "<img src=y onerror=alert(3)>"
    with http_server(db) as base:
        async with watched(browser) as seen:
            rest, page = Rest(base, key), seen.page
            metadata = {"note": "<svg onload=alert(2)>"}
            body = {"contact_id": contact, "channel": "sms", "role": "user", "content": hostile, "metadata": metadata}
            rest.ok("POST", "/chats", body)
            await sign_in(page, base, key)
            await page.get_by_role("button", name=contact).click()
            await expect(page.locator("#timeline .content")).to_have_text(hostile)
            await page.get_by_text("Metadata", exact=True).click()
            await expect(page.locator("#timeline pre")).to_contain_text("<svg onload=alert(2)>")
            await page.get_by_role("searchbox", name="Search", exact=True).fill("refund")
            await page.get_by_role("button", name="Search", exact=True).click()
            await expect(page.locator("#hits mark")).to_have_text("refund")  # the text's own [URGENT] is no mark
            await expect(page.locator("#hits")).to_contain_text("[URGENT] \\ <img src=x")
            assert await page.locator("main img, main script, main svg").count() == 0
            assert await page.evaluate("window.pwned") is None
            assert not [url for url in seen.requested if url.endswith("/x")]
            for dots in (".", ".."):  # a browser makes such a path segment a folder step: refused, not misread
                rest.ok("POST", "/chats", {**body, "contact_id": dots, "content": "dots"})
            await page.get_by_role("button", name="Refresh contacts").click()
            for dots in (".", ".."):
                await page.get_by_role("button", name=dots, exact=True).click()
                await expect(page.locator("#problem")).to_contain_text(f'a browser cannot send the identifier "{dots}"')
            assert not [url for url in seen.requested if url in (base + "/", base + "/contacts/")]  # what it was


async def test_keyboard_narrow_window_links_statuses_and_export(tmp_path: Path, browser: Browser) -> None:
    """At 400 pixels wide and with the keyboard: link and unlink an identifier, set a chat's status, export
    the contact (the same records as `chatdock export`)."""
    db = str(tmp_path / "narrow.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        async with watched(browser, NARROW) as seen:
            rest, page = Rest(base, key), seen.page
            ids = seed(rest)
            await sign_in(page, base, key)
            await page.get_by_role("button", name=ANN).focus()
            await page.keyboard.press("Enter")
            await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_focused()
            assert await page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
            await accessible(page, "timeline at 400 px")
            await screenshot(page, "narrow")

            # Escape cancels a confirmation
            await page.get_by_role("button", name="Delete message").first.focus()
            await page.keyboard.press("Enter")
            dialog = page.get_by_role("alertdialog")
            await expect(dialog).to_be_visible()
            await expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
            await page.keyboard.press("Escape")
            await expect(dialog).to_be_hidden()
            await expect(page.locator("#timeline > li")).to_have_count(5)

            await page.get_by_label("Identifier to link").fill("ann@example.com")
            await page.get_by_label("Identifier to link").press("Enter")
            await dialog.get_by_role("button", name="Link identifier").click()
            await expect(page.locator("#identifiers")).to_contain_text("ann@example.com")
            assert rest.ok("GET", "/contacts/ann%40example.com")["contact_id"] == ANN
            await page.get_by_role("button", name="Unlink identifier").click()
            await dialog.get_by_role("button", name="Unlink identifier").click()
            await expect(page.locator("#identifiers")).not_to_contain_text("ann@example.com")
            assert rest("GET", "/contacts/ann%40example.com")[0] == 404

            await page.get_by_label(f"New status of chat …{ids['chat'][-8:]}").select_option("COMPLETED")
            await page.get_by_role("button", name="Set chat status").click()
            await dialog.get_by_role("button", name="Set chat status").click()
            await expect(page.locator("#chats strong")).to_have_text("COMPLETED")
            assert rest.ok("GET", f"/contacts/{q(ANN)}/chats")["chats"][0]["status"] == "COMPLETED"

            async with page.expect_download() as download:
                await page.get_by_role("button", name="Export JSON Lines").click()
            exported = Path(await (await download.value).path()).read_text()
            cli = run_cli("export", "--db", db, "--org", "acme", "--contact", ANN, "--quiet")
            assert cli.returncode == 0, cli.stderr
            assert exported == cli.stdout
            assert [json.loads(line)["kind"] for line in exported.splitlines()] == ["chat"] + ["message"] * 5


async def test_a_support_person_keeps_their_place_and_is_told_what_happened_elsewhere(
    tmp_path: Path, browser: Browser
) -> None:
    """At 400 pixels wide, what a review of the inspector found: a delete keeps the view where it was (it jumped
    to the top) and focuses the next message; a message already deleted elsewhere is said so in plain words and
    leaves the timeline; a merge elsewhere is said, not a silent switch of contact; right-to-left text is laid
    out by its own direction; a refused search does not stand above the last one's results; a long identifier
    does not make the page scroll sideways."""
    db = str(tmp_path / "place.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        async with watched(browser, NARROW) as seen:
            rest, page = Rest(base, key), seen.page
            sent = []
            for minute in range(60):
                content = "שלום, איפה ההזמנה שלי? מספר 5521." if minute == 59 else f"turn {minute} about the kettle"
                body = {"contact_id": ANN, "channel": "sms", "role": "user", "content": content,
                        "created_at": f"2026-11-20T09:{minute:02d}:00Z"}  # fmt: skip
                sent.append(rest.ok("POST", "/chats", body)["id"])
            await sign_in(page, base, key)
            await page.get_by_role("button", name=ANN).click()
            await expect(page.locator("#timeline > li")).to_have_count(50)
            rtl = page.locator("#timeline .content", has_text="שלום")
            await expect(rtl).to_have_attribute("dir", "auto")
            await page.get_by_role("button", name="Load older messages").click()
            await expect(page.locator("#timeline > li")).to_have_count(60)

            # a delete in the middle of the timeline: the view stays, the next message has the focus
            middle, after = page.locator(f"[id='m-{sent[30]}']"), page.locator(f"[id='m-{sent[31]}']")
            await middle.scroll_into_view_if_needed()
            scrolled = await page.evaluate("window.scrollY")
            assert scrolled > 2000, scrolled
            await middle.get_by_role("button", name="Delete message").click()
            await page.get_by_role("alertdialog").get_by_role("button", name="Delete message").click()
            await expect(middle).to_have_count(0)
            await expect(after).to_be_focused()
            assert abs(await page.evaluate("window.scrollY") - scrolled) < 400  # the next message took its place

            # a message deleted elsewhere leaves the timeline live, also one far back; one deleted elsewhere while
            # its confirmation is open is said so once confirmed
            rest.ok("DELETE", f"/chats/{sent[3]}")
            await expect(page.locator(f"[id='m-{sent[3]}']")).to_have_count(0)
            elsewhere = page.locator(f"[id='m-{sent[2]}']")
            await elsewhere.get_by_role("button", name="Delete message").click()
            rest.ok("DELETE", f"/chats/{sent[2]}")
            await expect(elsewhere).to_have_count(0)
            await page.get_by_role("alertdialog").get_by_role("button", name="Delete message").click()
            await expect(page.get_by_role("status")).to_have_text("That message was already deleted elsewhere.")
            await expect(elsewhere).to_have_count(0)
            await expect(page.locator("#problem")).to_be_empty()

            # a refused search does not stand above the results of the one before
            await page.get_by_role("searchbox", name="Search", exact=True).fill("kettle")
            await page.get_by_role("button", name="Search", exact=True).click()
            await expect(page.locator("#results")).to_be_visible()
            await page.get_by_role("searchbox", name="Search", exact=True).fill("(((")
            await page.get_by_role("button", name="Search", exact=True).click()
            await expect(page.locator("#problem")).not_to_be_empty()
            await expect(page.locator("#results")).to_be_hidden()

            # the contact is linked into another elsewhere: the page says so as it follows
            await page.get_by_label("Open a contact by any of its identifiers").fill(ANN)
            await page.get_by_label("Open a contact by any of its identifiers").press("Enter")
            await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_visible()
            await expect(page.get_by_label("Open a contact by any of its identifiers")).to_have_value("")
            await expect(page.locator("#live")).to_have_text("Live: changes appear as they happen.")
            rest.ok(
                "POST", "/chats", {"contact_id": "ann@example.com", "channel": "email", "role": "user", "content": "x"}
            )
            rest.ok("POST", "/contacts/ann%40example.com/aliases", {"identifier": ANN})
            await expect(page.get_by_role("heading", name="ann@example.com", level=1)).to_be_visible()
            await expect(page.get_by_role("status")).to_have_text(
                f"{ANN} was linked into ann@example.com elsewhere: this is that contact's timeline now."
            )

            # a long identifier with nowhere to break, in the heading and in the search's scope
            long = "session/" + "f3a9" * 30
            rest.ok("POST", "/chats", {"contact_id": long, "channel": "widget", "role": "user", "content": "hi"})
            await page.get_by_role("button", name="Back to contacts").click()
            await page.get_by_label("Open a contact by any of its identifiers").fill(long)
            await page.get_by_label("Open a contact by any of its identifiers").press("Enter")
            await expect(page.locator("#search-scope-name")).to_have_text(long)
            assert await page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]


async def test_a_server_started_again_read_only_takes_the_writes_away(tmp_path: Path, browser: Browser) -> None:
    """The page read its settings once: after the server was restarted with --read-only, its write buttons
    stayed, and a delete's 405 was an error no one caught (nothing said on the page). It says the server is
    read-only now and offers no write."""
    db, port = str(tmp_path / "restarted.db"), free_port()
    key = create_key(db, "acme", "support")
    async with watched(browser) as seen:
        page = seen.page
        with http_server(db, port=port) as base:
            seed(Rest(base, key))
            await sign_in(page, base, key)
            await page.get_by_role("button", name=ANN).click()
            timeline = page.locator("#timeline > li")
            await expect(timeline.first).to_be_visible()
            shown = await timeline.count()
        with http_server(db, "--read-only", port=port):
            await timeline.first.get_by_role("button", name="Delete message").click()
            await page.get_by_role("alertdialog").get_by_role("button", name="Delete message").click()
            await expect(page.locator("#problem")).to_contain_text("The server is read-only now")
            for name in WRITES:
                await expect(page.get_by_role("button", name=name)).to_have_count(0)
            await expect(timeline).to_have_count(shown)  # nothing was deleted, and the timeline is whole
        # the page's event stream could not reach the server while it was being started again
        seen.errors = [error for error in seen.errors if "ERR_CONNECTION_REFUSED" not in error]


async def test_read_only_offers_no_write_and_pages_back(tmp_path: Path, browser: Browser) -> None:
    """With --read-only no write control exists; the timeline pages backwards (50 at a time), also to reach
    a search hit further back."""
    db = str(tmp_path / "read-only.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        rest = Rest(base, key)
        early = {"contact_id": ANN, "channel": "sms", "role": "user"}
        rest.ok("POST", "/chats", {**early, "content": "Welcome aboard!", "created_at": "2026-11-01T08:00:00Z"})
        for n in range(54):
            rest.ok("POST", "/chats", {**early, "content": f"Old note {n}", "created_at": f"2026-11-02T08:{n:02d}:00Z"})
        seed(rest)  # 60 messages in all
        for n in range(55):  # more contacts than a page of the list, all active since
            rest.ok(
                "POST",
                "/chats",
                {"contact_id": f"walk-in-{n:02d}", "channel": "widget", "role": "user", "content": "hi"},
            )
    with http_server(db, "--read-only") as base:
        async with watched(browser) as seen:
            page = seen.page
            await sign_in(page, base, key)
            contacts = page.locator("#contacts > li")
            await expect(contacts).to_have_count(50)
            await expect(contacts.first.get_by_role("button")).to_have_text("walk-in-54")
            await expect(contacts.first).to_contain_text("active ")
            assert await page.get_by_role("button", name=ANN).count() == 0  # past the first page
            await page.get_by_role("button", name="More contacts").click()
            await expect(contacts).to_have_count(56)
            await expect(page.get_by_role("button", name="More contacts")).to_be_hidden()
            await expect(contacts.nth(50).get_by_role("button")).to_be_focused()
            await expect(page.get_by_role("status")).to_contain_text("6 more contact(s); that is all of them")
            await page.get_by_role("button", name=ANN).click()
            timeline = page.locator("#timeline > li")
            await expect(timeline).to_have_count(50)
            for name in WRITES:
                assert await page.get_by_role("button", name=name).count() == 0, name
            assert await page.locator("#link-form, #forget, select").count() == 0
            await expect(page.get_by_role("button", name="Export JSON Lines")).to_be_visible()  # a read
            await accessible(page, "read-only timeline")
            await screenshot(page, "read-only")

            await page.get_by_role("button", name="Load older messages").click()
            await expect(timeline).to_have_count(60)
            await expect(timeline.first).to_contain_text("Welcome aboard!")
            await expect(page.get_by_role("button", name="Load older messages")).to_be_hidden()
            await expect(timeline.nth(9)).to_be_focused()  # the newest loaded: the focus was left on a hidden button
            await expect(page.get_by_role("status")).to_contain_text("10 older message(s) loaded")

            await page.get_by_role("button", name="Back to contacts").click()
            await page.get_by_role("searchbox", name="Search", exact=True).fill("aboard")
            await page.get_by_role("button", name="Search", exact=True).click()
            await page.locator("#hits > li").first.click()
            welcome = page.locator("#timeline > li", has_text="Welcome aboard!")
            await expect(welcome).to_be_focused()
            await expect(timeline).to_have_count(60)


async def test_the_api_docs_show_the_schemas_and_try_a_call(tmp_path: Path, browser: Browser) -> None:
    db = str(tmp_path / "docs.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        async with watched(browser) as seen:
            page = seen.page
            await page.goto(base + "/docs")
            append = page.locator(".opblock-post", has=page.locator('[data-path="/chats"]'))
            await append.locator(".opblock-summary").first.click()
            body = append.locator(".opblock-section-request-body")
            for name in ("contact_id", "channel", "role", "content", "metadata", "created_at"):
                await expect(body.get_by_text(name, exact=True).first).to_be_visible()
            await expect(append.locator(".responses-wrapper")).to_contain_text("AppendedMessage")
            await screenshot(page, "docs")

            # Authorize with the key (the `bearer` scheme of the document), then try POST /chats
            await page.get_by_role("button", name=re.compile("^Authorize")).first.click()
            await page.get_by_label("auth-bearer-value").fill(key)
            buttons = page.locator(".auth-btn-wrapper")
            await buttons.get_by_role("button", name="Apply credentials").click()
            await buttons.get_by_role("button", name="Close").click()
            await append.get_by_role("button", name="Try it out").click()
            message = {"contact_id": "+31611111111", "channel": "sms", "role": "user", "content": "tried from /docs"}
            await append.locator("textarea.body-param__text").fill(json.dumps(message))
            await append.get_by_role("button", name="Execute").click()
            await expect(append.locator(".live-responses-table .response .response-col_status")).to_have_text("201")
            await expect(append.locator(".live-responses-table")).to_contain_text("tried from /docs")
            listed = Rest(base, key).ok("GET", "/chats", contact_id="+31611111111")["messages"]
            assert [m["content"] for m in listed] == ["tried from /docs"]


def test_the_pages_ship_with_chatdock_under_a_strict_policy(tmp_path: Path) -> None:
    """No key is needed to load the pages; each answer forbids inline script and every other origin; a
    browser that has a file gets 304; Swagger UI's license ships beside it."""
    db = str(tmp_path / "pages.db")
    create_key(db, "acme", "support")
    with http_server(db) as base:

        def get(path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
            request = urllib.request.Request(base + path, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
            except urllib.error.HTTPError as failed:
                return failed.code, {k.lower(): v for k, v in failed.headers.items()}, failed.read()

        for path in ("/ui", "/ui/inspector.js", "/ui/inspector.css", "/docs", "/docs/docs.js", "/docs/LICENSE"):
            status, headers, body = get(path)
            assert status == 200 and body, path
            policy = headers["content-security-policy"]
            assert "script-src 'self';" in policy and "default-src 'none'" in policy, (path, policy)
            assert "unsafe" not in policy and "http" not in policy and "frame-ancestors 'none'" in policy
            assert headers["x-content-type-options"] == "nosniff"
            status, _, _ = get(path, **{"If-None-Match": headers["etag"]})
            assert status == 304, path
        assert get("/ui")[1]["content-security-policy"] == (
            "default-src 'none'; script-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'; style-src 'self'; img-src 'self'"
        )
        assert b"Apache License" in get("/docs/LICENSE")[2]
        status, headers, body = get("/docs/swagger-ui-bundle.js", **{"Accept-Encoding": "gzip"})
        assert headers["content-encoding"] == "gzip" and len(gzip.decompress(body)) > 1_000_000 > len(body)
        for refusing in ("gzip;q=0, identity", "GZIP; q=0.0", "br, *;q=0", "identity"):  # gzip weighed 0, or not named
            status, headers, body = get("/docs/swagger-ui-bundle.js", **{"Accept-Encoding": refusing})
            assert "content-encoding" not in headers and b"SwaggerUIBundle" in body, refusing
        for taking in ("deflate, gzip;q=0.5", "*", "br;q=1, *;q=0.1", "x-gzip"):
            assert get("/docs/swagger-ui-bundle.js", **{"Accept-Encoding": taking})[1]["content-encoding"] == "gzip"
        assert json.loads(get("/ui/config.json")[2]) == {"read_only": False}
        status, _, body = get("/ui/nothing.js")
        assert status == 404 and json.loads(body)["error"] == "Not found"
        page = get("/ui")[2].decode()
        assert "<script>" not in page and "style=" not in page and "http" not in page  # nothing inline, nothing remote
