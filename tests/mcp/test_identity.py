"""One person across channels: identifiers linked into one contact, merges, unlinking, forgetting by alias,
organizations, events and history, through the MCP tools (and the history CLI)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.client.subscriptions import ResourcesListChanged, ResourceUpdated

from chatdock.server.mcp.app import Settings, build_server
from chatdock.server.mcp.resources import TRANSCRIPT_URI, contact_uri
from chatdock.storage import open_store
from tests.transports import call, error, run_cli

PHONE, EMAIL, SESSION = "+31612345678", "ann@example.com", "w-8f2c"


def say(contact: str, content: str, channel: str = "whatsapp") -> dict[str, str]:
    return {"contact_id": contact, "channel": channel, "role": "user", "content": content}


async def test_one_person_on_whatsapp_email_and_the_widget_is_one_contact(db: str) -> None:
    async with Client(build_server(Settings(db=db))) as client:
        await call(client, "append_message", **say(PHONE, "Hi, order 4471?"))
        linked = await call(client, "link_contacts", contact_id=PHONE, identifier=EMAIL)
        assert (linked["contact_id"], linked["aliases"], linked["merged_messages"]) == (PHONE, [EMAIL], 0)
        await call(client, "append_message", **say(EMAIL, "Sending the receipt by mail.", "email"))
        await call(client, "link_contacts", contact_id=EMAIL, identifier=SESSION)  # an alias names the contact too
        await call(client, "append_message", **say(SESSION, "Still waiting!", "widget"))
        expected = "USER: Hi, order 4471?\nUSER: Sending the receipt by mail.\nUSER: Still waiting!"
        for identifier in (PHONE, EMAIL, SESSION):
            context = await call(client, "get_context", include_messages=True, contact_id=identifier)
            assert context["contact_id"] == PHONE and context["formatted"] == expected
            assert {m["contact_id"] for m in context["messages"]} == {PHONE}
            transcript = await client.read_resource(contact_uri(TRANSCRIPT_URI, identifier))
            assert transcript.contents[0].text == expected  # type: ignore[union-attr]
            contact = await call(client, "get_contact", contact_id=identifier)
            assert contact["contact_id"] == PHONE and contact["aliases"] == [EMAIL, SESSION]
            assert (contact["channels"], contact["message_count"], contact["chat_count"]) == (
                ["email", "whatsapp", "widget"],
                3,
                0,
            )
        again = await call(client, "link_contacts", contact_id=SESSION, identifier=PHONE)  # the same contact: nothing
        assert (again["merged_messages"], again["aliases"]) == (0, [EMAIL, SESSION])
        ahead = await call(client, "link_contacts", contact_id="caller", identifier="caller@example.com")
        assert (ahead["contact_id"], ahead["aliases"], ahead["message_count"]) == ("caller", ["caller@example.com"], 0)
        assert (await call(client, "get_contact", contact_id="caller@example.com"))["contact_id"] == "caller"
        text = await error(client, "get_contact", contact_id="nobody")
        assert text.endswith(
            "contact nobody not found; a contact exists once it has a message, a chat or a linked identifier"
        )


async def test_linking_an_identifier_with_history_merges_the_two_contacts(db: str) -> None:
    async with Client(build_server(Settings(db=db))) as client:
        voice = await call(client, "open_chat", contact_id=PHONE, channel="voice")
        await call(client, "append_message", **say(PHONE, "by phone", "voice"), chat_id=voice["id"])
        widget = await call(client, "open_chat", contact_id=SESSION, channel="voice")  # a voice channel of its own
        await call(client, "append_message", **say(SESSION, "on the web", "voice"), chat_id=widget["id"])
        await call(client, "append_message", **say(SESSION, "hook", "whatsapp"), metadata={"provider_message_id": "w1"})
        merged = await call(client, "link_contacts", contact_id=PHONE, identifier=SESSION)
        assert (merged["merged_messages"], merged["merged_chats"], merged["message_count"]) == (2, 1, 3)
        assert merged["channels"] == ["voice", "whatsapp"]  # the two voice channels became one
        for chat in (voice, widget):  # both chats keep working, on the one voice channel
            posted = await call(
                client, "post_as_contact", contact_id=SESSION, chat_id=chat["id"], message=[{"text": "x"}]
            )
            assert (posted["contact_id"], posted["channel"]) == (PHONE, "voice")
        chats = await call(client, "list_chats", contact_id=PHONE)
        assert sorted(c["id"] for c in chats["chats"]) == sorted([voice["id"], widget["id"]])
        assert {c["channels"][0]["id"] for c in chats["chats"]} == {voice["channels"][0]["id"]}
        retried = await call(
            client, "append_message", **say(PHONE, "hook", "whatsapp"), metadata={"provider_message_id": "w1"}
        )
        assert retried["deduplicated"] is True and retried["contact_id"] == PHONE  # webhook keys keep deduplicating
        assert (await call(client, "get_contact", contact_id=SESSION))["message_count"] == 5

        # a caller still holding the channel id it was given (a call in progress) posts with it, through merges
        old = widget["channels"][0]["id"]
        await call(client, "append_message", **say(SESSION, "typed", "web"), chat_id=widget["id"])  # 2 custom now
        several = await error(
            client, "post_as_contact", contact_id=PHONE, chat_id=widget["id"], message=[{"text": "y"}]
        )
        assert "has several custom channels; pass channel_id" in several
        later = await call(client, "open_chat", contact_id="crm-9", channel="voice")
        await call(client, "link_contacts", contact_id="crm-9", identifier=PHONE)  # PHONE's voice channel retired too
        for chat in (widget, voice):
            posted = await call(
                client,
                "post_as_contact",
                contact_id=SESSION,
                chat_id=chat["id"],
                channel_id=old,
                message=[{"text": "z"}],
            )
            assert (posted["contact_id"], posted["channel"]) == ("crm-9", "voice")
        unknown = "0192f0c4-7d3e-7b1a-9c4e-2f1d3a5b6c7d"
        wrong = await error(
            client,
            "post_as_contact",
            contact_id=PHONE,
            chat_id=later["id"],
            channel_id=unknown,
            message=[{"text": "w"}],
        )
        assert f"channel_id {unknown} is not a custom channel of chat {later['id']}" in wrong
    async with open_store(db) as store, Client(build_server(Settings(org="globex"), store)) as theirs:
        chat = await call(theirs, "open_chat", contact_id=PHONE, channel="voice")
        foreign = await error(theirs, "post_as_contact", contact_id=PHONE, chat_id=chat["id"], channel_id=old,
                              message=[{"text": "z"}])  # fmt: skip
        # another organization's retired id is unknown here, and the error names the id sent, nothing else
        assert f"channel_id {old} is not a custom channel of chat {chat['id']}; use one of: " in foreign
        named = set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", foreign))
        assert named <= {old, chat["id"], *(channel["id"] for channel in chat["channels"])}, foreign


async def test_appends_to_both_identifiers_during_a_link_all_land_once(db: str) -> None:
    async with open_store(db) as store:
        server = build_server(Settings(), store)
        async with Client(server) as client:
            await call(client, "append_message", **say(PHONE, "first"))
            await call(client, "append_message", **say(EMAIL, "second"))

            async def append(index: int) -> str:
                contact = PHONE if index % 2 else EMAIL
                message_id: str = (await call(client, "append_message", **say(contact, f"during {index}")))["id"]
                return message_id

            results = await asyncio.gather(
                *(append(i) for i in range(25)),
                call(client, "link_contacts", contact_id=PHONE, identifier=EMAIL),
                *(append(i) for i in range(25, 50)),
            )
            ids = [r for r in results if isinstance(r, str)]
            page = await call(client, "list_messages", contact_id=EMAIL, limit=200)
            assert page["next_cursor"] is None
            stored = [m["id"] for m in page["messages"]]
            assert len(stored) == 52 and set(ids) <= set(stored) and len(set(stored)) == 52
            assert {m["contact_id"] for m in page["messages"]} == {PHONE}
            assert (await store.recent_contacts("default")).contact_ids == [
                PHONE
            ]  # no message left under the old contact


async def test_unlink_frees_the_identifier_and_forget_by_alias_erases_the_person(db: str) -> None:
    async with Client(build_server(Settings(db=db))) as client:
        await call(client, "append_message", **say(PHONE, "mine"))
        await call(client, "link_contacts", contact_id=PHONE, identifier=EMAIL)
        await call(client, "link_contacts", contact_id=PHONE, identifier=SESSION)
        own = await error(client, "unlink_contact", identifier=PHONE)
        assert own.endswith(f"{PHONE} is the contact's own contact_id and cannot be unlinked; unlink one of its "
                            "aliases, or forget the contact")  # fmt: skip
        unlinked = await call(client, "unlink_contact", identifier=EMAIL)
        assert (unlinked["contact_id"], unlinked["aliases"]) == (PHONE, [SESSION])
        await call(client, "append_message", **say(EMAIL, "a new person now"))
        fresh = await call(client, "get_contact", contact_id=EMAIL)
        assert (fresh["contact_id"], fresh["message_count"]) == (EMAIL, 1)
        assert (await call(client, "get_context", include_messages=True, contact_id=PHONE))[
            "formatted"
        ] == "USER: mine"  # history stayed
        unknown = await error(client, "unlink_contact", identifier="never-seen")
        assert "is not linked to any contact" in unknown
        forgotten = await call(client, "forget_contact", contact_id=SESSION)
        assert forgotten == {"contact_id": PHONE, "deleted_messages": 1, "deleted_chats": 0, "deleted_identifiers": 2}
        for identifier in (PHONE, SESSION):
            assert (await call(client, "get_context", include_messages=True, contact_id=identifier))["messages"] == []
        assert (await call(client, "get_contact", contact_id=EMAIL))["message_count"] == 1


async def test_organizations_never_link_or_read_across(db: str) -> None:
    db = db
    async with open_store(db) as store:
        acme, globex = build_server(Settings(org="acme"), store), build_server(Settings(org="globex"), store)
        async with Client(acme) as a, Client(globex) as g:
            await call(a, "append_message", **say(PHONE, "acme's secret"))
            linked = await call(g, "link_contacts", contact_id="g-1", identifier=PHONE)  # unknown there: a new alias
            assert (linked["contact_id"], linked["aliases"], linked["merged_messages"]) == ("g-1", [PHONE], 0)
            assert (await call(g, "get_context", include_messages=True, contact_id=PHONE))["messages"] == []
            assert (await call(a, "get_context", include_messages=True, contact_id=PHONE))[
                "formatted"
            ] == "USER: acme's secret"
            assert (await call(a, "get_contact", contact_id=PHONE))["aliases"] == []
            assert "not found" in await error(a, "get_contact", contact_id="g-1")


async def test_a_merge_tells_the_listeners_of_both_contacts(db: str) -> None:
    server = build_server(Settings(db=db))
    heard: list[object] = []
    async with Client(server) as writer, Client(server) as listener:
        await call(writer, "append_message", **say(PHONE, "a"))
        await call(writer, "append_message", **say(EMAIL, "b"))
        uris = [contact_uri(TRANSCRIPT_URI, PHONE), contact_uri(TRANSCRIPT_URI, EMAIL)]
        async with listener.listen(resource_subscriptions=uris, resources_list_changed=True) as events:

            async def hear() -> None:
                async for event in events:
                    heard.append(event.uri if isinstance(event, ResourceUpdated) else type(event).__name__)

            async def heard_all(expected: set[str]) -> None:
                with anyio.fail_after(5):
                    while not expected <= set(map(str, heard)):
                        await anyio.sleep(0.01)

            async with anyio.create_task_group() as group:
                group.start_soon(hear)
                await call(writer, "link_contacts", contact_id=PHONE, identifier=EMAIL)
                await heard_all({*uris, ResourcesListChanged.__name__})  # both contacts, and the list lost one
                heard.clear()
                await call(writer, "append_message", **say(EMAIL, "after the merge"))
                await heard_all(set(uris))  # the email's URIs now read the phone's contact, and hear its changes
                group.cancel_scope.cancel()


@pytest.mark.process
async def test_aliases_survive_export_and_import_byte_for_byte(tmp_path: Path, db: str) -> None:
    """From a SQLite file into a fresh database of each engine (moving to PostgreSQL is an export and an
    import), and out again: the same bytes."""
    first, second = tmp_path / "first.db", db
    async with Client(build_server(Settings(db=str(first)))) as client:
        await call(client, "append_message", **say(PHONE, "one"))
        await call(client, "link_contacts", contact_id=PHONE, identifier=EMAIL)
        await call(client, "append_message", **say(EMAIL, "two", "email"))
        await call(client, "link_contacts", contact_id=PHONE, identifier=SESSION)
    exported = run_cli("export", "--db", str(first), "-o", str(tmp_path / "one.jsonl"), "-q")
    assert exported.returncode == 0, exported.stderr
    lines = (tmp_path / "one.jsonl").read_text().splitlines()
    assert sum('"kind":"alias"' in line for line in lines) == 2
    imported = run_cli("import", str(tmp_path / "one.jsonl"), "--db", str(second), "-q")
    assert imported.returncode == 0 and "2 alias(es)" in imported.stdout, imported.stdout + imported.stderr
    again = run_cli("export", "--db", str(second), "-o", str(tmp_path / "two.jsonl"), "-q")
    assert again.returncode == 0
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    async with Client(build_server(Settings(db=second))) as client:
        assert (await call(client, "get_context", include_messages=True, contact_id=SESSION))[
            "formatted"
        ] == "USER: one\nUSER: two"


async def test_a_webhook_id_reused_for_another_contact_never_hands_over_that_contact_s_history(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An application gave Bob's message the provider id of one of Ann's: the contract answers Ann's stored
    copy (`deduplicated`), but the context asked for with it was Ann's history, in the answer to the agent
    serving Bob (found by an agent developer's review). It is Bob's; the log says an id was reused; a copy
    under an alias of Ann is Ann's, with her context, and says nothing."""
    async with Client(build_server(Settings(db=db))) as client:
        await call(
            client,
            "append_message",
            **say(PHONE, "My address is Keizersgracht 1"),
            metadata={"provider_message_id": "1"},
        )
        await call(client, "append_message", **say("bob@example.com", "Hello", "email"))
        await call(client, "link_contacts", contact_id=PHONE, identifier=EMAIL)
        with caplog.at_level("WARNING", "chatdock.storage"):
            bob = await call(
                client,
                "append_message",
                **say("bob@example.com", "Cancel my subscription"),
                metadata={"provider_message_id": "1"},
                context_limit=10,
            )
            assert (bob["deduplicated"], bob["contact_id"]) == (True, PHONE)  # the stored copy, as the contract says
            assert bob["context"]["contact_id"] == "bob@example.com"
            assert bob["context"]["formatted"] == "USER: Hello"  # Bob's history, not Ann's
            reused = [r.getMessage() for r in caplog.records if "an append named another contact" in r.getMessage()]
            assert len(reused) == 1 and "provider_message_id '1' on channel 'whatsapp'" in reused[0]
            assert "bob@example.com" not in reused[0] and PHONE not in reused[0]  # no contact in the log
            retried = await call(
                client,
                "append_message",
                **say(EMAIL, "My address is Keizersgracht 1"),
                metadata={"provider_message_id": "1"},
                context_limit=10,
            )
            assert retried["deduplicated"] and retried["context"]["formatted"] == "USER: My address is Keizersgracht 1"
            assert len([r for r in caplog.records if "an append named another contact" in r.getMessage()]) == 1
        assert (await call(client, "get_context", contact_id="bob@example.com", include_messages=True))[
            "formatted"
        ] == "USER: Hello"  # nothing was stored for Bob
