"""The inspector's channel filter, in Debian's Chromium against a real `chatdock serve --http`: a support person
reads one channel's thread of a contact who writes on several (WhatsApp, SMS, a voice call), while messages keep
arriving on all of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from tests.http.browser import accessible, sign_in, watched
from tests.http.test_inspector import ANN, seed
from tests.http.test_inspector_support import open_contact
from tests.transports import Rest, create_key, http_server

pytestmark = pytest.mark.process


async def test_the_timeline_shows_the_channels_chosen_and_says_what_it_hides(tmp_path: Path, browser: Browser) -> None:
    db = str(tmp_path / "channels.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        rest = Rest(base, key)
        seed(rest)  # two WhatsApp messages, two SMS, a voice call's turn
        async with watched(browser, {"width": 1000, "height": 500}) as seen:  # the newest soon below the window
            page = seen.page
            await sign_in(page, base, key)
            await open_contact(page, ANN)
            filter_box = page.get_by_role("group", name="Channels shown")
            await expect(filter_box.get_by_role("checkbox")).to_have_count(3)
            timeline = page.locator("#timeline > li")
            await expect(timeline).to_have_count(5)

            await filter_box.get_by_label("sms").uncheck()
            await expect(page.locator("#timeline > li:visible")).to_have_count(3)
            await expect(page.get_by_role("status")).to_have_text("Showing 3 of 5 loaded message(s); hidden: sms.")
            assert "Where is my refund for the broken lid?" not in await shown_texts(page)
            await accessible(page, "timeline without sms")

            # messages keep arriving on every channel: each in its place, shown as the filter says; what arrives
            # below the window is said, but not a hidden channel's
            await page.locator("#contact-title").scroll_into_view_if_needed()
            rest.ok("POST", "/chats", {"contact_id": ANN, "channel": "sms", "role": "user", "content": "sms later"})
            rest.ok("POST", "/chats", {"contact_id": ANN, "channel": "whatsapp", "role": "user", "content": "wa later"})
            await expect(timeline).to_have_count(7)
            await expect(page.locator("#timeline > li:visible")).to_have_count(4)
            assert (await shown_texts(page))[-1] == "wa later"
            await expect(page.locator("#new-below")).to_have_text("1 new message below: show")

            # deleted, the newest shown message passes the focus to the nearest shown one (its neighbour, of a
            # hidden channel, could not take it: the focus was lost, the review of the diff)
            newest = page.locator("#timeline > li", has_text="wa later")
            await newest.get_by_role("button", name="Delete message").click()
            await page.get_by_role("alertdialog").get_by_role("button", name="Delete message").click()
            await expect(page.get_by_role("status")).to_have_text("The message was deleted.")
            await expect(page.locator("#timeline > li:visible").last).to_be_focused()
            await expect(page.locator("#timeline > li:visible").last).to_contain_text("Did the refund go out?")

            await filter_box.get_by_label("whatsapp").uncheck()
            await filter_box.get_by_label("voice").uncheck()
            await expect(page.locator("#timeline > li:visible")).to_have_count(0)
            await expect(page.locator("#no-messages")).to_have_text("No loaded message is on the channels shown.")
            for channel in ("sms", "whatsapp", "voice"):
                await filter_box.get_by_label(channel).check()
            await expect(page.locator("#timeline > li:visible")).to_have_count(6)
            await expect(page.get_by_role("status")).to_have_text("Showing every channel: 6 loaded message(s).")
            assert "sms later" in await shown_texts(page)


async def shown_texts(page: Page) -> list[str]:
    """The contents of the messages the timeline shows (not those of hidden channels), top to bottom."""
    texts = page.locator("#timeline > li:visible .content, #timeline > li:visible .parts")
    return [text.strip() for text in await texts.all_inner_texts()]


async def test_older_messages_all_on_hidden_channels_are_said_and_keep_the_focus_in_the_page(
    tmp_path: Path, browser: Browser
) -> None:
    """'Load older' brought only messages of a hidden channel: nothing new showed, the focus went to the body
    and the status said they were loaded (the review of the diff). It says how many are hidden, and the focus
    stays in the timeline."""
    db = str(tmp_path / "older.db")
    key = create_key(db, "acme", "support")
    with http_server(db) as base:
        rest = Rest(base, key)
        for n in range(10):  # the oldest: SMS only
            at = f"2026-11-01T08:{n:02d}:00Z"
            rest.ok(
                "POST",
                "/chats",
                {"contact_id": ANN, "channel": "sms", "role": "user", "content": f"sms {n}", "created_at": at},
            )
        for n in range(50):  # the newest page: WhatsApp only
            at = f"2026-11-02T08:{n:02d}:00Z"
            rest.ok(
                "POST",
                "/chats",
                {"contact_id": ANN, "channel": "whatsapp", "role": "user", "content": f"wa {n}", "created_at": at},
            )
        async with watched(browser) as seen:
            page = seen.page
            await sign_in(page, base, key)
            await open_contact(page, ANN)
            await expect(page.locator("#timeline > li")).to_have_count(50)
            await page.get_by_role("group", name="Channels shown").get_by_label("sms").uncheck()
            await page.get_by_role("button", name="Load older messages").click()
            await expect(page.get_by_role("status")).to_have_text(
                "10 older message(s) loaded, 10 of them on hidden channels; that is the first one."
            )
            await expect(page.locator("#timeline-title")).to_be_focused()
            await expect(page.locator("#timeline > li:visible")).to_have_count(50)
