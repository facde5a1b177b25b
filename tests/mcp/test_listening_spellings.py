"""Listening works for every spelling of a contact's URI that reading accepts (docs/events.md): either
case of percent-encoding, an unencoded `+`, an alias, any Unicode normalization form; each listener hears
the URI as it spelled it, in both protocol eras."""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import pytest
from mcp.client import Client

from chatdock.server.mcp.app import Settings, build_server
from chatdock.server.mcp.resources import TRANSCRIPT_URI, canonical_uri, contact_uri
from tests.mcp.test_events import heard_within, initialize_era, subscriber
from tests.transports import call

PHONE = "+31612345678"
NAME = "Zoë Müller"  # stored in NFC; a client may spell it in NFD
SPELLINGS = {
    "lower-case percent-encoding": ("chatdock://contacts/%2b31612345678/transcript", PHONE),
    "an unencoded +": ("chatdock://contacts/+31612345678/transcript", PHONE),
    "an alias": (contact_uri(TRANSCRIPT_URI, "ann@example.com"), PHONE),
    "NFD": (f"chatdock://contacts/{quote(unicodedata.normalize('NFD', NAME), safe='')}/transcript", NAME),
}


def test_every_spelling_has_one_canonical_form() -> None:
    assert canonical_uri("chatdock://contacts/%2b31612345678/transcript") == contact_uri(TRANSCRIPT_URI, PHONE)
    assert canonical_uri("chatdock://contacts/+31612345678/transcript") == contact_uri(TRANSCRIPT_URI, PHONE)
    assert canonical_uri(SPELLINGS["NFD"][0]) == contact_uri(TRANSCRIPT_URI, NAME)
    assert canonical_uri("chatdock://elsewhere/x") == "chatdock://elsewhere/x"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("spelling", list(SPELLINGS))
async def test_a_listener_hears_its_contact_however_it_spelled_the_uri(mode: str, spelling: str, db: str) -> None:
    uri, contact = SPELLINGS[spelling]
    server = build_server(Settings(db=db))
    async with Client(server) as writer:
        await call(writer, "append_message", contact_id=contact, channel="sms", role="user", content="first")
        await call(writer, "link_contacts", contact_id=PHONE, identifier="ann@example.com")
        read = await writer.read_resource(uri)  # reading accepts the spelling...
        assert "first" in read.contents[0].text  # type: ignore[union-attr]
        async with subscriber(server, mode, uri) as (_, heard):  # ...and so does listening
            await call(writer, "append_message", contact_id=contact, channel="sms", role="user", content="again")
            await heard_within(heard, 1)
            assert uri in heard, heard  # told in its own spelling, which the client's filter matches


async def test_an_initialize_era_session_unsubscribes_in_any_spelling_too(db: str) -> None:
    server = build_server(Settings(db=db))
    async with Client(server) as writer:
        await call(writer, "append_message", contact_id=PHONE, channel="sms", role="user", content="first")
    uri = SPELLINGS["lower-case percent-encoding"][0]
    async with subscriber(server, "legacy", uri) as (listener, heard), Client(server) as writer:
        with initialize_era():
            await listener.unsubscribe_resource(uri)
        sentinel = contact_uri(TRANSCRIPT_URI, "+31600000000")
        with initialize_era():
            await listener.subscribe_resource(sentinel)
        await call(writer, "append_message", contact_id=PHONE, channel="sms", role="user", content="unheard")
        await call(writer, "append_message", contact_id="+31600000000", channel="sms", role="user", content="x")
        await heard_within(heard, 1)
        assert uri not in heard  # the sentinel's event came; the unsubscribed spelling's never did


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_listener_on_an_alias_hears_every_kind_of_write_to_its_contact(mode: str, db: str) -> None:
    """The writes SPEC.md lists (append, post, delete, a chat's status...) each tell a listener that spelled
    its contact by an alias, not only one that used the contact's own id."""
    uri = SPELLINGS["an alias"][0]
    server = build_server(Settings(db=db))
    async with Client(server) as writer:
        first = await call(writer, "append_message", contact_id=PHONE, channel="sms", role="user", content="first")
        await call(writer, "link_contacts", contact_id=PHONE, identifier="ann@example.com")
        chat = await call(writer, "open_chat", contact_id=PHONE, channel="voice")
        writes: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
            "append": lambda: call(writer, "append_message", contact_id=PHONE, channel="sms", role="user", content="x"),
            "post": lambda: call(
                writer, "post_as_contact", contact_id=PHONE, chat_id=chat["id"], message=[{"text": "y"}]
            ),
            "chat status": lambda: call(writer, "update_chat", chat_id=chat["id"], status="COMPLETED"),
            "delete": lambda: call(writer, "delete_message", message_id=first["id"]),
        }
        async with subscriber(server, mode, uri) as (_, heard):
            for count, (name, write) in enumerate(writes.items(), start=1):
                await write()
                await heard_within(heard, count)
                assert heard[-1] == uri, (name, heard)
