"""A voice agent's side: listen on a caller's transcript, post their utterances with timestamps.

    python examples/voice_agent.py

It starts `chatdock serve` over stdio, opens a chat on the custom `voice`
channel, listens on the caller's transcript resource, and posts each
utterance as the contact (with start and end seconds into the call). On
every update it re-reads the transcript and shows the system prompt the
voice agent would use for its next turn.
"""

from __future__ import annotations

import asyncio
import shutil
import sys

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.subscriptions import ResourceUpdated

CALLER = "+31612345678"
TRANSCRIPT = "chatdock://contacts/%2B31612345678/transcript"
UTTERANCES = [
    [("Hi, I'm calling about", 0.0, 1.4), ("my order 4471.", 1.5, 2.6)],
    [("It still hasn't arrived.", 3.1, 4.5)],
]


async def main() -> None:
    command = shutil.which("chatdock") or sys.exit("chatdock is not on PATH: run `pip install -e .` first")
    async with Client(StdioServerParameters(command=command, args=["serve", "--db", ":memory:"])) as client:
        chat = (await client.call_tool("open_chat", {"contact_id": CALLER, "channel": "voice"})).structured_content
        assert chat is not None
        async with client.listen(resource_subscriptions=[TRANSCRIPT]) as updates:
            for utterance in UTTERANCES:
                parts = [{"type": "text", "text": t, "start_timestamp": s, "end_timestamp": e} for t, s, e in utterance]
                await client.call_tool(
                    "post_as_contact", {"contact_id": CALLER, "chat_id": chat["id"], "message": parts}
                )
                with anyio.fail_after(5):
                    event = await anext(aiter(updates))
                assert isinstance(event, ResourceUpdated)  # the only kind of event this listen asked for
                transcript = (await client.read_resource(event.uri)).contents[0]
                print("--- transcript updated; next turn's system prompt:")
                print(f"You are the voice agent on a call with {CALLER}. The conversation so far:")
                print(getattr(transcript, "text", ""))


if __name__ == "__main__":
    asyncio.run(main())
