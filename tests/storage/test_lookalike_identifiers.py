"""Identifiers a person cannot tell apart never name two contacts: every character a person cannot see is
refused through the MCP tools, on both engines, with an error naming it; ordinary ids (inner spaces, any
script) still work; and ids stored before the rule are cleaned by a migration that keeps and logs look-alike
pairs instead of merging them."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from types import ModuleType

import pytest
from mcp.client import Client

from chatdock.server.mcp.app import Settings, build_server
from chatdock.storage import NewMessage, open_store
from chatdock.storage.postgres import schema
from chatdock.storage.sqlite import schema as sqlite_schema
from tests.storage.raw import run_sql
from tests.transports import call, error

PHONE = "+31612345678"

# Unicode's default-ignorable code points a person cannot see (the Cf ones among them refused as format
# characters), the braille blank, and white space at an end of the id.
IGNORABLE = [
    *range(0xFE00, 0xFE10),  # variation selectors 1 to 16
    0xE0100,
    0xE01EF,  # variation selectors 17 and 256
    0x034F,  # combining grapheme joiner
    0x115F,
    0x1160,
    0x3164,
    0xFFA0,  # Hangul fillers
    *range(0x180B, 0x1810),  # Mongolian free variation selectors, vowel separator
    0x17B4,
    0x17B5,  # Khmer inherent vowels
    *range(0x2060, 0x2070),  # word joiner, invisible operators, isolates
    0xE0001,
    0xE0020,
    0xE0041,
    0xE007F,  # tag characters
    0x00AD,  # soft hyphen
    0xFEFF,  # zero-width no-break space
]
BLANK = [0x2800]
SPACES = [0x0020, 0x00A0, 0x2007, 0x202F, 0x3000]
INNER_SPACES = [0x00A0, 0x2007, 0x2009, 0x202F, 0x205F]  # look like a plain space inside an id


def odd_ids() -> list[tuple[str, int, int]]:
    """(identifier, the refused character, its position from 1): each look-alike of PHONE or of 'ann'."""
    found = [(PHONE + chr(code), code, len(PHONE) + 1) for code in IGNORABLE + BLANK + SPACES]
    found += [(PHONE[:3] + chr(code) + PHONE[3:], code, 4) for code in IGNORABLE + BLANK]  # inside, too
    found += [(chr(code) + "ann", code, 1) for code in SPACES]
    found += [(f"Zo\u00eb{chr(code)}M\u00fcller", code, 4) for code in INNER_SPACES]  # "Zoë Müller" look-alikes
    return found


async def refused(client: Client, tool: str, field: str, where: str, **arguments: object) -> None:
    """`tool` refuses the call, naming `field` and where the character is."""
    text = await error(client, tool, **arguments)
    assert text.startswith(f"Error executing tool {tool}: {field} must not") and where in text, text


async def test_every_character_a_person_cannot_see_is_refused_and_named(db: str) -> None:
    say = {"channel": "sms", "role": "user", "content": "x"}
    async with Client(build_server(Settings(db=db))) as client:
        await call(client, "append_message", contact_id=PHONE, **say)
        for odd, code, position in odd_ids():
            where = f"it has U+{code:04X} at position {position}"
            await refused(client, "append_message", "contact_id", where, contact_id=odd, **say)
            await refused(client, "append_message", "agent_id", where, contact_id=PHONE, agent_id=odd, **say)
            await refused(client, "link_contacts", "identifier", where, contact_id=PHONE, identifier=odd)
            await refused(client, "unlink_contact", "identifier", where, identifier=odd)
            await refused(client, "get_contact", "contact_id", where, contact_id=odd)
        contact = await call(client, "get_contact", contact_id=PHONE)
        assert (contact["message_count"], contact["aliases"]) == (1, [])
    async with open_store(db) as store:
        assert (await store.recent_contacts("default")).contact_ids == [PHONE]  # not one look-alike was stored


async def test_the_errors_say_which_character_to_remove_and_that_ids_are_never_cleaned(db: str) -> None:
    async with Client(build_server(Settings(db=db))) as client:
        say = {"channel": "sms", "role": "user", "content": "x"}
        assert (await error(client, "append_message", contact_id=PHONE + "\ufe0f", **say)).endswith(
            "contact_id must not contain characters a person cannot see (variation selectors, U+034F, Hangul "
            "fillers, the braille blank U+2800, ...): an id that looks like another would name another contact; "
            "it has U+FE0F at position 13: remove it (ids are refused, never cleaned, so that an id is never "
            "changed behind your back)"
        )
        assert (await error(client, "append_message", contact_id="\u3164", **say)).endswith(
            "it has U+3164 at position 1: remove it (ids are refused, never cleaned, so that an id is never "
            "changed behind your back)"
        )
        assert (await error(client, "append_message", contact_id=PHONE + " ", **say)).endswith(
            "contact_id must not start or end with white space (a space, a no-break space U+00A0, ...); it has "
            "U+0020 at position 13: remove it (ids are refused, never trimmed, so that an id is never changed "
            "behind your back)"
        )
        assert (await error(client, "append_message", contact_id="   ", **say)).endswith(
            "contact_id must not start or end with white space (a space, a no-break space U+00A0, ...); it has "
            "U+0020 at position 1: remove it (ids are refused, never trimmed, so that an id is never changed "
            "behind your back)"
        )
        assert (await error(client, "append_message", contact_id="Zo\u00eb\u00a0M\u00fcller", **say)).endswith(
            "contact_id must not contain a space other than the plain space U+0020 (a no-break space U+00A0, a "
            "thin space, ...): it looks the same and would name another contact; it has U+00A0 at position 4: "
            "write a plain space instead"
        )
        # the format characters keep their own words (zero-width space, U+202E, ...)
        assert (await error(client, "append_message", contact_id="ann\u2060x", **say)).endswith(
            "contact_id must not contain invisible format or line-separator characters (zero-width space, "
            "right-to-left override, U+2028, ...); it has U+2060 at position 4"
        )


async def test_ordinary_ids_with_inner_spaces_and_any_script_still_work(db: str) -> None:
    ordinary = ["Zoë Müller", "山田太郎", "山田\u3000太郎", "ann@example.com", "Ελένη Π.", "محمد", "w-8f2c", "🙂"]
    async with Client(build_server(Settings(db=db))) as client:
        for contact in ordinary:
            appended = await call(client, "append_message", contact_id=contact, channel="sms", role="user", content="x")
            assert appended["contact_id"] == contact
        linked = await call(client, "link_contacts", contact_id="Zoë Müller", identifier="山田 太郎")
        assert linked["aliases"] == ["山田 太郎"]
        for contact in ordinary:
            found = await call(client, "get_contact", contact_id=contact)
            assert (found["contact_id"], found["message_count"]) == (contact, 1)
        assert (await call(client, "get_contact", contact_id="山田 太郎"))["contact_id"] == "Zoë Müller"
        agent = await call(
            client, "append_message", contact_id="w-8f2c", agent_id="sales bot", channel="sms", role="user", content="y"
        )
        assert agent["agent_id"] == "sales bot"


# --- ids stored before the rule: the migration ---


def engine(db: str) -> ModuleType:
    return schema if db.startswith("postgres") else sqlite_schema


CLEANING = "identifiers without characters a person cannot see"


def renamed(old: str, new: str, created_us: int, own: bool = True) -> list[tuple[str, tuple[object, ...]]]:
    """As a database written before the rule holds `new`: the identifier `old` spelt so."""
    done: list[tuple[str, tuple[object, ...]]] = [
        ("UPDATE identifiers SET identifier = $1, created_us = $2 WHERE identifier = $3", (new, created_us, old))
    ]
    if own:
        done.append(("UPDATE contacts SET external_id = $1 WHERE external_id = $2", (new, old)))
    return done


def said(contact: str, content: str, org_time: int, agent_id: str | None = None) -> NewMessage:
    when = datetime(2025, 1, 1, tzinfo=UTC).replace(hour=org_time)
    return NewMessage(
        contact_id=contact, channel="sms", role="user", content=content, agent_id=agent_id, created_at=when
    )


async def test_stored_look_alikes_are_cleaned_and_colliding_pairs_kept_and_logged(
    db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    module = engine(db)
    (cleaning,) = [m for m in module.MIGRATIONS if m.name == CLEANING]
    # a database without this migration, written by this code (so with the later migrations it needs)
    others = tuple(m for m in module.MIGRATIONS if m is not cleaning)
    with monkeypatch.context() as patched:
        patched.setattr(module, "MIGRATIONS", others)
        async with open_store(db) as store:
            contacts = [PHONE, "b-tmp", "c-tmp", "d-tmp", "e-tmp", "Zoë Müller", "g-tmp", "h-tmp"]
            for hour, contact in enumerate(contacts):  # each message says its contact's letter: a, b, ... h
                await store.append_message("acme", said(contact, "abcdefgh"[hour], hour))
            await store.append_message("acme", said(PHONE, "a2", 9, agent_id="bot-tmp"))
            await store.open_chat("acme", PHONE, "sms", agent_id="bot-tmp")
            await store.append_message("globex", said("globex-tmp", "elsewhere", 10))
            for alias in ("f-alias1", "f-alias2"):
                await store.link_contacts("acme", "Zoë Müller", alias)
            await store.link_contacts("acme", "h-tmp", "h@example.com")
    await run_sql(
        db,
        *renamed("b-tmp", PHONE + "\ufe0f", 1),  # looks like PHONE, another contact
        *renamed("c-tmp", "ann@example.com ", 2),  # free once trimmed
        *renamed("d-tmp", "w-8f2c\u034f", 3),  # the older of two look-alikes of a free id ...
        *renamed("e-tmp", "\u00a0w-8f2c", 4),  # ... and the younger
        *renamed("f-alias1", "Zoë Müller\ufe0f", 5, own=False),  # an alias like its own contact's id
        *renamed("f-alias2", "sess\u2800", 6, own=False),
        *renamed("g-tmp", "\u3164", 7),  # nothing left once cleaned
        *renamed("h-tmp", "h@example.com\ufe00", 8),  # its own id like its alias
        *renamed("globex-tmp", PHONE + "\ufe0f", 9),  # another organization's: free there
        ("UPDATE messages SET agent_id = $1 WHERE agent_id = $2", ("bot\ufe0f", "bot-tmp")),
        ("UPDATE chats SET agent_id = $1 WHERE agent_id = $2", ("bot\ufe0f", "bot-tmp")),
    )
    with caplog.at_level(logging.INFO, logger="chatdock.storage"):
        async with open_store(db) as store:
            kept = [PHONE + "\ufe0f", "\u00a0w-8f2c", "\u3164"]
            assert sorted((await store.recent_contacts("acme")).contact_ids) == sorted(
                [PHONE, "ann@example.com", "w-8f2c", "Zoë Müller", "h@example.com", *kept]
            )
            phone = await store.get_contact("acme", PHONE)
            assert (phone.message_count, phone.aliases) == (2, [])  # never merged with its look-alike
            assert (await store.get_contact("acme", "ann@example.com")).message_count == 1
            assert [m.content for m in (await store.get_context("acme", "w-8f2c")).messages] == ["d"]
            zoe = await store.get_contact("acme", "sess")
            assert (zoe.contact_id, zoe.aliases, zoe.message_count) == ("Zoë Müller", ["sess"], 1)
            h = await store.get_contact("acme", "h@example.com")
            assert (h.contact_id, h.aliases, h.message_count) == ("h@example.com", [], 1)
            assert [m.content for m in (await store.get_context("acme", PHONE, agent_id="bot")).messages] == ["a2"]
            assert [chat.agent_id for chat in await store.list_chats("acme", PHONE)] == ["bot"]
            assert (await store.recent_contacts("globex")).contact_ids == [PHONE]
            async with store.snapshot() as history:
                exported = [message async for _, message in history.export_messages("acme")]
            assert sorted(m.content for m in exported) == ["a", "a2", "b", "c", "d", "e", "f", "g", "h"]
            assert {m.contact_id for m in exported if m.content in {"b", "e", "g"}} == set(
                kept
            )  # kept with their history
    logged = sorted(
        (record.levelname, record.getMessage())
        for record in caplog.records
        if "organization" in record.getMessage() or record.getMessage().startswith("agent id")
    )
    tail = (
        "another contact (they differ only in characters a person cannot see); both are kept as they are, never "
        "merged here: the look-alike can no longer be named by a caller, its history stays readable through "
        "chatdock export; decide whether they are one person"
    )
    removed = "characters a person cannot see were removed"
    assert logged == sorted(
        [
            ("WARNING", f"contact '+31612345678\\ufe0f' of organization 'acme' looks the same as '{PHONE}', {tail}"),
            ("INFO", f"contact 'ann@example.com\\u0020' of organization 'acme' is now 'ann@example.com': {removed}"),
            ("INFO", f"contact 'w-8f2c\\u034f' of organization 'acme' is now 'w-8f2c': {removed}"),
            ("WARNING", f"contact '\\u00a0w-8f2c' of organization 'acme' looks the same as 'w-8f2c', {tail}"),
            (
                "INFO",
                "alias 'Zoë Müller\\ufe0f' of contact 'Zoë Müller' of organization 'acme' was dropped: it looks the "
                "same as 'Zoë Müller', which names the same contact",
            ),
            ("INFO", f"alias 'sess\\u2800' of contact 'Zoë Müller' of organization 'acme' is now 'sess': {removed}"),
            (
                "WARNING",
                "contact '\\u3164' of organization 'acme' holds characters no longer accepted in ids even once "
                "cleaned (''); it stays as it is, its history readable through chatdock export",
            ),
            (
                "INFO",
                "contact 'h@example.com\\ufe00' of organization 'acme' is now 'h@example.com', already one of its "
                "aliases",
            ),
            ("INFO", f"contact '+31612345678\\ufe0f' of organization 'globex' is now '{PHONE}': {removed}"),
            ("INFO", "agent id 'bot\\ufe0f' of 1 messages is now 'bot'"),
            ("INFO", "agent id 'bot\\ufe0f' of 1 chats is now 'bot'"),
        ]
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="chatdock.storage"):
        async with open_store(db) as store:  # applied once: opening again changes and logs nothing
            assert len((await store.recent_contacts("acme")).contact_ids) == 8
    assert not [r for r in caplog.records if "organization" in r.getMessage() or "agent id" in r.getMessage()]
