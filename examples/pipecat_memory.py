"""A Pipecat voice bot that remembers its callers through chatdock: two calls, then the caller's history.

    python examples/pipecat_memory.py

It creates a key for organization `acme` in a temporary database, starts `chatdock serve --http` on a free
loopback port, and runs two calls through a Pipecat pipeline (user context aggregator, ChatdockMemoryService,
LLM, assistant context aggregator) under Pipecat's own PipelineWorker and WorkerRunner. No audio and no
network LLM: the caller's turns are the frames a transport and an STT service would push (VAD, a proposed
turn start, the transcript, a proposed turn end), and a scripted model stands in for the LLM. It prints the
context the LLM got at the start of the second call (the first call is in it), then the caller's history as
read back over REST: each call's chat with its status, and every turn with its timestamps.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMRunFrame,
    LLMTextFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    AssistantTurnStoppedMessage,
    LLMAssistantAggregator,
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies
from pipecat.utils.time import time_now_iso8601
from pipecat.workers.runner import WorkerRunner

from chatdock.client import ChatdockClient
from chatdock.integrations.pipecat import ChatdockMemoryService

CALLER = "+31612345678"
SYSTEM = "You are the voice agent of a lamp shop. Be brief."

# each call: what the bot says first, then (what the caller says, when they spoke (seconds), the bot's answer)
CALLS = [
    (
        "Lamp shop, how can I help?",
        [
            ("Hi, I ordered a desk lamp last week.", [(0.4, 2.6)], "I see order 4471, a desk lamp."),
            ("When does it arrive?", [(4.1, 5.3)], "Tomorrow before noon."),
        ],
    ),
    (
        "Lamp shop, welcome back.",
        [("It's me again, about my lamp.", [(0.6, 2.2)], "Your desk lamp from order 4471 arrives tomorrow.")],
    ),
]


class ScriptedLLM(LLMService):
    """The stand-in for a real LLM service: answers each run with the next line of its script and keeps a copy of
    the messages each run was given, so the example can show them. The tests of the Pipecat integration run it
    too."""

    def __init__(self, replies: Sequence[str]) -> None:
        unset: dict[str, Any] = dict.fromkeys(
            [
                "system_instruction",
                "temperature",
                "max_tokens",
                "top_p",
                "top_k",
                "frequency_penalty",
                "presence_penalty",
                "seed",
                "filter_incomplete_user_turns",
                "user_turn_completion_config",
            ]
        )
        super().__init__(settings=LLMSettings(model="scripted", **unset))
        self.replies = list(replies)
        self.received: list[list[Any]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            self.received.append(copy.deepcopy(list(frame.context.get_messages())))
            await self.answer(self.replies[len(self.received) - 1])
        else:
            await self.push_frame(frame, direction)

    async def answer(self, reply: str) -> None:
        """One run's answer, between the frames that open and close an LLM response."""
        await self.push_frame(LLMFullResponseStartFrame())
        await self.push_frame(LLMTextFrame(reply))
        await self.push_frame(LLMFullResponseEndFrame())


def caller_turn(text: str, speech: list[tuple[float, float]], call_start: float) -> list[Frame]:
    """The frames a transport and an STT service with its own turn detection push for one turn of the caller:
    the VAD frames of each stretch of speech in it (`speech`: their (start, stop) seconds from `call_start`, a
    wall-clock time; a VAD frame is made `start_secs` after the speech started and `stop_secs` after it
    stopped), a proposed turn start, the transcript and a proposed turn end."""
    vad = [
        (
            VADUserStartedSpeakingFrame(start_secs=0.2, timestamp=call_start + start + 0.2),
            VADUserStoppedSpeakingFrame(stop_secs=0.8, timestamp=call_start + stop + 0.8),
        )
        for start, stop in speech
    ]
    frames: list[Frame] = [vad[0][0]] if vad else []
    frames.append(ProposedUserStartedSpeakingFrame())
    for number, (began, ended) in enumerate(vad):
        if number:
            frames.append(began)
        frames.append(ended)
    frames.append(TranscriptionFrame(text, CALLER, time_now_iso8601()))
    frames.append(ProposedUserStoppedSpeakingFrame())
    return frames


async def run_call(client: ChatdockClient, greeting: str, turns: list[Any]) -> tuple[ScriptedLLM, str | None]:
    """One call: the bot greets, the caller and the bot take turns, the call ends. The LLM and the call's chat."""
    memory = ChatdockMemoryService(client=client, contact_id=CALLER, agent_id="lamp-bot")
    llm = ScriptedLLM([greeting, *(answer for _, _, answer in turns)])
    user, assistant = LLMContextAggregatorPair(
        LLMContext(messages=[{"role": "system", "content": SYSTEM}]),
        user_params=LLMUserAggregatorParams(user_turn_strategies=ExternalUserTurnStrategies()),
    )
    worker = PipelineWorker(Pipeline([user, memory, llm, assistant]), enable_rtvi=False)
    started = asyncio.Event()
    answered: asyncio.Queue[str] = asyncio.Queue()

    async def on_pipeline_started(worker: PipelineWorker, frame: Frame) -> None:
        started.set()

    async def on_assistant_turn_stopped(
        aggregator: LLMAssistantAggregator, message: AssistantTurnStoppedMessage
    ) -> None:
        answered.put_nowait(message.content)

    # add_event_handler is what Pipecat's @event_handler decorator calls (the decorator itself is untyped)
    worker.add_event_handler("on_pipeline_started", on_pipeline_started)
    assistant.add_event_handler("on_assistant_turn_stopped", on_assistant_turn_stopped)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 10)
    await worker.queue_frame(LLMRunFrame())  # the bot speaks first
    print(f"  bot:    {await asyncio.wait_for(answered.get(), 10)}")
    call_start = memory.started_at
    assert call_start is not None
    for text, speech, _ in turns:
        print(f"  caller: {text}")
        await worker.queue_frames(caller_turn(text, speech, call_start.timestamp()))
        print(f"  bot:    {await asyncio.wait_for(answered.get(), 10)}")
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(running, 30)  # the memory service stores what is left and closes the chat
    return llm, memory.chat_id


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main() -> None:
    logger.remove()  # Pipecat logs every frame at DEBUG; keep its warnings only
    logger.add(sys.stderr, level="WARNING")
    chatdock = shutil.which("chatdock") or sys.exit("chatdock is not on PATH: run `pip install -e .[pipecat]` first")
    folder = tempfile.mkdtemp(prefix="chatdock-example-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # with the database in it, however this ends
    db = str(Path(folder) / "chatdock.db")
    key = subprocess.run(
        [chatdock, "keys", "create", "--db", db, "--org", "acme", "--name", "voice-bot"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen([chatdock, "serve", "--http", "--db", db, "--port", str(port)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):  # wait until /healthz answers
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        async with ChatdockClient(base, key) as client:
            chats: list[str | None] = []
            for number, (greeting, turns) in enumerate(CALLS, 1):
                print(f"--- call {number}")
                llm, chat_id = await run_call(client, greeting, turns)
                chats.append(chat_id)
                if number == 2:
                    print("the second call's LLM saw:")
                    for message in llm.received[0]:
                        content = str(message["content"]).replace("\n", "\n    ")
                        print(f"  {message['role'].upper()}: {content}")

            print(f"--- {CALLER}'s history, read back over REST")
            statuses = {chat.id: chat.status for chat in (await client.list_chats(CALLER)).chats}
            for number, chat_id in enumerate(chats, 1):
                assert chat_id is not None
                messages = (await client.list_messages(CALLER, chat_id=chat_id)).messages[::-1]
                print(f"call {number}: {statuses[chat_id]}, {len(messages)} messages (chat {chat_id})")
                for message in messages:
                    timed = "".join(f" [{part.start_timestamp}s-{part.end_timestamp}s]" for part in message.parts)
                    timed = timed if message.role == "user" else ""
                    print(f"  {message.created_at:%H:%M:%S} {message.channel} {message.role}{timed}: {message.content}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
