"""A LiveKit Agents voice agent whose calls chatdock keeps: two calls of one caller, and a WhatsApp message.

    python examples/livekit_memory.py

It makes a key in a temporary database, starts `chatdock serve --http` on a free loopback port, and runs two
calls of the caller +15550100 through LiveKit's own `AgentSession` in text mode (`session.run(user_input=...)`,
the caller's words as a speech-to-text model would hand them over), with a `ChatdockAgent` and a scripted model
in place of the LLM: nothing leaves this machine. During the second call the caller also sends a WhatsApp message
(as a webhook would POST it to /chats). Then it reads the caller's calls over REST and prints them, and what the
model read before its last reply: the first call, the second so far, and the WhatsApp message.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, AgentSession, APIConnectOptions, NotGivenOr, llm
from livekit.agents.llm import ChatChunk, ChoiceDelta

from chatdock.client import ChatdockClient
from chatdock.integrations.livekit import ChatdockAgent, ChatdockMemory

CALLER = "+15550100"
INSTRUCTIONS = "You answer the phone for Acme Parcels. Be brief."


class ScriptedLLM(llm.LLM[Any]):
    """Stands in for the model: answers each request with the next scripted reply (or fails with a scripted
    error, as a provider's outage does), and keeps the chat context of every request (what a real model would
    have read). The tests of the LiveKit integration run it too."""

    def __init__(self, *replies: str | Exception) -> None:
        super().__init__()
        self.replies = list(replies)
        self.requests: list[llm.ChatContext] = []

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        self.requests.append(chat_ctx.copy())
        reply = self.replies.pop(0)
        return ScriptedStream(self, reply, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class ScriptedStream(llm.LLMStream):
    def __init__(self, model: ScriptedLLM, reply: str | Exception, **options: Any) -> None:
        super().__init__(model, **options)
        self.reply = reply

    async def _run(self) -> None:
        if isinstance(self.reply, Exception):
            raise self.reply
        for word in re.findall(r"\S+\s*", self.reply):  # a word at a time, as a model streams
            self._event_ch.send_nowait(ChatChunk(id="scripted", delta=ChoiceDelta(role="assistant", content=word)))


async def call(client: ChatdockClient, model: ScriptedLLM, turns: list[str], between: Any = None) -> None:
    """One call: a session whose agent keeps the call in chatdock; `between` runs after the first turn."""
    memory = ChatdockMemory(client, CALLER)
    async with memory, AgentSession(llm=model) as session:
        await session.start(ChatdockAgent(memory, instructions=INSTRUCTIONS))
        for number, turn in enumerate(turns):
            await session.run(user_input=turn)
            if number == 0 and between is not None:
                await between()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main() -> None:
    chatdock = shutil.which("chatdock") or sys.exit("chatdock is not on PATH: run `pip install -e .` first")
    with tempfile.TemporaryDirectory() as folder:
        db = str(Path(folder) / "chatdock.db")
        create = [chatdock, "keys", "create", "--db", db, "--org", "acme", "--name", "voice-agent"]
        key = subprocess.run(create, capture_output=True, text=True, check=True).stdout.strip()
        port = free_port()
        serve = [chatdock, "serve", "--http", "--db", db, "--port", str(port)]
        server = subprocess.Popen(serve, stdout=subprocess.DEVNULL)
        try:
            await two_calls(f"http://127.0.0.1:{port}", key)
        finally:
            server.terminate()
            server.wait(10)


async def two_calls(base: str, key: str) -> None:
    for _ in range(100):  # wait until /healthz answers
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    async with ChatdockClient(base, api_key=key) as client:
        await call(
            client,
            ScriptedLLM("Sorry to hear that, Dana. Parcel 4471 is at the Leeds depot.", "Done: Saturday morning."),
            ["Hi, it's Dana. My parcel 4471 hasn't arrived.", "Can it come on Saturday?"],
        )

        async def whatsapp() -> None:  # the caller types on WhatsApp while on the phone; a webhook stores it
            sent = await rest.post(
                "/chats",
                json={"contact_id": CALLER, "channel": "whatsapp", "role": "user", "content": "Gate code 4921."},
            )
            sent.raise_for_status()
            await asyncio.sleep(0.5)  # the caller says so a moment later

        second = ScriptedLLM("Welcome back, Dana. It's booked for Saturday morning.", "Got it, the driver has it.")
        async with httpx2.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}) as rest:
            await call(client, second, ["Hi, it's Dana again.", "I've texted you the gate code."], whatsapp)

            # the caller's calls, read over REST as any back end would
            chats = (await rest.get(f"/contacts/{quote(CALLER, safe='')}/chats")).json()["chats"]
            for number, chat in enumerate(sorted(chats, key=lambda chat: chat["created_at"]), start=1):
                query = {"contact_id": CALLER, "chat_id": chat["id"], "limit": 50}
                messages = (await rest.get("/chats", params=query)).json()["messages"]
                print(f"call {number} on {chat['channels'][0]['name']}: {chat['status']}, {len(messages)} messages")
                for message in reversed(messages):
                    print(f"  {message['role'].upper()}: {message['content']}")

    print("what the model read before its last reply of call 2:")
    for item in second.requests[-1].items:
        if isinstance(item, llm.ChatMessage):
            text = (item.text_content or "").replace("\n", "\n    ")
            print(f"  {item.role.upper()}: {text}")


if __name__ == "__main__":
    asyncio.run(main())
