"""The inspector (/ui) as a support person reads with it, in Debian's Chromium against a real `chatdock serve
--http` (tests/http/browser.py): a search is a step in the address (Back returns to its results, a reload shows
them again); a call's times carry over the minute; attachments are named; a long message shows its start; an
identifier not found says how identifiers are matched, and one too long is refused, not cut."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from tests.http.browser import accessible, q, sign_in, watched
from tests.transports import Rest, create_key, http_server

pytestmark = pytest.mark.process

ANN = "+31612345678"
BOB = "+31687654321"


def said(contact: str, content: str, **more: object) -> dict[str, object]:
    return {"contact_id": contact, "channel": "whatsapp", "role": "user", "content": content, **more}


async def test_a_search_is_a_step_back_returns_to_and_a_reload_shows_again(tmp_path: Path, browser: Browser) -> None:
    """On Ann's timeline a support person searches: the address names the search (it kept naming Ann); Back from a
    hit returns to the results; Back again to Ann; a reload (signed in again) shows the results; a search narrowed
    to Ann says so in the address, and going to the contacts takes the results away."""
    db = str(tmp_path / "search.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        rest = Rest(base, key)
        rest.ok("POST", "/chats", said(ANN, "my parcel never came"))
        bob = rest.ok("POST", "/chats", said(BOB, "the parcel is damaged"))["id"]
        async with watched(browser) as seen:
            page = seen.page
            await sign_in(page, base, key)
            await page.get_by_label("Open a contact by any of its identifiers").fill(ANN)
            await page.get_by_label("Open a contact by any of its identifiers").press("Enter")
            await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_visible()
            await page.get_by_role("searchbox").fill("parcel")
            await page.get_by_role("searchbox").press("Enter")
            summary = page.locator("#results-summary")
            await expect(summary).to_have_text("2 messages found for “parcel” in the organization.")
            await expect(page).to_have_url(f"{base}/ui#q=parcel")
            await page.get_by_role("button", name=re.compile("the parcel is damaged")).click()
            await expect(page.locator(f"#m-{bob}")).to_be_focused()
            await page.go_back()
            await expect(summary).to_have_text("2 messages found for “parcel” in the organization.")
            await expect(page.get_by_role("searchbox")).to_have_value("parcel")
            await page.go_back()
            await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_visible()
            await page.go_forward()
            await expect(summary).to_be_visible()
            await page.reload()
            await page.wait_for_selector("body[data-ready]")
            await page.get_by_label("API key").fill(key)
            await page.get_by_role("button", name="Sign in").click()
            await expect(summary).to_have_text("2 messages found for “parcel” in the organization.")
            # narrowed to the last contact opened (Ann): named in the address
            await page.get_by_label("Open a contact by any of its identifiers").fill(ANN)
            await page.get_by_label("Open a contact by any of its identifiers").press("Enter")
            await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_visible()
            await page.get_by_role("searchbox").fill("parcel")
            await page.get_by_role("checkbox", name=f"only {ANN}").check()
            await page.get_by_role("button", name="Search", exact=True).click()
            await expect(summary).to_have_text(f"1 message found for “parcel” in {ANN}'s messages.")
            await expect(page).to_have_url(f"{base}/ui#q=parcel&in={q(ANN)}")
            await page.go_back()
            await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_visible()
            await page.go_back()
            await expect(summary).to_have_text("2 messages found for “parcel” in the organization.")
            await expect(page.get_by_role("checkbox", name=f"only {ANN}")).not_to_be_checked()
            await page.get_by_role("button", name="Refresh contacts").focus()
            await page.evaluate(
                "history.pushState(null, '', location.pathname); dispatchEvent(new HashChangeEvent('hashchange'))"
            )
            await expect(page.locator("#results")).to_be_hidden()
            await expect(page).to_have_title("Contacts · chatdock inspector")  # not the search's any more


async def test_times_attachments_and_a_long_message_read_well(tmp_path: Path, browser: Browser) -> None:
    """A call's part at 59.96 s reads 1:00.0 (it read 0:60.0), one past the hour 1:00:00.0; a photo's message
    names its attachment under its text; a 20,000-character message shows its start and a button for the rest,
    and a search hit inside its rest opens it whole."""
    db = str(tmp_path / "reading.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        rest = Rest(base, key)
        chat = rest.ok("POST", f"/contacts/{q(ANN)}/chats", {"channel": "voice"})
        parts = [
            {"type": "text", "text": "Still there?", "start_timestamp": 59.96, "end_timestamp": 119.97},
            {"type": "text", "text": "Yes.", "start_timestamp": 3599.99, "end_timestamp": 3661.5},
        ]
        rest.ok("POST", f"/contacts/{q(ANN)}/chats/{chat['id']}/messages", {"message": parts})
        photo = {"type": "image", "mime_type": "image/jpeg", "url": "https://example.com/box.jpg", "caption": "the box"}
        rest.ok("POST", "/chats", said(ANN, "Here is the photo of the damaged box", metadata={"attachments": [photo]}))
        long = " ".join(["the same words again"] * 1000) + " zanzibar at the very end"
        long_id = rest.ok("POST", "/chats", said(ANN, long))["id"]
        async with watched(browser) as seen:
            page = seen.page
            await sign_in(page, base, key)
            await page.get_by_label("Open a contact by any of its identifiers").fill(ANN)
            await page.get_by_label("Open a contact by any of its identifiers").press("Enter")
            timeline = page.locator("#timeline > li")
            await expect(timeline).to_have_count(3)
            await expect(timeline.nth(0).locator(".parts")).to_have_text(
                "1:00.0\u20132:00.0 Still there?1:00:00.0\u20131:01:01.5 Yes."
            )
            await expect(timeline.nth(1).locator(".attachments")).to_have_text(
                "1 attachment: image (image/jpeg) “the box”"
            )
            message = page.locator(f"#m-{long_id}")
            whole = message.get_by_role("button", name="Show the whole message")
            await expect(whole).to_have_attribute("aria-expanded", "false")
            height = await message.locator(".content").evaluate("node => node.getBoundingClientRect().height")
            assert height < 300, height  # its start only (the whole is thousands of pixels)
            await accessible(page, "a long message")
            await whole.click()
            await expect(message.get_by_role("button", name="Show less of the message")).to_have_attribute(
                "aria-expanded", "true"
            )
            assert await message.locator(".content").evaluate("node => node.getBoundingClientRect().height") > 1000
            await page.get_by_role("button", name="Back to contacts").click()
            await page.get_by_role("searchbox").fill("zanzibar")
            await page.get_by_role("searchbox").press("Enter")
            await page.get_by_role("button", name=re.compile("zanzibar")).click()
            await expect(message).to_be_focused()
            await expect(message.get_by_role("button", name="Show less of the message")).to_be_visible()


async def test_an_identifier_not_found_says_how_identifiers_match_and_a_long_one_is_refused(
    tmp_path: Path, browser: Browser
) -> None:
    """A number pasted as a customer wrote it (spaces, brackets, 00, no plus) or an email in capitals opens the
    contact it means, saying so; a national number is not found, and the page says how identifiers are matched;
    an identifier past the server's bound is refused with the server's words, where the field had cut it to 256
    characters and linked what was left."""
    db = str(tmp_path / "ids.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        rest = Rest(base, key)
        rest.ok("POST", "/chats", said(ANN, "hello"))
        rest.ok("POST", "/chats", {**said("ann@example.com", "hello"), "channel": "email"})
        async with watched(browser) as seen:
            page = seen.page
            await sign_in(page, base, key)
            field = page.get_by_label("Open a contact by any of its identifiers")
            # as a customer wrote it: spaces, brackets, 00, no plus; an email in capitals (a support team's review)
            for typed in ("+31 6 1234 5678", "0031 6 12 34 56 78", "+31 (0)6 12345678", "31612345678"):
                await field.fill(typed)
                await field.press("Enter")
                await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_visible()
                await expect(page.locator("#status")).to_have_text(
                    f"Opened {ANN}: no contact has “{typed}” as typed, identifiers are matched exactly."
                )
                await page.get_by_role("button", name="Back to contacts").click()
            await field.fill("ANN@EXAMPLE.COM")
            await field.press("Enter")
            await expect(page.get_by_role("heading", name="ann@example.com", level=1)).to_be_visible()
            await page.get_by_role("button", name="Back to contacts").click()
            await field.fill("06-12345678")  # a national number: no country to guess
            await field.press("Enter")
            await expect(page.locator("#problem")).to_contain_text(
                "or a linked identifier. Identifiers are matched exactly as stored: a phone number as +31612345678 "
                "(no spaces, no 00)"  # two sentences, not run together (a review)
            )
            await field.fill(ANN)
            await field.press("Enter")
            await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_visible()
            await page.get_by_label("Identifier to link").fill("a" * 257)
            await page.get_by_role("button", name="Link identifier").click()
            await page.get_by_role("alertdialog").get_by_role("button", name=re.compile("^Link")).click()
            await expect(page.locator("#problem")).to_contain_text("256")
        assert rest.ok("GET", f"/contacts/{q(ANN)}")["aliases"] == []


async def test_a_message_s_time_links_to_it_and_new_messages_below_are_said(tmp_path: Path, browser: Browser) -> None:
    """Support could not share a link to the message they read (only a search hit's), nor reach the newest message
    but by scrolling past the whole timeline, and a message arriving below the window came unseen and unsaid (a
    support team's review). A message's time is its link: a click puts it in the address and copies it; "Go to
    the newest message" goes there; new messages below the window are said in a notice that
    goes to them, announced in the status line. Each tab is named for what it shows."""
    db = str(tmp_path / "links.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        rest = Rest(base, key)
        sent = [rest.ok("POST", "/chats", said(ANN, f"line {n}"))["id"] for n in range(40)]
        async with watched(browser) as seen:
            page = seen.page
            await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
            await sign_in(page, base, key)
            await expect(page).to_have_title("Contacts · chatdock inspector")
            field = page.get_by_label("Open a contact by any of its identifiers")
            await field.fill(ANN)
            await field.press("Enter")
            await expect(page.get_by_role("heading", name=ANN, level=1)).to_be_visible()
            await expect(page).to_have_title(f"{ANN} · chatdock inspector")
            await page.locator(f"#m-{sent[5]} a.permalink").click()
            await expect(page).to_have_url(f"{base}/ui#contact={q(ANN)}&message={sent[5]}")
            await expect(page.locator(f"#m-{sent[5]}")).to_have_class(re.compile(r"\bfound\b"))
            await expect(page.locator("#status")).to_have_text(
                "The link to this message is copied, and in the address bar."
            )
            assert await page.evaluate("navigator.clipboard.readText()") == page.url
            assert await page.locator("#timeline > li").count() == 40  # the timeline stayed as it was
            await page.get_by_role("button", name="Go to the newest message").click()
            await expect(page.locator(f"#m-{sent[-1]}")).to_be_focused()
            await expect(page.locator(f"#m-{sent[-1]}")).to_be_in_viewport()

            await page.evaluate("window.scrollTo(0, 0)")
            await page.set_viewport_size({"width": 1000, "height": 600})
            arrived = rest.ok("POST", "/chats", said(ANN, "are you there?"))["id"]
            await expect(page.get_by_role("status")).to_have_text("1 new message below.")  # announced
            await page.get_by_role("button", name="1 new message below: show").click()
            await expect(page.locator(f"#m-{arrived}")).to_be_focused()
            await expect(page.locator("#new-below")).to_be_hidden()
            # a message dated back (a voice turn stored late) lands where it belongs: not new below
            await page.evaluate("window.scrollTo(0, 0)")
            listed = rest.ok("GET", "/chats", contact_id=ANN, limit=200)["messages"]
            second = datetime.fromisoformat(listed[-2]["created_at"])  # between the second and the third message
            late = (second + timedelta(microseconds=1)).isoformat()
            rest.ok("POST", "/chats", said(ANN, "said long ago", created_at=late))
            await expect(page.locator("#timeline")).to_contain_text("said long ago")
            await expect(page.locator("#new-below")).to_be_hidden()
            await accessible(page, "a contact with a notice of new messages")
