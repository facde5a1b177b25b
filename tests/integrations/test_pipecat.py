"""ChatdockMemoryService in Pipecat's own machinery: the user and assistant context aggregators, a
PipelineWorker under a WorkerRunner, turns driven by the frames a transport and an STT service push, and a
scripted stand-in for the LLM (the only fake, the one examples/pipecat_memory.py runs). chatdock is real:
`chatdock serve --http` on 127.0.0.1 with a key, or the store in this process (`ChatdockClient.embedded`), on
SQLite and PostgreSQL where it is cheap."""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chatdock.client import ChatdockClient
from chatdock.storage import Context, Message
from tests.integrations.voice import (
    chat_messages,
    chatdock,
    load_example,
    restartable_chatdock,
    until,
)
from tests.test_examples import run_example
from tests.transports import create_key, restartable_server

with warnings.catch_warnings():
    # pipecat imports audioop, which Python 3.11 reports as deprecated (it goes in 3.13), on first import only
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from pipecat.frames.frames import (
        EagerTranscriptionFrame,
        EndFrame,
        Frame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMMessagesUpdateFrame,
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
    from pipecat.processors.aggregators.llm_context import LLMContext, LLMContextMessage
    from pipecat.processors.aggregators.llm_response_universal import (
        AssistantTurnStoppedMessage,
        LLMAssistantAggregator,
        LLMAssistantAggregatorParams,
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
        UserTurnStoppedMessage,
    )
    from pipecat.turns.user_start import ExternalUserTurnStartStrategy
    from pipecat.turns.user_stop import ExternalUserTurnStopStrategy
    from pipecat.turns.user_turn_strategies import EagerUserTurnStrategies, UserTurnStrategies
    from pipecat.utils.context.llm_context_summarization import (
        LLMAutoContextSummarizationConfig,
        LLMContextSummaryConfig,
    )
    from pipecat.utils.time import time_now_iso8601
    from pipecat.workers.runner import WorkerRunner

    from chatdock.integrations.pipecat import HISTORY_PROMPT, OTHER_CHANNELS_PROMPT, ChatdockMemoryService, LostWrite

    example = load_example("pipecat_memory")

CALLER = "+31612345678"
SYSTEM = "You are the lamp shop's voice agent."
BOUND = 10.0  # seconds any one awaited thing may take before the test fails; a turn takes milliseconds


class ScriptedLLM(example.ScriptedLLM):  # type: ignore[name-defined,misc]  # loaded from the example file
    """The example's stand-in model, which answers each run with the next line of its script and keeps a copy of
    the messages each run was given; and: `fail_at` runs push a (non-fatal) ErrorFrame first, as a provider's
    hiccup does, and a line given as a list is streamed a piece at a time, the model stopping after the first
    piece for as long as `go_on` is not set (a slow model, in the middle of its answer)."""

    def __init__(self, replies: list[str | list[str]], fail_at: tuple[int, ...] = ()) -> None:
        super().__init__(replies)
        self.fail_at = fail_at
        self.go_on = asyncio.Event()

    async def answer(self, reply: str | list[str]) -> None:
        if len(self.received) - 1 in self.fail_at:
            await self.push_error("the stand-in model had a hiccup")
        if isinstance(reply, str):
            await super().answer(reply)
            return
        await self.push_frame(LLMFullResponseStartFrame())
        await self.push_frame(LLMTextFrame(reply[0]))
        await self.go_on.wait()
        for piece in reply[1:]:
            await self.push_frame(LLMTextFrame(piece))
        await self.push_frame(LLMFullResponseEndFrame())


class Call:
    """One call through a bot's pipeline: user aggregator, the memory service, the stand-in LLM, assistant
    aggregator. Turns come as an STT service with its own turn detection sends them (a proposed start, the
    transcript, a proposed stop), optionally with the VAD frames of the speech."""

    def __init__(
        self,
        memory: ChatdockMemoryService,
        llm: ScriptedLLM,
        messages: list[LLMContextMessage] | None = None,
        assistant_params: LLMAssistantAggregatorParams | None = None,
    ) -> None:
        self.memory = memory
        self.llm = llm
        self.context = LLMContext(messages=messages or [{"role": "system", "content": SYSTEM}])
        strategies = UserTurnStrategies(
            start=[ExternalUserTurnStartStrategy()], stop=[ExternalUserTurnStopStrategy(timeout=0.05)]
        )
        self.user, self.assistant = LLMContextAggregatorPair(
            self.context,
            user_params=LLMUserAggregatorParams(user_turn_strategies=strategies),
            assistant_params=assistant_params,
        )
        user, assistant = self.user, self.assistant
        self.bot_turns: asyncio.Queue[str] = asyncio.Queue()
        assistant.add_event_handler("on_assistant_turn_stopped", self._bot_turn)
        self.worker = PipelineWorker(
            Pipeline([user, memory, llm, assistant]), cancel_on_idle_timeout=False, enable_rtvi=False
        )
        self.started = asyncio.Event()
        self.worker.add_event_handler("on_pipeline_started", self._started)
        self.running: asyncio.Task[None] | None = None

    async def _bot_turn(self, aggregator: LLMAssistantAggregator, message: AssistantTurnStoppedMessage) -> None:
        self.bot_turns.put_nowait(message.content)

    async def _started(self, worker: PipelineWorker, frame: Frame) -> None:
        self.started.set()

    async def __aenter__(self) -> Call:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        self.running = asyncio.create_task(runner.run())
        await asyncio.wait_for(self.started.wait(), BOUND)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.running is not None
        if not self.running.done():  # the test failed before ending the call
            await self.worker.cancel()
            await asyncio.wait_for(self.running, BOUND)

    def saying(self, piece: str) -> asyncio.Event:
        """Set once the model's piece of text `piece` reaches the assistant aggregator: the bot is in the middle
        of its answer."""
        said = asyncio.Event()

        def after(aggregator: LLMAssistantAggregator, frame: Frame) -> None:
            if isinstance(frame, LLMTextFrame) and frame.text == piece:
                said.set()

        self.assistant.add_event_handler("on_after_process_frame", after)
        return said

    async def greet(self) -> str:
        """The bot speaks first, as a bot's on_client_connected handler has it do."""
        await self.worker.queue_frame(LLMRunFrame())
        return await self.reply()

    async def say(self, text: str, *, speech: list[tuple[float, float]] | None = None) -> str:
        """The caller's turn, and the bot's answer. `speech`: the (start, stop) seconds, from the call's start,
        that the VAD frames report."""
        await self.worker.queue_frames(self.turn(text, speech or []))
        return await self.reply()

    def turn(self, text: str, speech: list[tuple[float, float]]) -> list[Frame]:
        """The frames of the caller's turn, as the example pushes them."""
        started = self.memory.started_at
        assert started is not None
        frames: list[Frame] = example.caller_turn(text, speech, started.timestamp())
        return frames

    async def reply(self) -> str:
        return await asyncio.wait_for(self.bot_turns.get(), BOUND)

    async def end(self) -> None:
        assert self.running is not None
        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self.running, 30)

    async def cancel(self) -> None:
        assert self.running is not None
        await self.worker.cancel()
        await asyncio.wait_for(self.running, 30)


def memory_for(client: ChatdockClient, **settings: Any) -> ChatdockMemoryService:
    return ChatdockMemoryService(client=client, contact_id=CALLER, agent_id="lamp-bot", **settings)


def news_of(memory: ChatdockMemoryService) -> asyncio.Queue[list[Message]]:
    """What the call tells of other channels (`on_other_channel_messages`), each telling as it comes."""
    told: asyncio.Queue[list[Message]] = asyncio.Queue()

    async def on_other_channel_messages(service: ChatdockMemoryService, messages: list[Message]) -> None:
        told.put_nowait(messages)

    memory.add_event_handler("on_other_channel_messages", on_other_channel_messages)
    return told


def system_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [str(message["content"]) for message in messages if message["role"] == "system"]


@pytest.fixture(params=["http", "embedded"])
async def client(request: pytest.FixtureRequest, db: str) -> AsyncIterator[ChatdockClient]:
    """chatdock over HTTP with a key (a real `chatdock serve --http` on 127.0.0.1), or in this process."""
    async with chatdock(request.param, db, "acme", "pipecat") as dock:
        yield dock.client


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[ChatdockClient]:
    async with ChatdockClient.embedded(db=str(tmp_path / "chatdock.db"), org="acme") as opened:
        yield opened


async def test_a_call_is_stored_and_the_next_call_starts_with_it(client: ChatdockClient) -> None:
    first = ScriptedLLM(["Hello, lamp shop.", "I see order 4471.", "Tomorrow before noon."])
    async with Call(memory_for(client), first) as call:
        assert await call.greet() == "Hello, lamp shop."
        assert await call.say("Hi, I ordered a lamp last week.") == "I see order 4471."
        assert await call.say("When does it arrive?") == "Tomorrow before noon."
        await call.end()
    chat_id = call.memory.chat_id
    # a new caller: the first run saw the bot's instructions and nothing else
    assert first.received[0] == [{"role": "system", "content": SYSTEM}]

    assert chat_id is not None
    chats = (await client.list_chats(CALLER)).chats
    assert [(chat.id, chat.status, chat.agent_id) for chat in chats] == [(chat_id, "COMPLETED", "lamp-bot")]
    assert [channel.name for channel in chats[0].channels] == ["voice"]
    stored = await chat_messages(client, CALLER, chat_id)
    assert [(message.role, message.channel, message.content) for message in stored] == [
        ("assistant", "voice", "Hello, lamp shop."),
        ("user", "voice", "Hi, I ordered a lamp last week."),
        ("assistant", "voice", "I see order 4471."),
        ("user", "voice", "When does it arrive?"),
        ("assistant", "voice", "Tomorrow before noon."),
    ]
    assert {message.agent_id for message in stored if message.role == "assistant"} == {"lamp-bot"}
    # each user turn is one part, timed in seconds from the call's start by the turn frames, in speaking order
    times = []
    for message in stored:
        if message.role == "user":
            [part] = message.parts
            assert part.text == message.content
            assert part.start_timestamp is not None and part.end_timestamp is not None
            times += [part.start_timestamp, part.end_timestamp]
    assert times == sorted(times) and times[0] >= 0 and times[-1] < 30

    second = ScriptedLLM(["Welcome back.", "Your lamp arrives tomorrow."])
    async with Call(memory_for(client), second) as call:
        assert await call.greet() == "Welcome back."
        assert await call.say("It's me again, about the lamp.") == "Your lamp arrives tomorrow."
        await call.end()
    second_chat = call.memory.chat_id
    # the first run of the second call: the bot's instructions, then the first call as one system message
    instructions, history = second.received[0]
    assert instructions == {"role": "system", "content": SYSTEM} and history["role"] == "system"
    lines = history["content"].splitlines()
    assert lines[0] == HISTORY_PROMPT
    assert [line.split("UTC] ", 1)[1] for line in lines[1:]] == [
        "ASSISTANT (voice): Hello, lamp shop.",
        "USER (voice): Hi, I ordered a lamp last week.",
        "ASSISTANT (voice): I see order 4471.",
        "USER (voice): When does it arrive?",
        "ASSISTANT (voice): Tomorrow before noon.",
    ]
    # it stays in the context for the rest of the call, once
    assert system_texts(second.received[1]) == [SYSTEM, history["content"]]
    assert second_chat is not None and second_chat != chat_id
    statuses = {chat.id: chat.status for chat in (await client.list_chats(CALLER)).chats}
    assert statuses == {chat_id: "COMPLETED", second_chat: "COMPLETED"}


async def test_a_whatsapp_message_during_the_call_reaches_the_llm_before_the_next_turn(
    client: ChatdockClient,
) -> None:
    llm = ScriptedLLM(["Hello.", "Can you send the order number?", "Got it, 4471 ships today.", "Bye."])
    memory = memory_for(client)
    arrived = news_of(memory)

    async with Call(memory, llm) as call:
        await call.greet()
        await call.say("Where is my lamp?")
        # an agent links the caller's email, whose history from last year is merged in: older history, not news
        year_ago = datetime.now(UTC) - timedelta(days=400)
        await client.append_message("ann@example.com", "email", "user", "LAST YEAR'S REFUND", created_at=year_ago)
        assert (await client.link_contacts(CALLER, "ann@example.com")).merged_messages == 1
        # the caller sends the number on WhatsApp while still on the phone (a webhook stores it over REST)
        await client.append_message(CALLER, "whatsapp", "user", "Order number: 4471")
        [message] = await asyncio.wait_for(arrived.get(), BOUND)
        assert (message.channel, message.content) == ("whatsapp", "Order number: 4471")
        assert await call.say("I just sent it to you.") == "Got it, 4471 ships today."
        await call.say("Thanks, bye.")
        await call.end()

    note = f"{OTHER_CHANNELS_PROMPT}\nUSER (whatsapp): Order number: 4471"
    # the run that answered the next turn had it, just before that turn
    assert llm.received[2][-2:] == [
        {"role": "system", "content": note},
        {"role": "user", "content": "I just sent it to you."},
    ]
    assert llm.received[1].count({"role": "system", "content": note}) == 0
    assert llm.received[3].count({"role": "system", "content": note}) == 1  # kept, once
    assert not any("LAST YEAR" in str(run) for run in llm.received)  # never told as what the caller just wrote
    # the WhatsApp message is the contact's, not the call's
    chat_id = memory.chat_id
    assert chat_id is not None
    assert [m.content for m in await chat_messages(client, CALLER, chat_id) if m.role == "user"] == [
        "Where is my lamp?",
        "I just sent it to you.",
        "Thanks, bye.",
    ]


async def test_a_message_stored_with_its_earlier_provider_time_during_the_call_reaches_the_llm(
    client: ChatdockClient,
) -> None:
    """A webhook stores a WhatsApp message with the time the provider says it was sent (examples/webhook_ingest.py
    does), minutes before the newest message of the history the call started with: it is news all the same, and
    the next run has it beside an SMS stored at the moment it arrived."""
    now = datetime.now(UTC)
    await client.append_message(CALLER, "email", "user", "About my order 4471.", created_at=now - timedelta(minutes=5))
    llm = ScriptedLLM(["Hello.", "I see both."])
    memory = memory_for(client)
    told = news_of(memory)
    async with Call(memory, llm) as call:
        await call.greet()
        await client.append_message(CALLER, "whatsapp", "user", "LATE WHATSAPP", created_at=now - timedelta(minutes=10))
        await client.append_message(CALLER, "sms", "user", "FRESH SMS")
        # the looks are done once the SMS is told: any look that found it found the WhatsApp message, stored first
        heard: list[str] = []
        while "FRESH SMS" not in heard:
            heard += [message.content for message in await asyncio.wait_for(told.get(), BOUND)]
        assert await call.say("Did you get my messages?") == "I see both."
        await call.end()
    while not told.empty():
        heard += [message.content for message in told.get_nowait()]

    # the run that answered the caller's turn had both, oldest first, just before the turn
    note = f"{OTHER_CHANNELS_PROMPT}\nUSER (whatsapp): LATE WHATSAPP\nUSER (sms): FRESH SMS"
    assert llm.received[1][-2:] == [
        {"role": "system", "content": note},
        {"role": "user", "content": "Did you get my messages?"},
    ]
    # the email was history (in the first run already), not news; and each message was told once
    assert system_texts(llm.received[0])[1].endswith("USER (email): About my order 4471.")
    assert sorted(heard) == ["FRESH SMS", "LATE WHATSAPP"]


async def test_messages_older_than_a_history_cut_by_context_limit_are_not_told_as_news(
    embedded: ChatdockClient,
) -> None:
    for index in range(6):
        await embedded.append_message(CALLER, "sms", "user", f"old message {index}")
    llm = ScriptedLLM(["Hello.", "Sure."])
    memory = memory_for(embedded, context_limit=2)
    told = news_of(memory)
    async with Call(memory, llm) as call:
        await call.greet()
        await embedded.append_message(CALLER, "whatsapp", "user", "sent during the call")
        first = await asyncio.wait_for(told.get(), BOUND)
        assert await call.say("Hi.") == "Sure."
        await call.end()
    assert [message.content for message in first] == ["sent during the call"] and told.empty()
    history = system_texts(llm.received[1])[1].splitlines()
    assert [line.split("UTC] ", 1)[1] for line in history[1:]] == [
        "USER (sms): old message 4",
        "USER (sms): old message 5",
    ]
    assert system_texts(llm.received[1])[2] == f"{OTHER_CHANNELS_PROMPT}\nUSER (whatsapp): sent during the call"


async def test_a_history_over_context_max_chars_is_left_out_not_told_as_news(embedded: ChatdockClient) -> None:
    """The caller's newest message alone is longer than context_max_chars: the history is empty, and the older
    messages are not told as news from outside the call."""
    for index in range(30):
        await embedded.append_message(CALLER, "sms", "user", f"old message {index}")
    await embedded.append_message(CALLER, "email", "user", "a long email " + "x" * 3000)
    llm = ScriptedLLM(["Hello.", "Sure."])
    memory = memory_for(embedded, context_max_chars=2000)
    told = news_of(memory)
    async with Call(memory, llm) as call:
        await call.greet()
        await call.say("Hi.")
        await embedded.append_message(CALLER, "whatsapp", "user", "sent during the call")
        first = await asyncio.wait_for(told.get(), BOUND)  # the first news of the call is the call's
        await call.end()
    assert [message.content for message in first] == ["sent during the call"] and told.empty()
    assert system_texts(llm.received[0]) == [SYSTEM]  # no history fits: none, and nothing old told as new


async def test_vad_frames_time_the_user_turns(embedded: ChatdockClient) -> None:
    llm = ScriptedLLM(["Hello.", "Sure.", "Done."])
    async with Call(memory_for(embedded), llm) as call:
        await call.greet()
        await call.say("I'd like a second lamp.", speech=[(2.8, 5.5)])
        await call.say("The same one, in red.", speech=[(8.0, 9.0), (10.0, 11.0)])
        await call.end()
    chat_id = call.memory.chat_id
    assert chat_id is not None
    parts = [message.parts[0] for message in await chat_messages(embedded, CALLER, chat_id) if message.role == "user"]
    assert [(part.start_timestamp, part.end_timestamp) for part in parts] == [
        pytest.approx((2.8, 5.5), abs=0.002),
        pytest.approx((8.0, 11.0), abs=0.002),
    ]


async def test_the_answer_under_way_when_the_call_ends_is_stored_once(embedded: ChatdockClient) -> None:
    llm = ScriptedLLM(["Hello.", "Goodbye then."])
    async with Call(memory_for(embedded), llm) as call:
        await call.greet()
        # the caller's last words and, right behind them, the end of the call: the bot's answer is still being
        # written to the context by the assistant aggregator as the EndFrame reaches it
        await call.worker.queue_frames([*call.turn("That's all, bye.", []), EndFrame()])
        assert call.running is not None
        await asyncio.wait_for(call.running, 30)
    chat_id = call.memory.chat_id
    assert chat_id is not None
    stored = await chat_messages(embedded, CALLER, chat_id)
    assert [(m.role, m.content) for m in stored] == [
        ("assistant", "Hello."),
        ("user", "That's all, bye."),
        ("assistant", "Goodbye then."),
    ]
    [chat] = (await embedded.list_chats(CALLER)).chats
    assert chat.status == "COMPLETED"


async def test_an_error_frame_during_the_call_leaves_the_chat_failed(embedded: ChatdockClient) -> None:
    llm = ScriptedLLM(["Hello.", "Sorry, say again?", "Bye."], fail_at=(1,))
    async with Call(memory_for(embedded), llm) as call:
        await call.greet()
        assert await call.say("Hello?") == "Sorry, say again?"  # a non-fatal error: the call goes on
        assert await call.say("Bye.") == "Bye."
        await call.end()
    chat_id = call.memory.chat_id
    [chat] = (await embedded.list_chats(CALLER)).chats
    assert (chat.id, chat.status) == (chat_id, "FAILED")
    assert chat_id is not None
    assert len(await chat_messages(embedded, CALLER, chat_id)) == 5


async def test_a_call_cancelled_while_the_bot_talks_keeps_what_it_said_and_is_left_canceled(
    embedded: ChatdockClient,
) -> None:
    llm = ScriptedLLM(["Hello.", "Your lamp ships today.", ["Let me look that up", " for you."]])
    call = Call(memory_for(embedded), llm)
    said = call.saying("Let me look that up")
    async with call:
        await call.greet()
        await call.say("Where is my lamp?")
        await call.worker.queue_frames(call.turn("And the invoice?", []))
        await asyncio.wait_for(said.wait(), BOUND)
        await asyncio.sleep(0.3)  # the bot talks on a while
        hung_up = datetime.now(UTC)
        # the caller hangs up while the bot is in the middle of its answer: the aggregator writes what was said
        # to the context, and the frame it pushes back up is dropped by the processors being cancelled
        await call.cancel()
    chat_id = call.memory.chat_id
    [chat] = (await embedded.list_chats(CALLER)).chats
    assert (chat.id, chat.status) == (chat_id, "CANCELED")
    assert chat_id is not None
    stored = await chat_messages(embedded, CALLER, chat_id)
    assert [m.content for m in stored] == [
        "Hello.",
        "Where is my lamp?",
        "Your lamp ships today.",
        "And the invoice?",
        "Let me look that up",
    ]
    # dated when the bot began it (its run was asked for after the caller's turn), not when it was stored at the
    # end (it was dated after the hang-up, and after a message the caller sent meanwhile); marked cut short
    asked, cut = stored[-2], stored[-1]
    assert asked.created_at < cut.created_at < hung_up - timedelta(seconds=0.2), (asked.created_at, cut.created_at)
    assert cut.metadata == {"interrupted": True}
    assert all(not m.metadata for m in stored[:-1])


async def test_a_hang_up_under_an_answer_to_an_eager_turn_keeps_it_after_the_turn(embedded: ChatdockClient) -> None:
    """With an STT service that ends turns eagerly (EagerUserTurnStrategies), the answer runs on a speculative
    context, which the confirmed turn goes on with: no other context frame comes. Cut by a hang-up, the answer
    was dated at the run before it, ahead of the caller's turn it answers (found by a review of the session's
    diff)."""
    llm = ScriptedLLM(["Hello, lamp shop.", ["Let me look", " that up for you."]])
    call = Call(memory_for(embedded), llm)
    call.user, call.assistant = LLMContextAggregatorPair(
        call.context, user_params=LLMUserAggregatorParams(user_turn_strategies=EagerUserTurnStrategies())
    )
    call.assistant.add_event_handler("on_assistant_turn_stopped", call._bot_turn)
    call.worker = PipelineWorker(
        Pipeline([call.user, call.memory, llm, call.assistant]), cancel_on_idle_timeout=False, enable_rtvi=False
    )
    call.worker.add_event_handler("on_pipeline_started", call._started)
    talking = call.saying("Let me look")
    async with call:
        await call.greet()
        await asyncio.sleep(0.05)  # dates are kept to the millisecond
        said = time_now_iso8601()
        eager = [
            ProposedUserStartedSpeakingFrame(),
            EagerTranscriptionFrame("Where is my lamp?", CALLER, said),
            TranscriptionFrame("Where is my lamp?", CALLER, said),
            ProposedUserStoppedSpeakingFrame(),
        ]
        await call.worker.queue_frames(eager)
        await asyncio.wait_for(talking.wait(), BOUND)
        await call.cancel()  # the caller hangs up while the bot talks
    chat_id = call.memory.chat_id
    assert chat_id is not None
    stored = await chat_messages(embedded, CALLER, chat_id)
    assert [(m.content, m.metadata) for m in stored] == [
        ("Hello, lamp shop.", {}),
        ("Where is my lamp?", {}),
        ("Let me look", {"interrupted": True}),
    ]


async def test_a_reply_the_caller_cuts_into_is_marked_interrupted_and_the_next_is_not(
    embedded: ChatdockClient,
) -> None:
    """The caller barges in: the aggregator ends the bot's turn with what was said, and the service stores it
    with `interrupted` in its metadata, as the LiveKit integration does; the answer that follows is whole."""
    llm = ScriptedLLM(["Hello.", ["Your lamp ships", " today."], "On Saturday, then."])
    call = Call(memory_for(embedded), llm)
    said = call.saying("Your lamp ships")
    async with call:
        await call.greet()
        await call.worker.queue_frames(call.turn("Where is my lamp?", []))
        await asyncio.wait_for(said.wait(), BOUND)
        await asyncio.sleep(0.05)  # the bot talks on a moment (dates are kept to the millisecond)
        # the caller cuts in: the aggregator ends the bot's turn with what it said so far
        await call.worker.queue_frames(call.turn("Can it come on Saturday?", []))
        assert await call.reply() == "Your lamp ships"
        assert await call.reply() == "On Saturday, then."
        await call.end()
    chat_id = call.memory.chat_id
    assert chat_id is not None
    stored = await chat_messages(embedded, CALLER, chat_id)
    assert [(m.content, m.metadata) for m in stored] == [
        ("Hello.", {}),
        ("Where is my lamp?", {}),
        ("Your lamp ships", {"interrupted": True}),
        ("Can it come on Saturday?", {}),
        ("On Saturday, then.", {}),
    ]


async def test_writes_chatdock_refuses_are_logged_once_and_the_call_goes_on(
    embedded: ChatdockClient, caplog: pytest.LogCaptureFixture
) -> None:
    llm = ScriptedLLM(["Hello.", "Sure."])
    # an agent id chatdock refuses (a caller it would refuse is a ValueError when the service is made)
    memory = ChatdockMemoryService(client=embedded, contact_id=CALLER, agent_id="not an agent id\n")
    with caplog.at_level(logging.WARNING, logger="chatdock.integrations.pipecat"):
        async with Call(memory, llm) as call:
            assert await call.greet() == "Hello."
            assert await call.say("Hi.") == "Sure."
            await call.end()
    refused = [record.getMessage() for record in caplog.records if "refused to open the chat" in record.getMessage()]
    assert len(refused) == 1 and "422" in refused[0]  # a 4xx: told, not retried
    assert not [record for record in caplog.records if "unavailable" in record.getMessage()]
    assert memory.chat_id is None
    assert llm.received[0] == [{"role": "system", "content": SYSTEM}]


@pytest.mark.process
async def test_an_outage_during_the_call_holds_no_turn_and_loses_no_write(tmp_path: Path) -> None:
    async with restartable_chatdock(tmp_path, "acme", "pipecat", timeout=2.0, retries=1) as (server, client):
        memory = memory_for(client, retry_delay=0.05, max_retry_delay=0.2, flush_timeout=10.0)
        llm = ScriptedLLM(["Hello.", "Your lamp ships today.", "Yes, in red.", "Bye."])
        async with Call(memory, llm) as call:
            await call.greet()
            await call.say("Where is my lamp?")
            await until(lambda: memory.pending_writes == 0, "the first writes")
            server.stop()
            # chatdock is gone: the turns go on, and their writes wait
            assert await call.say("Can I have it in red?") == "Yes, in red."
            assert await call.say("Great, bye.") == "Bye."
            # both turns are queued (a bot turn once its frame is back from the assistant aggregator)
            await until(lambda: memory.pending_writes == 4, "four writes queued")
            server.start()
            await call.end()
        chat_id = memory.chat_id
        assert chat_id is not None
        stored = await chat_messages(client, CALLER, chat_id)
        [chat] = (await client.list_chats(CALLER)).chats
    assert chat.status == "COMPLETED"
    assert [(message.role, message.content) for message in stored] == [
        ("assistant", "Hello."),
        ("user", "Where is my lamp?"),
        ("assistant", "Your lamp ships today."),
        ("user", "Can I have it in red?"),
        ("assistant", "Yes, in red."),
        ("user", "Great, bye."),
        ("assistant", "Bye."),
    ]


@pytest.mark.process
async def test_a_hung_chatdock_holds_no_turn_and_its_history_joins_when_it_answers(tmp_path: Path) -> None:
    # the client would wait 30 s for a hung request: a turn that waited on chatdock would miss BOUND
    async with restartable_chatdock(tmp_path, "acme", "pipecat", fresh=True, timeout=30.0) as (server, client):
        await client.append_message(CALLER, "whatsapp", "user", "Is the red lamp in stock?")
        memory = memory_for(client, flush_timeout=10.0)
        history_read = asyncio.Event()

        async def on_history_read(service: ChatdockMemoryService, context: Context) -> None:
            history_read.set()

        memory.add_event_handler("on_history_read", on_history_read)
        llm = ScriptedLLM(["Hello.", "It is red.", "Yes, the red one is in stock."])
        server.pause()  # requests now hang, as on an overloaded host
        try:
            async with Call(memory, llm) as call:
                assert await call.greet() == "Hello."
                assert await call.say("What colour is my lamp?") == "It is red."
                # the chat, the greeting and the turn all wait on chatdock; the conversation did not
                await until(lambda: memory.pending_writes == 4, "four writes queued")
                assert not history_read.is_set()
                server.resume()
                await asyncio.wait_for(history_read.wait(), BOUND)
                assert await call.say("Do you have it in stock?") == "Yes, the red one is in stock."
                await call.end()
        finally:
            server.resume()
        chat_id = memory.chat_id
        assert chat_id is not None
        stored = await chat_messages(client, CALLER, chat_id)
        [chat] = (await client.list_chats(CALLER)).chats
    # the first runs went on without the history (after start_timeout); the next run has it, in its place
    assert system_texts(llm.received[0]) == system_texts(llm.received[1]) == [SYSTEM]
    history = llm.received[2][1]["content"]
    assert history.startswith(HISTORY_PROMPT) and history.endswith("USER (whatsapp): Is the red lamp in stock?")
    roles = [message["role"] for message in llm.received[2]]
    assert roles == ["system", "system", "assistant", "user", "assistant", "user"]
    assert chat.status == "COMPLETED"
    assert [message.content for message in stored] == [
        "Hello.",
        "What colour is my lamp?",
        "It is red.",
        "Do you have it in stock?",
        "Yes, the red one is in stock.",
    ]


@pytest.mark.process
async def test_a_chatdock_hung_at_the_start_of_the_call_holds_no_turn_after_the_first(tmp_path: Path) -> None:
    """chatdock hung as the call starts: the first run waits start_timeout for the history, as documented; then
    each turn waited read_timeout for a look for news that could not begin before the history was read (13 turns
    of 0.5 s, for the 45 s until the first write gave up; found by a voice developer's review)."""
    async with restartable_chatdock(tmp_path, "acme", "pipecat", fresh=True, timeout=30.0) as (server, client):
        memory = memory_for(client, start_timeout=1.0, read_timeout=3.0, flush_timeout=10.0)
        llm = ScriptedLLM(["Hello.", "One.", "Two.", "Three."])
        server.pause()
        try:
            async with Call(memory, llm) as call:
                assert await call.greet() == "Hello."
                began = time.monotonic()
                for question, answer in (("A?", "One."), ("B?", "Two."), ("C?", "Three.")):
                    assert await call.say(question) == answer
                assert time.monotonic() - began < 3.0, "a turn waited read_timeout (3 s) for a look that cannot begin"
                server.resume()
                await call.end()
        finally:
            server.resume()


async def test_a_context_whose_messages_are_replaced_gets_the_history_and_the_news_again(
    embedded: ChatdockClient,
) -> None:
    """pipecat-flows replaces the context's messages on a node change (LLMMessagesUpdateFrame): the caller's
    history and what came from other channels were gone for the rest of the call; each is put back once."""
    await embedded.append_message(CALLER, "whatsapp", "user", "Parcel 4471 is late.")
    memory = memory_for(embedded)
    arrived = news_of(memory)
    llm = ScriptedLLM(["Hello.", "Sure.", "Booked.", "Bye."])
    async with Call(memory, llm) as call:
        await call.greet()
        await call.say("Hi.")
        await embedded.append_message(CALLER, "sms", "user", "Gate code 4921.")
        await asyncio.wait_for(arrived.get(), BOUND)
        node: list[LLMContextMessage] = [{"role": "system", "content": "Node 2: book a delivery slot."}]
        await call.worker.queue_frame(LLMMessagesUpdateFrame(messages=node, run_llm=False))
        await until(lambda: call.context.get_messages() == node, "the node's context")
        await call.say("Saturday, please.")
        await call.say("Bye.")
        await call.end()
    history = system_texts(llm.received[0])[1]
    assert history.startswith(HISTORY_PROMPT) and history.endswith("USER (whatsapp): Parcel 4471 is late.")
    note = f"{OTHER_CHANNELS_PROMPT}\nUSER (sms): Gate code 4921."
    for run in llm.received[2:]:  # after the node change: its instructions, the history, the news, once each
        assert system_texts(run) == ["Node 2: book a delivery slot.", history, note], run
    chat_id = memory.chat_id
    assert chat_id is not None
    assert [m.content for m in await chat_messages(embedded, CALLER, chat_id)] == [
        "Hello.",
        "Hi.",
        "Sure.",
        "Saturday, please.",
        "Booked.",
        "Bye.",
        "Bye.",
    ]


class SummarizingLLM(ScriptedLLM):
    """The stand-in model, which also writes the summaries Pipecat's context summarization asks it for."""

    def __init__(self, replies: list[str | list[str]]) -> None:
        super().__init__(replies)
        self.summarized: list[str] = []

    async def run_inference(self, context: LLMContext, *args: Any, **kwargs: Any) -> str:
        self.summarized.append(str(context.get_messages()))
        return f"SUMMARY {len(self.summarized)}: a lamp, parcel 4471, and what the caller asked."


@pytest.mark.parametrize("dedicated", [False, True], ids=["the pipeline's llm", "a model of its own"])
async def test_pipecats_own_summarization_folds_the_history_in_once(embedded: ChatdockClient, dedicated: bool) -> None:
    """Pipecat's context summarization puts the history into its summary with the call's first turns: the service
    put it back before the next run (the model read it twice, and each summary summarized it again). Whether the
    pipeline's LLM writes the summary or a model of its own, whose summary passes no frame by the service."""
    await embedded.append_message(CALLER, "whatsapp", "user", "Parcel 4471 is late.")
    pipeline_llm = SummarizingLLM([f"Answer {number}." for number in range(9)])
    own = SummarizingLLM([]) if dedicated else None
    summarizing = LLMAssistantAggregatorParams(
        enable_auto_context_summarization=True,
        auto_context_summarization_config=LLMAutoContextSummarizationConfig(
            max_context_tokens=None,
            max_unsummarized_messages=4,
            summary_config=LLMContextSummaryConfig(min_messages_after_summary=2, llm=own),
        ),
    )
    llm = pipeline_llm
    applied: list[object] = []
    call = Call(memory_for(embedded), llm, assistant_params=summarizing)

    async def on_summary_applied(aggregator: LLMAssistantAggregator, summarizer: object, event: object) -> None:
        applied.append(event)

    call.assistant.add_event_handler("on_summary_applied", on_summary_applied)
    async with call:
        await call.greet()
        for number in range(6):
            await call.say(f"Question {number}?")
            if len(applied) >= 2:
                break
        await call.end()
    assert len(applied) >= 2, applied
    summaries = (own or llm).summarized
    assert HISTORY_PROMPT in summaries[0]  # the first summary takes the history in
    assert all(HISTORY_PROMPT not in text for text in summaries[1:])  # and the next are not given it again
    history = f"{HISTORY_PROMPT}\n"
    told = [sum(str(message["content"]).startswith(history) for message in run) for run in llm.received]
    summarized = [any("SUMMARY" in str(message["content"]) for message in run) for run in llm.received]
    first = summarized.index(True)
    assert told[:first] == [1] * first and told[first:] == [0] * (len(told) - first), (told, summarized)
    assert all(summarized[first:])


async def test_a_context_whose_messages_hold_parts_gets_the_history(embedded: ChatdockClient) -> None:
    """Instructions given as a list of parts (OpenAI's format, as an image turn is): the history goes in after
    them (the service failed on them, the call went silent and ended FAILED)."""
    await embedded.append_message(CALLER, "whatsapp", "user", "Parcel 4471 is late.")
    memory = memory_for(embedded)
    instructions: list[LLMContextMessage] = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]}]
    llm = ScriptedLLM(["Hello.", "Bye."])
    async with Call(memory, llm, instructions) as call:
        assert await call.greet() == "Hello."
        await call.say("Bye.")
        await call.end()
    for run in llm.received:
        assert run[0] == instructions[0] and run[1]["role"] == "system"
        assert str(run[1]["content"]).startswith(HISTORY_PROMPT)
    [chat] = (await embedded.list_chats(CALLER)).chats
    assert chat.status == "COMPLETED"


async def test_turns_are_dated_when_they_were_said(embedded: ChatdockClient) -> None:
    """Each turn carries the start its aggregator gave it, not the moment its write reached chatdock (after an
    outage, seconds later, among messages sent meanwhile); a sound without words before the bot spoke (a cough)
    is neither the date nor the start of the caller's next turn."""
    memory = memory_for(embedded)
    llm = ScriptedLLM(["Hello.", "It ships today."])
    user_started: list[str] = []
    bot_started: list[str] = []
    async with Call(memory, llm) as call:

        async def user_turn(aggregator: object, strategy: object, message: UserTurnStoppedMessage) -> None:
            user_started.append(message.timestamp)

        async def bot_turn(aggregator: LLMAssistantAggregator, message: AssistantTurnStoppedMessage) -> None:
            bot_started.append(message.timestamp)

        call.user.add_event_handler("on_user_turn_stopped", user_turn)
        call.assistant.add_event_handler("on_assistant_turn_stopped", bot_turn)
        started = memory.started_at
        assert started is not None
        cough = [  # VAD frames of a sound at the call's start, which no turn takes
            VADUserStartedSpeakingFrame(start_secs=0.2, timestamp=started.timestamp() + 0.2),
            VADUserStoppedSpeakingFrame(stop_secs=0.8, timestamp=started.timestamp() + 0.8),
        ]
        await call.worker.queue_frames(cough)
        await call.greet()
        await call.say("Where is my lamp?", speech=[(30.0, 31.5)])
        await call.end()
    chat_id = memory.chat_id
    assert chat_id is not None
    stored = await chat_messages(embedded, CALLER, chat_id)
    [turn] = [message for message in stored if message.role == "user"]
    greeting, answer = [message for message in stored if message.role == "assistant"]
    assert [m.content for m in stored] == ["Hello.", "Where is my lamp?", "It ships today."]
    assert turn.created_at == datetime.fromisoformat(user_started[0])
    assert [greeting.created_at, answer.created_at] == [datetime.fromisoformat(at) for at in bot_started]
    assert (turn.parts[0].start_timestamp, turn.parts[0].end_timestamp) == (30.0, 31.5)  # the cough's 0.0 not in it


@pytest.mark.process
async def test_writes_given_up_at_the_end_of_the_call_are_handed_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """chatdock hangs and the call ends: the writes the flush gave up on reach `on_writes_lost` with their text
    and key, and each is logged without its text (a count was all that was left of them)."""
    caplog.set_level(logging.INFO, logger="chatdock.integrations.pipecat")
    async with restartable_chatdock(tmp_path, "acme", "pipecat", fresh=True, timeout=30.0) as (server, client):
        memory = memory_for(client, flush_timeout=1.0)
        handed: list[list[LostWrite]] = []

        async def on_writes_lost(service: ChatdockMemoryService, writes: list[LostWrite]) -> None:
            handed.append(writes)

        memory.add_event_handler("on_writes_lost", on_writes_lost)
        llm = ScriptedLLM(["Hello.", "Noted."])
        try:
            async with Call(memory, llm) as call:
                await call.greet()
                async with asyncio.timeout(BOUND):
                    while memory.chat_id is None or not await chat_messages(client, CALLER, memory.chat_id):
                        await asyncio.sleep(0.02)  # the greeting stored
                server.pause()
                await call.say("My code is 4921.")
                await call.end()
        finally:
            server.resume()
        for write in memory.lost_writes:  # chatdock is back: each made again, as it was sent, stored once
            await write.make()
        chat_id = memory.chat_id
        assert chat_id is not None
        stored = await chat_messages(client, CALLER, chat_id)
        [chat] = (await client.list_chats(CALLER)).chats
    assert [m.content for m in stored] == ["Hello.", "My code is 4921.", "Noted."] and chat.status == "COMPLETED"
    assert handed == [memory.lost_writes]
    assert [(w.what, w.text, w.under_way) for w in memory.lost_writes] == [
        ("store a user turn", "My code is 4921.", True),
        ("store a bot turn", "Noted.", False),
        ("set the chat's status to COMPLETED", None, False),
    ]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("chatdock: not stored for")]
    # the turn's text is in none (its digits alone may be, by chance, in a random key or a time)
    assert len(lines) == 3 and not any("code is" in line for line in lines), lines


@pytest.mark.process
async def test_a_call_whose_watch_is_refused_looks_for_news_at_each_turn(tmp_path: Path) -> None:
    """The organization's listeners are all taken (--max-listens-per-org): the call's watch gets a 429 and is
    tried again later; meanwhile each user turn looks for news, so a WhatsApp message still reaches the LLM
    (it never did: news was only looked for when the watch told of a change)."""
    db = str(tmp_path / "chatdock.db")
    key = create_key(db, "acme", "pipecat")
    with restartable_server(db, "--max-listens-per-org", "1") as server:
        async with ChatdockClient(server.url, api_key=key) as client, client.watch("someone-else"):
            memory = memory_for(client, max_retry_delay=0.5)
            llm = ScriptedLLM(["Hello.", "Let me see.", "Got it: 4471."])
            async with Call(memory, llm) as call:
                await call.greet()
                await call.say("Hi.")
                await client.append_message(CALLER, "whatsapp", "user", "Order number: 4471")
                assert await call.say("I've sent you the number.") == "Got it: 4471."
                await call.end()
    note = f"{OTHER_CHANNELS_PROMPT}\nUSER (whatsapp): Order number: 4471"
    assert llm.received[2][-2:] == [
        {"role": "system", "content": note},
        {"role": "user", "content": "I've sent you the number."},
    ]


def test_settings_out_of_bounds_are_refused_when_the_service_is_made(embedded: ChatdockClient) -> None:
    with pytest.raises(ValueError, match="context_limit must be 1 to 200"):
        ChatdockMemoryService(client=embedded, contact_id=CALLER, context_limit=500)
    with pytest.raises(ValueError, match="read_timeout must be above 0"):
        ChatdockMemoryService(client=embedded, contact_id=CALLER, read_timeout=0)


def test_a_provider_channel_is_refused_when_the_service_is_made_with_what_to_pass(embedded: ChatdockClient) -> None:
    """post_as_contact stores a caller's turns on custom channels only: on `whatsapp`, every turn of the call would
    be refused later, one log line each. The service is not made, and the error says what to pass."""
    for channel in ("whatsapp", "sms", "email"):
        with pytest.raises(ValueError, match=f"channel '{channel}' is a provider channel") as refused:
            ChatdockMemoryService(client=embedded, contact_id=CALLER, channel=channel)
        assert "pass one such as 'voice' (the default)" in str(refused.value)
    with pytest.raises(ValueError, match="channel must be a lower-case name"):
        ChatdockMemoryService(client=embedded, contact_id=CALLER, channel="Phone Call")
    # the TwiML without its from_number: the call was made, and every one of its writes refused (nothing kept)
    for caller, said in ((None, "must be a string"), ("", "1 to 256 characters"), (" " + CALLER, "white space")):
        with pytest.raises(ValueError, match=said) as refused:
            ChatdockMemoryService(client=embedded, contact_id=caller)  # type: ignore[arg-type]
        assert "is the caller's number missing from the call's data?" in str(refused.value)
    with pytest.raises(ValueError, match="context_max_chars must be None or 1 to 10,000,000, not 0"):
        ChatdockMemoryService(client=embedded, contact_id=CALLER, context_max_chars=0)
    assert ChatdockMemoryService(client=embedded, contact_id=CALLER, channel="phone").channel == "phone"


@pytest.mark.process
def test_the_example_runs_two_calls_and_shows_them() -> None:
    output = run_example("pipecat_memory.py")
    assert "call 1: COMPLETED, 5 messages" in output
    assert "call 2: COMPLETED, 3 messages" in output
    # the second call's first LLM run had the first call in its context
    assert "the second call's LLM saw:" in output
    assert "USER (voice): Hi, I ordered a desk lamp last week." in output.split("the second call's LLM saw:")[1]
