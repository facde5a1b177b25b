"""The MCP surface, through the SDK's in-memory client of both protocol eras."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.client.subscriptions import ResourceUpdated
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from chatdock.server.mcp.app import Settings, build_server
from chatdock.storage import open_store
from tests.transports import call, error

MODES = ["auto", "legacy"]
UNKNOWN = "0192f0c4-7d3e-7b1a-9c4e-2f1d3a5b6c7d"
TOOLS = {
    "append_message",
    "post_as_contact",
    "get_context",
    "list_messages",
    "delete_message",
    "open_chat",
    "update_chat",
    "list_chats",
    "forget_contact",
    "get_contact",
    "link_contacts",
    "unlink_contact",
    "search_messages",
}
READ_ONLY = {"get_context", "list_messages", "list_chats", "get_contact", "search_messages"}


@pytest.mark.parametrize("mode", MODES)
async def test_tools_declare_schemas_titles_and_hints(mode: str, db: str) -> None:
    async with Client(build_server(Settings(db=db)), mode=mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for name, tool in tools.items():
        assert tool.title and tool.description
        # get_context alone declares no output schema: its result is the transcript unless asked for the rows
        assert (tool.output_schema is None) is (name == "get_context"), name
        assert tool.input_schema["type"] == "object"
        assert len(tool.description) < 200, f"{name}: keep tool descriptions to a sentence or two"
        hints = tool.annotations
        assert hints is not None and hints.open_world_hint is False
        assert hints.read_only_hint is (name in READ_ONLY)
    assert tools["delete_message"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert tools["forget_contact"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert tools["update_chat"].annotations.idempotent_hint is True  # type: ignore[union-attr]
    assert tools["append_message"].annotations.destructive_hint is False  # type: ignore[union-attr]
    limit = tools["get_context"].input_schema["properties"]["limit"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 200, 50)
    part = tools["post_as_contact"].input_schema["properties"]["message"]["items"]
    assert (part["properties"]["text"]["minLength"], part["properties"]["text"]["maxLength"]) == (1, 32_768)
    assert "\n" not in part["description"]  # a description a model reads is not a wrapped docstring
    said = tools["post_as_contact"].input_schema["properties"]["context_limit"]["description"]
    assert "post_as_contact's with every agent's" in said  # it takes no agent_id to filter by
    # a model set agent_id on its replies and read a context without the customer's messages (an agent's review)
    agent = tools["append_message"].input_schema["properties"]["agent_id"]["description"]
    assert "the contact's own, stored without an agent_id, are left out" in agent
    assert "merged in for good" in str(tools["link_contacts"].description)  # unlink does not split a merge


@pytest.mark.parametrize("mode", MODES)
async def test_read_only_serves_only_reading_tools(mode: str, db: str) -> None:
    async with Client(build_server(Settings(db=db, read_only=True)), mode=mode) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == READ_ONLY
        result = await client.call_tool(
            "append_message", {"contact_id": "a", "channel": "sms", "role": "user", "content": "x"}
        )
        assert result.is_error
        # says why and what there is (it said only "Unknown tool: append_message": a desktop user's review)
        assert result.content[0].text == (  # type: ignore[union-attr]
            "Error executing tool append_message: this chatdock serves reading only (started with --read-only), "
            f"so append_message is not served; the tools here are {', '.join(sorted(READ_ONLY))}"
        )
        guessed = await client.call_tool("get_messages", {"contact_id": "a"})
        assert guessed.is_error and guessed.content[0].text == (  # type: ignore[union-attr]
            f"Error executing tool get_messages: there is no tool named 'get_messages'; the tools are "
            f"{', '.join(sorted(READ_ONLY))}"
        )
        templates = (await client.list_resource_templates()).resource_templates
        assert {t.uri_template for t in templates} == {
            "chatdock://contacts/{contact_id}/transcript",
            "chatdock://contacts/{contact_id}/context",
        }
        [prompt] = (await client.list_prompts()).prompts
        assert prompt.name == "continue_conversation"
        assert [(a.name, a.required, bool(a.description)) for a in prompt.arguments or []] == [
            ("contact_id", True, True),
            ("agent_id", False, True),
        ]  # each argument described for the client's form (they were bare: found by a client review)


@pytest.mark.parametrize("mode", MODES)
async def test_a_conversation_end_to_end(mode: str, db: str) -> None:
    async with Client(build_server(Settings(db=db)), mode=mode) as client:
        first = await call(
            client,
            "append_message",
            contact_id="+31612345678",
            channel="whatsapp",
            role="user",
            content="When does my order arrive?",
            metadata={"provider_message_id": "wamid.1"},
        )
        assert first["deduplicated"] is False and first["created_at"].endswith("Z")
        again = await call(
            client,
            "append_message",
            contact_id="+31612345678",
            channel="whatsapp",
            role="user",
            content="When does my order arrive?",
            metadata={"provider_message_id": "wamid.1"},
        )
        assert again["deduplicated"] is True and again["id"] == first["id"]
        await call(
            client,
            "append_message",
            contact_id="+31612345678",
            channel="whatsapp",
            role="assistant",
            content="Your order ships tomorrow.",
            agent_id="support-bot",
        )
        context = await call(client, "get_context", include_messages=True, contact_id="+31612345678")
        assert context["formatted"] == "USER: When does my order arrive?\nASSISTANT: Your order ships tomorrow."
        assert [m["role"] for m in context["messages"]] == ["user", "assistant"]
        assert context["truncated"] is False and context["agent_id"] is None
        only_bot = await call(
            client, "get_context", include_messages=True, contact_id="+31612345678", agent_id="support-bot"
        )
        assert [m["content"] for m in only_bot["messages"]] == ["Your order ships tomorrow."]
        fitted = await call(client, "get_context", include_messages=True, contact_id="+31612345678", max_chars=40)
        assert fitted["formatted"] == "ASSISTANT: Your order ships tomorrow." and fitted["truncated"] is True
        cut = await client.call_tool("get_context", {"contact_id": "+31612345678", "max_chars": 40})
        assert cut.content[0].text == (  # type: ignore[union-attr]
            "(older messages were left out to fit; list_messages pages back through them)\n"
            "ASSISTANT: Your order ships tomorrow."
        )  # a model cannot see `truncated`: the text says it
        nothing = await client.call_tool("get_context", {"contact_id": "+31612345678", "max_chars": 5})
        assert nothing.content[0].text == (  # type: ignore[union-attr]
            "(the contact has messages, but not even the newest fits in max_chars: ask with a larger max_chars)"
        )  # what the model reads: not "(no messages yet)"

        page = await call(client, "list_messages", contact_id="+31612345678", limit=1)
        assert page["messages"][0]["role"] == "assistant" and page["next_cursor"]
        last = await call(client, "list_messages", contact_id="+31612345678", limit=1, cursor=page["next_cursor"])
        assert last["messages"][0]["id"] == first["id"] and last["next_cursor"] is None

        chat = await call(client, "open_chat", contact_id="+31612345678", channel="voice", agent_id="voice-bot")
        assert chat["status"] == "RUNNING" and chat["channels"][0]["kind"] == "custom"
        posted = await call(
            client,
            "post_as_contact",
            contact_id="+31612345678",
            chat_id=chat["id"],
            message=[
                {"type": "text", "text": "Hi, it's me", "start_timestamp": 0.0, "end_timestamp": 1.2},
                {"type": "text", "text": "again", "start_timestamp": 1.3, "end_timestamp": 1.9},
            ],
        )
        assert posted["content"] == "Hi, it's me again" and posted["role"] == "user" and posted["channel"] == "voice"
        done = await call(client, "update_chat", chat_id=chat["id"], status="COMPLETED")
        assert done["status"] == "COMPLETED"
        chats = await call(client, "list_chats", contact_id="+31612345678")
        assert [c["id"] for c in chats["chats"]] == [chat["id"]]

        deleted = await call(client, "delete_message", message_id=posted["id"])
        assert deleted == {"id": posted["id"], "deleted": True}
        forgotten = await call(client, "forget_contact", contact_id="+31612345678")
        assert forgotten == {
            "contact_id": "+31612345678",
            "deleted_messages": 2,
            "deleted_chats": 1,
            "deleted_identifiers": 1,
        }
        assert (await call(client, "get_context", include_messages=True, contact_id="+31612345678"))["messages"] == []


@pytest.mark.parametrize("mode", MODES)
async def test_every_error_says_what_to_fix_and_the_server_keeps_serving(mode: str, db: str) -> None:
    async with Client(build_server(Settings(db=db)), mode=mode) as client:
        base = {"contact_id": "c1", "channel": "sms", "role": "user", "content": "hi"}
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("get_context", {"contact_id": "c1", "limit": 500}, "limit must be between 1 and 200, got 500"),
            ("get_context", {"contact_id": "c1", "limit": 0}, "limit must be between 1 and 200, got 0"),
            ("list_messages", {"contact_id": "c1", "limit": 201}, "limit must be between 1 and 200, got 201"),
            ("list_messages", {"contact_id": "c1", "cursor": "bogus"}, "cursor is not valid"),
            ("list_chats", {"contact_id": "c1", "limit": 1000}, "limit must be between 1 and 200, got 1000"),
            ("append_message", {**base, "role": "boss"}, "role must be one of user, assistant"),
            ("append_message", {**base, "channel": "SMS"}, "channel must be a lower-case name"),
            (  # every wrong field in one answer: a model fixes both at once
                "append_message",
                {**base, "channel": "WhatsApp", "role": "customer"},
                "got 'WhatsApp'; role must be one of user, assistant, system, tool, event, note; got 'customer'",
            ),
            ("append_message", {**base, "content": ""}, "content must not be empty"),
            ("append_message", {**base, "content": "x" * 40_000}, "content must be at most 32768 characters"),
            ("append_message", {**base, "contact_id": "x" * 300}, "contact_id must be 1 to 256 characters, got 300"),
            ("append_message", {**base, "chat_id": UNKNOWN}, f"chat {UNKNOWN} not found for contact c1"),
            ("append_message", {**base, "chat_id": "abc"}, "chat_id must be a UUID"),
            ("append_message", {**base, "metadata": {"x": "y" * 20_000}}, "metadata must be at most 16384 bytes"),
            ("append_message", {**base, "created_at": "2026-01-01T10:00:00"}, "created_at must carry a timezone"),
            # numbers were read as seconds or milliseconds, whichever pydantic guessed (20261207: 1970-08-23)
            ("append_message", {**base, "created_at": 20261207}, "created_at: input should be a time written out"),
            ("append_message", {**base, "created_at": "1733565601"}, "created_at: input should be a date and a"),
            ("append_message", {**base, "created_at": "2026-01-06"}, "with its timezone, like '2026-11-21T09:30"),
            ("delete_message", {"message_id": UNKNOWN}, f"message {UNKNOWN} not found"),
            ("delete_message", {"message_id": "1; DROP TABLE messages"}, "message_id must be a UUID"),
            ("update_chat", {"chat_id": UNKNOWN, "status": "COMPLETED"}, f"chat {UNKNOWN} not found"),
            ("update_chat", {"chat_id": UNKNOWN, "status": "DONE"}, "status must be one of RUNNING, COMPLETED"),
            ("open_chat", {"contact_id": "c1", "channel": "Bad Channel"}, "channel must be a lower-case name"),
            (
                "post_as_contact",
                {"contact_id": "c1", "chat_id": UNKNOWN, "message": [{"type": "text", "text": "x"}]},
                # list_chats alone was named, and a contact without chats listed none (a model went round)
                f"chat {UNKNOWN} not found for contact c1; list the contact's chats with list_chats, or start one "
                "with open_chat",
            ),
            ("post_as_contact", {"contact_id": "c1", "chat_id": UNKNOWN, "message": []}, "1 to 100 parts, got 0"),
        ]
        for name, arguments, expected in cases:
            text = await error(client, name, **arguments)
            assert expected in text, (name, arguments, text)
        for name, arguments in [
            ("get_context", {}),
            ("get_context", {"contact_id": "c1", "limit": "lots"}),
            ("append_message", {"contact_id": "c1"}),
            ("append_message", {**base, "metadata": "not an object"}),
        ]:
            text = await error(client, name, **arguments)
            assert name in text
        assert (await call(client, "list_messages", contact_id="c1"))["messages"] == []
        assert (await call(client, "append_message", **base))["content"] == "hi"


@pytest.mark.parametrize("mode", MODES)
async def test_post_as_contact_channel_errors(mode: str, db: str) -> None:
    async with Client(build_server(Settings(db=db)), mode=mode) as client:
        chat = await call(client, "open_chat", contact_id="c1", channel="whatsapp")
        part = [{"type": "text", "text": "hello"}]
        said = await error(client, "post_as_contact", contact_id="c1", chat_id=chat["id"], message=part)
        assert "supports only custom channels" in said
        # what to do instead (a model gave up, or tried again): an agent developer's review
        assert said.endswith("store such a message with append_message (role user, its channel, and this chat_id)")
        await call(
            client, "append_message", contact_id="c1", channel="voice", role="user", content="a", chat_id=chat["id"]
        )
        await call(
            client, "append_message", contact_id="c1", channel="widget", role="user", content="b", chat_id=chat["id"]
        )
        text = await error(client, "post_as_contact", contact_id="c1", chat_id=chat["id"], message=part)
        assert "several custom channels" in text and "(voice)" in text and "(widget)" in text
        channels = (await call(client, "list_chats", contact_id="c1"))["chats"][0]["channels"]
        widget = next(c for c in channels if c["name"] == "widget")
        posted = await call(
            client, "post_as_contact", contact_id="c1", chat_id=chat["id"], message=part, channel_id=widget["id"]
        )
        assert posted["channel"] == "widget"
        said = "2026-01-02T03:04:05.123456Z"  # when it was said, as an append takes it
        into_widget = {"contact_id": "c1", "chat_id": chat["id"], "message": part, "channel_id": widget["id"]}
        assert (await call(client, "post_as_contact", **into_widget, created_at=said))["created_at"] == said
        assert "created_at must carry a timezone" in await error(
            client, "post_as_contact", **into_widget, created_at="2026-01-02T03:04:05"
        )
        whatsapp = next(c for c in channels if c["name"] == "whatsapp")
        assert "is not a custom channel" in await error(
            client, "post_as_contact", contact_id="c1", chat_id=chat["id"], message=part, channel_id=whatsapp["id"]
        )


ODD_IDS = ["+31612345678", "a@b.com", "a/b", "%2F", "+31 6 1234", "émile ü", "🦊", "x" * 256]


@pytest.mark.parametrize("mode", MODES)
async def test_resources_round_trip_percent_encoded_contact_ids(mode: str, db: str) -> None:
    from chatdock.server.mcp.resources import CONTEXT_URI, TRANSCRIPT_URI, contact_uri

    async with Client(build_server(Settings(db=db)), mode=mode) as client:
        silent = await client.read_resource(contact_uri(TRANSCRIPT_URI, "+31699999999"))  # as get_context's text
        assert silent.contents[0].text == "(no messages yet)"  # type: ignore[union-attr]
        for contact in ODD_IDS:
            await call(
                client, "append_message", contact_id=contact, channel="sms", role="user", content=f"I am {contact}"
            )
            transcript = await client.read_resource(contact_uri(TRANSCRIPT_URI, contact))
            assert transcript.contents[0].text == f"USER: I am {contact}"  # type: ignore[union-attr]
            assert transcript.contents[0].mime_type == "text/plain"
            context = await client.read_resource(contact_uri(CONTEXT_URI, contact))
            assert context.contents[0].mime_type == "application/json"
            body = json.loads(context.contents[0].text)  # type: ignore[union-attr]
            assert body["contact_id"] == contact and body["formatted"] == f"USER: I am {contact}"
        assert contact_uri(TRANSCRIPT_URI, "+31612345678") == "chatdock://contacts/%2B31612345678/transcript"
        assert contact_uri(TRANSCRIPT_URI, "a@b.com") == "chatdock://contacts/a%40b.com/transcript"
        listed = [r.uri for r in (await client.list_resources()).resources]
        assert contact_uri(TRANSCRIPT_URI, "x" * 256) == listed[0]
        assert set(listed) == {contact_uri(TRANSCRIPT_URI, c) for c in ODD_IDS}
        for bad, said in (
            ("chatdock://contacts/a%0Ab/transcript", "control characters"),
            ("chatdock://contacts/" + "x" * 300 + "/context", "contact_id must be 1 to 256 characters, got 300"),
        ):
            with pytest.raises(MCPError) as refused:
                await client.read_resource(bad)
            assert refused.value.error.code == INVALID_PARAMS and said in refused.value.error.message, refused.value


@pytest.mark.parametrize("mode", MODES)
async def test_prompt_hands_over_the_transcript(mode: str, db: str) -> None:
    async with Client(build_server(Settings(db=db)), mode=mode) as client:
        await call(client, "append_message", contact_id="c1", channel="sms", role="user", content="Where is my parcel?")
        prompt = await client.get_prompt("continue_conversation", {"contact_id": "c1"})
        text = prompt.messages[0].content.text  # type: ignore[union-attr]
        assert "USER: Where is my parcel?" in text and "c1" in text
        for arguments, said in (
            ({}, "continue_conversation: missing contact_id; it takes contact_id, agent_id"),
            ({"contact_id": "c1", "agent": "x"}, "unknown argument 'agent'; it takes contact_id, agent_id"),
            ({"contact_id": "a\nb"}, "contact_id must not contain control characters"),
        ):
            with pytest.raises(MCPError) as refused:
                await client.get_prompt("continue_conversation", arguments)
            assert refused.value.error.code == INVALID_PARAMS and said in refused.value.error.message, refused.value
        with pytest.raises(MCPError) as refused:
            await client.get_prompt("continue", {"contact_id": "c1"})
        assert "no prompt named 'continue'; prompts/list names them: continue_conversation" in str(refused.value)


async def test_a_listener_is_told_of_every_write_of_another_client(db: str) -> None:
    async with open_store(db) as store:
        server = build_server(Settings(), store=store)
        transcript = "chatdock://contacts/%2B31612345678/transcript"
        context = "chatdock://contacts/%2B31612345678/context"
        other = "chatdock://contacts/someone-else/transcript"
        received: list[str] = []
        async with Client(server) as listener, Client(server) as writer:
            async with listener.listen(resource_subscriptions=[transcript, context, other]) as subscription:

                async def collect() -> None:
                    async for event in subscription:
                        assert isinstance(event, ResourceUpdated)
                        received.append(event.uri)

                async with anyio.create_task_group() as group:
                    group.start_soon(collect)
                    stored = await call(
                        writer, "append_message", contact_id="+31612345678", channel="sms", role="user", content="hi"
                    )
                    chat = await call(writer, "open_chat", contact_id="+31612345678", channel="voice")
                    await call(
                        writer,
                        "post_as_contact",
                        contact_id="+31612345678",
                        chat_id=chat["id"],
                        message=[{"type": "text", "text": "hello"}],
                    )
                    await call(writer, "delete_message", message_id=stored["id"])
                    await call(writer, "forget_contact", contact_id="+31612345678")
                    with anyio.fail_after(5):
                        while received.count(transcript) < 5:  # each of the five writes, open_chat's too
                            await anyio.sleep(0.01)
                    text = (await listener.read_resource(transcript)).contents[0].text  # type: ignore[union-attr]
                    assert text == "(no messages yet)"  # forgotten
                    group.cancel_scope.cancel()
        assert received.count(transcript) == 5 and received.count(context) == 5
        assert other not in received


async def test_listed_schemas_are_compact_and_mean_what_pydantic_meant() -> None:
    from jsonschema import Draft202012Validator
    from mcp.server.mcpserver import MCPServer

    server = build_server(Settings())
    original = {tool.name: tool for tool in await MCPServer.list_tools(server)}
    async with Client(server) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    samples: list[Any] = [
        {},
        {"contact_id": "c"},
        {"contact_id": None},
        {"contact_id": "c", "agent_id": None, "chat_id": None, "limit": 5},
        {"contact_id": "c", "roles": ["user"], "channels": ["sms"]},
        {"contact_id": "c", "roles": ["robot"], "channels": ["SMS!"]},
        {"contact_id": "c", "roles": None, "max_chars": 0},
        {"contact_id": "c", "channel": "sms", "role": "user", "content": "x", "metadata": {"a": 1}},
        {"contact_id": "c", "channel": "sms", "role": "user", "content": "x", "metadata": "no"},
        {"contact_id": "c", "chat_id": "x", "message": [{"text": "a", "start_timestamp": None}]},
        {"contact_id": "c", "chat_id": "x", "message": [{"text": "a", "start_timestamp": "soon"}]},
        {"contact_id": "c", "chat_id": "x", "message": [{"text": "a", "colour": 1}]},
        {"chat_id": "x", "status": "DONE"},
        {"message_id": 5},
    ]
    for name, tool in listed.items():
        before = original[name]
        model = server.output_model(name)  # its result is dumped from this model, whose schema the tool declares
        assert (model is None) is (name == "get_context"), name  # the transcript alone, no schema (results.py)
        forms: list[tuple[dict[str, Any] | None, dict[str, Any]]] = [(tool.input_schema, before.input_schema)]
        if model is not None:
            forms.append((tool.output_schema, model.model_json_schema()))
        for compacted, full in forms:
            assert full is not None and compacted is not None
            text = json.dumps(compacted)
            assert "$ref" not in text and '"title"' not in text and '{"type": "null"}' not in text
            assert len(text) < len(json.dumps(full))
            for sample in samples:
                assert Draft202012Validator(compacted).is_valid(sample) == Draft202012Validator(full).is_valid(
                    sample
                ), (
                    name,
                    sample,
                )
