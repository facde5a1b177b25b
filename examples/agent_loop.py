"""One agent turn without an LLM, against a real `chatdock serve` this script starts over stdio.

    python examples/agent_loop.py

It stores the user's message, fetches the context, builds the chat array a
model would get, and stores the reply (here a canned one, where your LLM's
answer would go).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

CONTACT = "+31612345678"


def chatdock() -> StdioServerParameters:
    command = shutil.which("chatdock")
    if command is None:
        sys.exit("chatdock is not on PATH: run `pip install -e .` in the project first")
    # :memory: keeps this demo's data only while the server runs.
    return StdioServerParameters(command=command, args=["serve", "--db", ":memory:"])


async def main() -> None:
    async with Client(chatdock()) as client:
        # 1. The user's message arrives (from your channel wiring) and is stored.
        await client.call_tool(
            "append_message",
            {"contact_id": CONTACT, "channel": "whatsapp", "role": "user", "content": "When does my order arrive?"},
        )
        # 2. Before the model runs, fetch what chatdock remembers of this contact.
        # include_messages: the rows for the application (by default the result is the transcript alone)
        result = await client.call_tool("get_context", {"contact_id": CONTACT, "limit": 20, "include_messages": True})
        context = result.structured_content or {}
        # 3. The chat array a model would get: a system prompt, then the history.
        chat = [{"role": "system", "content": "You are a helpful support agent."}]
        chat += [{"role": m["role"], "content": m["content"]} for m in context["messages"]]
        print("model input:", json.dumps(chat, indent=2))
        # 4. The model's answer (canned here) is stored as the assistant's turn.
        reply = "Your order ships tomorrow."
        await client.call_tool(
            "append_message",
            {
                "contact_id": CONTACT,
                "channel": "whatsapp",
                "role": "assistant",
                "content": reply,
                "agent_id": "support",
            },
        )
        final = await client.call_tool("get_context", {"contact_id": CONTACT})
        print("transcript:")
        print(final.content[0].text)  # type: ignore[union-attr]  # the text is the transcript


if __name__ == "__main__":
    asyncio.run(main())
