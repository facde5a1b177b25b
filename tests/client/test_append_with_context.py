"""`append_message` and `post_as_contact` with `context_limit`: the write and the contact's context in one round
trip, through the MCP tools in both protocol eras (the REST body and the client: tests/client/test_client.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.client import Client

from chatdock.server.mcp.app import Settings, build_server
from chatdock.storage import open_store
from tests.transports import call, error

CALLER = "+31612345678"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_write_answers_with_the_context_a_read_after_it_would_give(tmp_path: Path, mode: str) -> None:
    async with open_store(str(tmp_path / "chatdock.db")) as store:
        async with Client(build_server(Settings(), store=store), mode=mode) as client:
            await call(client, "append_message", contact_id=CALLER, channel="whatsapp", role="user", content="Hi")
            chat = await call(client, "open_chat", contact_id=CALLER, channel="voice")
            posted = await call(
                client,
                "post_as_contact",
                contact_id=CALLER,
                chat_id=chat["id"],
                message=[{"type": "text", "text": "Is my order in?", "start_timestamp": 0.2, "end_timestamp": 1.1}],
                context_limit=5,
            )
            read = await call(client, "get_context", include_messages=True, contact_id=CALLER, limit=5)
            assert posted["context"] == read  # what a get_context right after the write returns
            assert read["formatted"] == "USER: Hi\nUSER: Is my order in?"

            result = await client.call_tool(
                "append_message",
                {
                    "contact_id": CALLER,
                    "channel": "voice",
                    "role": "assistant",
                    "content": "It ships today.",
                    "chat_id": chat["id"],
                    "context_limit": 2,
                },
            )
            assert result.structured_content is not None
            context = result.structured_content["context"]
            assert context["formatted"] == "USER: Is my order in?\nASSISTANT: It ships today."
            assert (context["truncated"], context["messages"][-1]["id"]) == (False, result.structured_content["id"])
            # the model reads the message as JSON without the context, then the transcript once
            [text] = result.content
            assert text.type == "text"
            first_line, transcript = text.text.split("\n", 1)
            assert '"context"' not in first_line and '"content":"It ships today."' in first_line
            assert transcript == context["formatted"]

            plain = await call(client, "append_message", contact_id=CALLER, channel="sms", role="user", content="ok")
            assert "context" not in plain  # asked for nothing, answered as before

            for wrong, said in [(0, "got 0"), (201, "got 201"), ("ten", "valid integer")]:
                message = await error(
                    client, "append_message", contact_id=CALLER, channel="sms", role="user", content="no",
                    context_limit=wrong,
                )  # fmt: skip
                assert "context_limit" in message and said in message
            assert "no" not in [
                m["content"] for m in (await call(client, "list_messages", contact_id=CALLER))["messages"]
            ]
