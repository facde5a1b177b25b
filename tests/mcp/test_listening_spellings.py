"""Listening works for every spelling of a contact's URI that reading accepts (docs/events.md): either
case of percent-encoding, an unencoded `+`, an alias, any Unicode normalization form; each listener hears
the URI as it spelled it, in both protocol eras."""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from chatdock.server.mcp import events
from chatdock.server.mcp.app import Settings, build_server
from chatdock.server.mcp.resources import TRANSCRIPT_URI, canonical_uri, contact_uri
from tests.mcp.test_events import heard_within, initialize_era, subscriber
from tests.transports import call

PHONE = "+31612345678"
NAME = "Zoë Müller"  # stored in NFC; a client may spell it in NFD
LONG_NFD = unicodedata.normalize("NFD", "\ud55c" * 256)  # 256 Hangul syllables, each three jamo in NFD
SPELLINGS = {
    "lower-case percent-encoding": ("chatdock://contacts/%2b31612345678/transcript", PHONE),
    "an unencoded +": ("chatdock://contacts/+31612345678/transcript", PHONE),
    "an alias": (contact_uri(TRANSCRIPT_URI, "ann@example.com"), PHONE),
    "NFD": (f"chatdock://contacts/{quote(unicodedata.normalize('NFD', NAME), safe='')}/transcript", NAME),
    "NFD, longer than 4,096 as spelled": (
        f"chatdock://contacts/{quote(LONG_NFD, safe='')}/transcript",
        unicodedata.normalize("NFC", LONG_NFD),
    ),
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


async def test_one_uri_followed_in_two_spellings_is_told_in_each_in_both_eras(db: str) -> None:
    server = build_server(Settings(db=db))
    lower, plus = SPELLINGS["lower-case percent-encoding"][0], SPELLINGS["an unencoded +"][0]
    async with Client(server) as writer:
        await call(writer, "append_message", contact_id=PHONE, channel="sms", role="user", content="first")
        async with Client(server) as listener, listener.listen(resource_subscriptions=[lower, plus]) as events:
            await call(writer, "append_message", contact_id=PHONE, channel="sms", role="user", content="again")
            told: list[str] = []
            with anyio.fail_after(15):
                async for event in events:
                    told.append(event.uri)  # type: ignore[union-attr]
                    if len(told) == 2:
                        break
            assert sorted(told) == sorted([lower, plus])
        async with subscriber(server, "legacy", lower) as (session, heard):
            with initialize_era():
                await session.subscribe_resource(plus)
            await call(writer, "append_message", contact_id=PHONE, channel="sms", role="user", content="twice")
            await heard_within(heard, 2)
            assert sorted(heard) == sorted([lower, plus]), heard
            with initialize_era():
                await session.unsubscribe_resource(lower)  # the other spelling still follows the contact
            await call(writer, "append_message", contact_id=PHONE, channel="sms", role="user", content="once")
            await heard_within(heard, 3)
            assert heard[2] == plus, heard


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize(
    ("uri", "said"),
    [
        ("file:///etc/passwd", "chatdock has no resource 'file:///etc/passwd' to follow; follow chatdock://contacts/"),
        ("chatdock://contacts/" + "a" * 5_000 + "/transcript", "at most 4096 characters in all"),
        ("chatdock://contacts/a%0Ab/transcript", "contact_id must not contain control characters"),
        ("chatdock://contacts//transcript", "chatdock has no resource"),
        ("chatdock://contacts/" + "a" * 20_000 + "/transcript", "chatdock has no resource"),
    ],
)
async def test_a_uri_chatdock_does_not_serve_is_refused_not_kept(
    mode: str, uri: str, said: str, tmp_path: Path
) -> None:
    """A listener's URIs are kept while it listens: another service's, or one megabytes long, is refused (before
    the store is asked anything: one engine shows it)."""
    server = build_server(Settings(db=str(tmp_path / "refusing.db")))
    async with Client(server, mode="legacy" if mode == "legacy" else "auto") as client:
        with pytest.raises(MCPError) as refused:
            if mode == "legacy":
                with initialize_era():
                    await client.subscribe_resource(uri)
            else:
                async with client.listen(resource_subscriptions=[uri]):
                    pass
        assert refused.value.error.code == INVALID_PARAMS and said in refused.value.error.message, refused.value.error
        if mode == "legacy":
            with initialize_era():
                await client.unsubscribe_resource(uri)  # what was never followed ends quietly, as before


async def test_an_organizations_listeners_follow_a_bounded_length_of_uris_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the organization's budget of URI characters a subscribe is refused (the URIs are kept while
    listened to); an unsubscribe, a stream's end or a session's end gives its share back."""
    uris = [contact_uri(TRANSCRIPT_URI, f"+3160000000{index}") for index in range(3)]
    each = len(uris[0])  # 45 characters
    monkeypatch.setattr(events, "MAX_ORG_URI_CHARS", 2 * each + 10)
    server = build_server(Settings(db=str(tmp_path / "budget.db")))
    async with Client(server, mode="legacy") as session:
        with initialize_era():
            await session.subscribe_resource(uris[0])
            await session.subscribe_resource(uris[1])
            with pytest.raises(
                MCPError, match=f"{2 * each} characters of URIs; {each} more would pass the 100 allowed"
            ):
                await session.subscribe_resource(uris[2])
            await session.unsubscribe_resource(uris[1])
            await session.subscribe_resource(uris[2])  # the unsubscribed one's share came back
        async with Client(server) as streams:
            with pytest.raises(MCPError, match="would pass the 100 allowed"):
                async with streams.listen(resource_subscriptions=uris[:2]):
                    pass
    async with Client(server) as streams:  # the session ended: its share came back
        async with streams.listen(resource_subscriptions=uris[:2]):
            pass
