"""chatdock as a Pipecat memory service: a call's turns kept in chatdock, the caller's history in the LLM context.

    pipeline = Pipeline([transport.input(), stt, user_aggregator, memory, llm, tts, transport.output(),
                         assistant_aggregator])

`ChatdockMemoryService` sits where Pipecat's own memory services sit (`Mem0MemoryService`): after the user
context aggregator, before the LLM. Every `LLMContextFrame` on its way to the LLM passes it, and so do the
frames that frame a turn: the user aggregator's `UserStartedSpeakingFrame` / `UserStoppedSpeakingFrame` and
`LLMContextUserTurnFrame` going down, the assistant aggregator's `LLMContextAssistantTurnFrame` coming back
up, and the errors the LLM and the services after it push up. Per call (one run of the pipeline):

- StartFrame: a chat is opened for the contact on `channel` (`voice`), the contact's change events are
  watched, and the contact's transcript (every channel) is read; it goes into the LLM context as one system
  message before the first LLM run.
- Each user turn, as the user aggregator wrote it to the context, is stored with `post_as_contact` (one part,
  its start and end in seconds from the call's start); each bot turn, as the assistant aggregator wrote it,
  with `append_message(role="assistant")` in the same chat, `interrupted` in its metadata when the caller cut
  into it or hung up under it. Each is dated when it began (`created_at`), not when its write reached
  chatdock: turns stored after an outage sort among what was written meanwhile.
- A message the contact sends on another channel during the call (a WhatsApp message while on the phone) is
  put into the LLM context before the next bot turn. The history and these messages stay in the context: one
  that replaces its messages (an `LLMMessagesUpdateFrame`, as pipecat-flows sends on a node change) gets them
  again before its next LLM run; one that Pipecat's context summarization folded into its summary does not.
- The end: the chat's status is COMPLETED (EndFrame), CANCELED (CancelFrame), or FAILED when an ErrorFrame
  was pushed anywhere in the pipeline during the call, fatal or not.

No frame waits on a write: writes go through one ordered queue that a background task empties (writes.py's
`WriteQueue`, as in the LiveKit integration), each with an idempotency key fixed when it is queued, so a retry
while chatdock is unreachable stores it once. The writes the end of the call gives up on are logged and handed
to `on_writes_lost`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMContextAssistantTurnFrame,
    LLMContextFrame,
    LLMContextUserTurnFrame,
    StartFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext, LLMContextMessage, standard_message_text
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.turns.user_turn_completion_mixin import (
    USER_TURN_COMPLETE_MARKER,
    USER_TURN_INCOMPLETE_LONG_MARKER,
    USER_TURN_INCOMPLETE_SHORT_MARKER,
)

from chatdock.client import ChatdockClient
from chatdock.storage import Chat, ChatStatus, Message, Part
from chatdock.storage.transcript import indented
from chatdock.storage.validation import MAX_MAX_CHARS

from .turns import TurnClock
from .watch import follow_changes, news
from .writes import LostWrite, NoChat, WriteQueue, call_channel, call_contact, describe, retryable

if TYPE_CHECKING:
    from pipecat.pipeline.worker import PipelineWorker

__all__ = ["ChatdockMemoryService", "LostWrite"]

logger = logging.getLogger("chatdock.integrations.pipecat")

HISTORY_PROMPT = "What this caller said and was told before this call, on every channel, oldest first:"
OTHER_CHANNELS_PROMPT = (
    "Since this call began, outside it (on another channel, or in another chat with this caller), oldest first:"
)

# How many of the contact's newest messages (every channel, the call's own among them) one look for new messages
# of other channels reads: what it has not seen there is new, whatever time it carries (a webhook stores a message
# with the time its provider says it was sent, which may be earlier than messages stored before it).
SCAN_LIMIT = 50

# The markers an LLM puts in front of its answer when Pipecat's turn-completion filter is on; the assistant
# aggregator strips them from the turn it reports, and so does the end-of-call look at the context.
TURN_MARKERS = (USER_TURN_COMPLETE_MARKER, USER_TURN_INCOMPLETE_SHORT_MARKER, USER_TURN_INCOMPLETE_LONG_MARKER)


def entry(message: Message, *, with_time: bool) -> str:
    """`ROLE (channel): content`, a line break inside the message continuing indented by two spaces (as in
    chatdock's own transcript), so nothing a caller writes can start a line that reads as another role's."""
    text = f"{message.role.upper()} ({message.channel}): " + indented(message.content)
    if with_time:
        text = f"[{message.created_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC] " + text
    return text


def _time(iso: str) -> datetime | None:
    """A frame's ISO 8601 `timestamp` (Pipecat writes UTC with its offset), None when it is not one."""
    try:
        at = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


def _content(message: LLMContextMessage) -> str | None:
    """A context message's text when it is one string (the texts the service tells are), else None."""
    if isinstance(message, dict) and isinstance(content := message.get("content"), str):
        return content
    return None


def strip_markers(text: str) -> str:
    found = False
    for marker in TURN_MARKERS:
        if marker in text:
            text, found = text.replace(marker, ""), True
    return text.strip() if found else text


def role_of(message: LLMContextMessage) -> str | None:
    if isinstance(message, dict):
        role = message.get("role")
        return role if isinstance(role, str) else None
    return None


class ChatdockMemoryService(FrameProcessor):
    """Keeps a Pipecat call in chatdock and gives the LLM the caller's history, cross-channel and live.

    Place it after the user context aggregator and before the LLM, as Pipecat's own memory services are::

        memory = ChatdockMemoryService(client=client, contact_id="+31612345678")
        pipeline = Pipeline([transport.input(), stt, user_aggregator, memory, llm, tts,
                             transport.output(), assistant_aggregator])

    The client (`ChatdockClient(url, api_key)` or `ChatdockClient.embedded(db=...)`) belongs to the caller,
    who opens it before the call and closes it after: one client serves many calls. One service serves one
    call (a pipeline run) at a time; a new StartFrame starts a new call, with a new chat.

    Settings:
        channel: the custom channel the call's chat is opened on, and the turns are stored on (a provider
            channel, `whatsapp`, `sms`, ..., is refused with a ValueError: post_as_contact takes custom ones).
        agent_id: stored on the chat and on the bot's turns (the caller's history is read for every agent).
        context_limit: how many of the contact's last messages (1 to 200) go into the history message.
        context_max_chars: a bound on the history's text, its oldest messages dropped first (None: no bound).
        start_timeout: how long, in seconds from the call's start, the first LLM run (the greeting, or the
            answer to the caller's first words) may wait for the caller's history; after it the call goes on
            without it, and the history joins the context before the next run.
        read_timeout: how long, in seconds, a context frame on its way to the LLM may wait for a look for new
            messages of other channels still under way; after it the turn goes on with the context it has,
            and what the look brings joins the context before the next turn.
        flush_timeout: how long, in seconds, the end of the call waits for the writes still queued to be
            stored; what is left then is logged as lost.
        retry_delay, max_retry_delay: the first and the longest wait before a write or a read that found
            chatdock unavailable is sent again (the wait doubles each time).
        watch_other_channels: whether messages arriving on other channels during the call are put into the
            context (through the contact's change events).
        history_prompt, other_channels_prompt: the first line of the history message and of the message
            that brings another channel's messages.

    Events (Pipecat's ``@service.event_handler(name)``):
        on_chat_opened(service, chat): the call's chat is open (`chat.id`, `chat.channels`).
        on_history_read(service, context): the contact's history is read (a chatdock `Context`, its messages
            oldest first, none for a new caller); it reaches the LLM context when the next context frame
            passes (the first, unless the read took longer than `read_timeout`).
        on_other_channel_messages(service, messages): messages of other channels arrived during the call
            (chatdock `Message` models, oldest first); they reach the context when the next context frame
            passes, and a bot that wants to answer them at once can queue an `LLMRunFrame`.
        on_writes_lost(service, writes): the end of the call gave up on these writes (`LostWrite`: what it was,
            the turn's text, when it was said, its idempotency key), chatdock being unavailable past
            `flush_timeout`; they are logged too (without their text), and `lost_writes` keeps them.
    """

    def __init__(
        self,
        client: ChatdockClient,
        contact_id: str,
        *,
        channel: str = "voice",
        agent_id: str | None = None,
        context_limit: int = 50,
        context_max_chars: int | None = None,
        start_timeout: float = 2.0,
        read_timeout: float = 0.5,
        flush_timeout: float = 5.0,
        retry_delay: float = 0.25,
        max_retry_delay: float = 5.0,
        watch_other_channels: bool = True,
        history_prompt: str = HISTORY_PROMPT,
        other_channels_prompt: str = OTHER_CHANNELS_PROMPT,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 1 <= context_limit <= 200:
            raise ValueError(f"context_limit must be 1 to 200, not {context_limit}")
        if context_max_chars is not None and not 1 <= context_max_chars <= MAX_MAX_CHARS:
            raise ValueError(f"context_max_chars must be None or 1 to {MAX_MAX_CHARS:,}, not {context_max_chars}")
        for name, value in (
            ("start_timeout", start_timeout),
            ("read_timeout", read_timeout),
            ("flush_timeout", flush_timeout),
            ("retry_delay", retry_delay),
            ("max_retry_delay", max_retry_delay),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be above 0, not {value}")
        self.client = client
        self.contact_id = call_contact(contact_id)
        self.channel = call_channel(channel)
        self.agent_id = agent_id
        self.context_limit = context_limit
        self.context_max_chars = context_max_chars
        self.start_timeout = start_timeout
        self.read_timeout = read_timeout
        self.flush_timeout = flush_timeout
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.watch_other_channels = watch_other_channels
        self.history_prompt = history_prompt
        self.other_channels_prompt = other_channels_prompt
        self._register_event_handler("on_chat_opened")
        self._register_event_handler("on_history_read")
        self._register_event_handler("on_other_channel_messages")
        self._register_event_handler("on_writes_lost")
        self.lost_writes: list[LostWrite] = []
        """The writes the end of the last call gave up on (see `on_writes_lost`)."""
        self._worker: PipelineWorker | None = None
        self._reset()

    # --- the call's state ---

    def _reset(self) -> None:
        """A call's state, fresh: set when the service is made and at each StartFrame."""
        self._chat: Chat | None = None
        self._clock: TurnClock | None = None  # made at the StartFrame: when the caller spoke, and the call began
        self._call_running = False
        self._outcome: ChatStatus | None = None  # set by EndFrame / CancelFrame
        self._failed = False  # an ErrorFrame was seen during the call
        self._tasks: list[asyncio.Task[None]] = []
        self._writes: WriteQueue | None = None  # made at the StartFrame, closed at the end
        # the LLM context this call's frames carry, and the messages in it the service has accounted for
        self._context: LLMContext | None = None
        self._known_messages: dict[int, LLMContextMessage] = {}
        self._run_messages: list[LLMContextMessage] = []  # the context's messages as the last LLM run was given them
        # the history, read once, and the messages of other channels told so far (one note for those that came
        # between two LLM runs): each given to every context that lacks it (the first, one whose messages were
        # replaced)
        self._history_read = asyncio.Event()
        self._history_waited = False
        self._history: str | None = None
        self._notes: list[str] = []
        # when the last LLM run was asked for (a context frame went by to the LLM): what a bot turn stored from
        # the context at the end is dated with; and when an interruption last went by (None: since the last turn)
        self._run_asked: datetime | None = None
        self._interrupted_at: datetime | None = None
        self._watch_live = False
        # what the looks for new messages of other channels start from: the ids of the contact's newest messages
        # seen so far (the history's, then those of the last look: at most SCAN_LIMIT), and the time at or below
        # which a message not seen is old (left out of what was read: below the window, or a history cut
        # short), not new; None when everything the contact had was seen
        self._seen: set[str] = set()
        self._floor: datetime | None = None
        # messages of other channels: change events counted, looks done, what is waiting for the context
        self._changed = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        self._changes = 0
        self._given_up_at = 0
        self._reads = 0  # the looks' reads begun: the one under way is the last
        self._read_given_up = -1  # the read a turn waited out: no later turn waits for it again
        self._arrived: list[Message] = []

    @property
    def chat_id(self) -> str | None:
        """The id of the call's chat, once chatdock has opened it (None before, or when it refused)."""
        return None if self._chat is None else self._chat.id

    @property
    def pending_writes(self) -> int:
        """How many of the call's writes are not stored yet: queued, or under way (retried while chatdock is
        unavailable)."""
        return 0 if self._writes is None else self._writes.pending

    @property
    def started_at(self) -> datetime | None:
        """The wall-clock time the call's timestamps count from (the StartFrame), None before a call."""
        return None if self._clock is None else datetime.fromtimestamp(self._clock.started_wall, UTC)

    @property
    def _call(self) -> TurnClock:
        """The call's clock (a frame of a call comes after its StartFrame)."""
        assert self._clock is not None, "a call's frame before its StartFrame"
        return self._clock

    # --- Pipecat ---

    async def _on_pipeline_error(self, worker: object, frame: ErrorFrame) -> None:
        if self._call_running:
            self._failed = True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self._start_call()
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._call.turn_started()
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._call.turn_stopped()
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._call.speech_started(frame.timestamp, frame.start_secs)
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._call.speech_stopped(frame.timestamp, frame.stop_secs)
        elif isinstance(frame, LLMContextUserTurnFrame) and direction == FrameDirection.DOWNSTREAM:
            self._user_turn(frame.text, frame.timestamp)
        elif isinstance(frame, LLMContextAssistantTurnFrame) and direction == FrameDirection.UPSTREAM:
            self._bot_turn(frame.text, frame.timestamp)
        elif isinstance(frame, LLMContextFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._before_llm(frame)
        elif isinstance(frame, InterruptionFrame):
            self._interrupted_at = datetime.now(UTC)
        elif isinstance(frame, ErrorFrame):
            self._failed = True
        elif isinstance(frame, (EndFrame, CancelFrame)) and self._call_running:
            # The watch stops now; the chat's status and the last writes wait for cleanup(), which the worker
            # calls once the frame has reached the end of the pipeline: the bot's last turn, which the
            # assistant aggregator writes to the context as the EndFrame reaches it, is there by then.
            self._outcome = "COMPLETED" if isinstance(frame, EndFrame) else "CANCELED"
            await self._stop_reading()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        """Ends the call: the bot's last turn if its frame did not make it back here, the chat's status, then the
        queued writes, given at most `flush_timeout` seconds."""
        await super().cleanup()  # type: ignore[no-untyped-call]  # pipecat leaves cleanup() unannotated
        if self._worker is not None:
            self._worker.remove_event_handler("on_pipeline_error", self._on_pipeline_error)
            self._worker = None
        if self._call_running:
            await self._end_call()

    # --- the call ---

    async def _start_call(self) -> None:
        if self._call_running:  # a StartFrame while a call runs: end it first, as a worker's cleanup would
            await self._end_call()
        self._reset()
        self._clock = TurnClock()
        self._call_running = True
        if self._worker is None:
            # every ErrorFrame ends at the pipeline worker, which reports it as `on_pipeline_error`: this hears
            # the errors that never pass this service too (an STT service's, the input transport's)
            self._worker = self.pipeline_worker
            self._worker.add_event_handler("on_pipeline_error", self._on_pipeline_error)
        self._writes = WriteQueue(
            self.contact_id,
            logger=logger,
            first_delay=self.retry_delay,
            max_delay=self.max_retry_delay,
            start=self.create_task,
        )
        self._writes.submit("open the chat", self._open_chat)
        if self.watch_other_channels:
            watch = follow_changes(
                self.client,
                self.contact_id,
                self._note_change,
                logger=logger,
                first_delay=self.retry_delay,
                max_delay=self.max_retry_delay,
                without="the messages of other channels",
                live=self._set_watch_live,
            )
            self._tasks.append(self.create_task(watch, "chatdock_watch"))
            self._tasks.append(self.create_task(self._look_for_new(), "chatdock_other_channels"))
        self._tasks.append(self.create_task(self._read_history(), "chatdock_history"))

    async def _end_call(self) -> None:
        self._call_running = False
        await self._stop_reading()
        self._last_bot_turns()
        status: ChatStatus = "FAILED" if self._failed else self._outcome or "CANCELED"
        self._queue(f"set the chat's status to {status}", self._status(status))
        if self._writes is not None:
            self.lost_writes = await self._writes.close(self.flush_timeout)
            if self.lost_writes:
                await self._call_event_handler("on_writes_lost", self.lost_writes)

    async def _stop_reading(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await self.cancel_task(task)

    # --- turns ---

    def _user_turn(self, text: str, started: str) -> None:
        """Stores the user's turn as the aggregator wrote it to the context, with the stretch of the call it took
        (turns.py's `TurnClock` says how it is timed), dated when the aggregator opened the turn (`started`)."""
        if not text.strip():
            return
        start, end = self._call.take()
        part = Part(text=text, start_timestamp=start, end_timestamp=end)
        said_at = _time(started) or datetime.fromtimestamp(self._call.started_wall + start, UTC)

        async def send(key: str) -> object:
            return await self.client.post_as_contact(
                self.contact_id, self._chat_id(), [part], created_at=said_at, idempotency_key=key
            )

        self._queue("store a user turn", send, text=text, said_at=said_at)
        if self.watch_other_channels and not self._watch_live and not self._writes_unavailable():
            self._note_change()  # chatdock answers but the watch is down (its listeners all taken): look each turn

    def _bot_turn(self, text: str, started: str) -> None:
        """Stores the bot's turn as the assistant aggregator wrote it to the context (what was spoken, when a
        TTS service reports its words; up to the interruption, when the user cut in), dated when it began
        (`started`, the frame's ISO 8601 timestamp)."""
        if self._context is not None:  # the context message this turn is, so that the end does not store it again
            for message in reversed(self._context.get_messages()):
                if role_of(message) == "assistant":
                    self._known_messages[id(message)] = message
                    break
        said_at = _time(started)  # None: when chatdock stores it
        if said_at is not None:
            self._call.bot_began(said_at.timestamp())
        interrupted = self._cut_short(said_at)
        self._interrupted_at = None
        if text.strip():
            send = self._assistant(text, said_at, interrupted)
            self._queue("store a bot turn", send, text=text, said_at=said_at)

    def _last_bot_turns(self) -> None:
        """The bot's turns in the context that no LLMContextAssistantTurnFrame brought back here: the turn under
        way when an EndFrame or a CancelFrame came is written to the context as the frame passes the assistant
        aggregator, and its frame, pushed back up at that moment, may not pass this service before the
        pipeline is taken down. Only messages added after the last context frame that passed here count."""
        if self._context is None:
            return
        found: list[str] = []
        for message in reversed(self._context.get_messages()):
            if id(message) in self._known_messages or role_of(message) == "user":
                break
            if role_of(message) == "assistant":
                text = strip_markers(standard_message_text(message))
                if text.strip():
                    found.append(text)
        said_at = self._run_asked  # dated when the LLM run that wrote them was asked for
        interrupted = self._cut_short(said_at)
        for text in reversed(found):
            logger.debug("chatdock: the bot's last turn was cut by the end of the call; stored from the context")
            send = self._assistant(text, said_at, interrupted)
            self._queue("store the last bot turn", send, text=text, said_at=said_at)

    def _cut_short(self, began: datetime | None) -> bool:
        """Whether a bot turn that began at `began` was cut short: by a CancelFrame that ended the call (the
        aggregator ends the turn under way there, as an interruption would), or by an interruption that went by
        after it began (the aggregator ends the turn it interrupts)."""
        cut = self._interrupted_at
        return self._outcome == "CANCELED" or (cut is not None and (began is None or began <= cut))

    def _assistant(
        self, text: str, said_at: datetime | None = None, interrupted: bool = False
    ) -> Callable[[str], Awaitable[object]]:
        metadata = {"interrupted": True} if interrupted else None

        async def send(key: str) -> object:
            return await self.client.append_message(
                self.contact_id,
                self.channel,
                "assistant",
                text,
                agent_id=self.agent_id,
                chat_id=self._chat_id(),
                metadata=metadata,
                created_at=said_at,
                idempotency_key=key,
            )

        return send

    def _status(self, status: ChatStatus) -> Callable[[str], Awaitable[object]]:
        async def send(key: str) -> object:
            return await self.client.update_chat(self._chat_id(), status)

        return send

    async def _open_chat(self, key: str) -> object:
        chat = await self.client.open_chat(self.contact_id, self.channel, self.agent_id, idempotency_key=key)
        self._chat = chat
        await self._call_event_handler("on_chat_opened", chat)
        return chat

    # --- the writes ---

    def _queue(
        self,
        what: str,
        send: Callable[[str], Awaitable[object]],
        *,
        text: str | None = None,
        said_at: datetime | None = None,
    ) -> None:
        assert self._writes is not None, "a write before the StartFrame"
        self._writes.submit(what, send, text=text, said_at=said_at)

    def _chat_id(self) -> str:
        """The chat a write goes into: the call's, which the first write opened."""
        if self._chat is None:
            raise NoChat
        return self._chat.id

    # --- the reads ---

    async def _read_history(self) -> None:
        """Reads the contact's transcript once, again while chatdock is unavailable. It does not wait for the
        watch: what is written after this read is found by the look that follows the watch going live (a look
        takes what it has not seen, and the history is what it has seen)."""
        delay, attempts = self.retry_delay, 0
        while True:
            attempts += 1
            try:
                context = await self.client.get_context(
                    self.contact_id, limit=self.context_limit, max_chars=self.context_max_chars
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not retryable(error):
                    logger.error("chatdock refused the history of %s: %s", self.contact_id, describe(error))
                    # with no history to start from, the messages written from now on are the new ones
                    self._floor = datetime.now(UTC)
                    self._history_read.set()
                    return
                self._unavailable(attempts, "read the history", error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_retry_delay)
        earlier = [message for message in context.messages if self._chat is None or message.chat_id != self._chat.id]
        self._seen = {message.id for message in context.messages}
        if context.messages and (context.truncated or len(context.messages) >= self.context_limit):
            # the contact has older messages than the history's oldest: those are not new
            self._floor = context.messages[0].created_at
        elif context.truncated:
            # context_max_chars left out even the newest message: the history the call starts from still ends
            # there, so what is new is what comes after it (not the contact's whole past, as "new")
            try:
                newest = await self.client.list_messages(self.contact_id, limit=1)
                self._seen = {message.id for message in newest.messages}
                self._floor = newest.messages[0].created_at if newest.messages else None
            except Exception:  # no message to stop at: what is new is what is written from now on
                self._floor = datetime.now(UTC)
        if earlier:
            self._history = "\n".join([self.history_prompt, *(entry(message, with_time=True) for message in earlier)])
        self._history_read.set()
        await self._call_event_handler("on_history_read", context)

    def _unavailable(self, attempts: int, what: str, error: Exception) -> None:
        """A read that found chatdock unavailable and will be tried again: a warning the first time, quietly
        after that (the writes log theirs in their queue, once per outage)."""
        logger.log(
            logging.WARNING if attempts == 1 else logging.DEBUG,
            "chatdock unavailable, will %s for %s again: %s",
            what,
            self.contact_id,
            describe(error),
        )

    def _writes_unavailable(self) -> bool:
        return self._writes is not None and self._writes.unavailable

    def _set_watch_live(self, live: bool) -> None:
        self._watch_live = live

    def _note_change(self) -> None:
        self._changes += 1
        self._caught_up.clear()
        self._changed.set()

    async def _look_for_new(self) -> None:
        """After each change (changes that come while a look is under way count as one), reads the contact's
        messages that are new and not this call's; it starts once the history is read, since until then the
        history is what brings them."""
        await self._history_read.wait()
        delay, attempts = self.retry_delay, 0
        while True:
            await self._changed.wait()
            self._changed.clear()
            seen = self._changes
            attempts += 1
            self._reads += 1
            try:
                new = await self._new_messages()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if retryable(error):
                    self._unavailable(attempts, "look for new messages", error)
                    self._changed.set()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_retry_delay)
                    continue
                logger.error("chatdock refused the messages of %s: %s", self.contact_id, describe(error))
                new = []
            delay, attempts = self.retry_delay, 0
            if new:
                self._arrived.extend(new)
                await self._call_event_handler("on_other_channel_messages", new)
            if self._changes == seen:
                self._caught_up.set()

    async def _new_messages(self) -> list[Message]:
        """The contact's messages not seen before and not this call's, oldest first: those of the contact's newest
        SCAN_LIMIT (one read, every channel) that neither the history nor an earlier look had. Not seen is what
        counts, not a time: a webhook may store a message with the time the caller sent it, below messages
        stored before it (the history's newest, a turn this call stored a moment before). What the read leaves
        out (older than the SCAN_LIMIT newest) is old; so is what a history cut short left out (`_floor`)."""
        page = await self.client.list_messages(self.contact_id, limit=SCAN_LIMIT)
        own = None if self._chat is None else self._chat.id
        floor = self._floor
        found = [
            message
            for message in page.messages
            if message.id not in self._seen
            and (own is None or message.chat_id != own)
            and (floor is None or message.created_at > floor)
            and news(message, self.started_at)
        ]
        # what this read saw is what the next one starts from: a message below it that a deletion brings into
        # the next read's window is old (below the floor), not new; with all of the contact's messages read, none is
        self._seen = {message.id for message in page.messages}
        self._floor = page.messages[-1].created_at if page.messages and page.next_cursor is not None else None
        return found[::-1]

    # --- the context ---

    async def _before_llm(self, frame: LLMContextFrame) -> None:
        """Puts what the call has read into the context on its way to the LLM: the history (after the leading
        system messages, the bot's own instructions) and the messages of other channels (before the user's turn
        that this run answers), once each, and again into a context that lost them (its messages replaced).
        The history is waited for on the first frame, until `start_timeout` from the call's start; a look for
        new messages under way, when a change came since the last frame, `read_timeout` seconds, once.

        A speculative frame (Pipecat runs the LLM on a provisional copy while the user's turn may still go on)
        gets the messages too, and so does the call's real context, which the confirmed turn goes on with."""
        if not self._history_waited and not self._history_read.is_set():
            self._history_waited = True
            left = self.start_timeout - self._call.now()
            try:
                await asyncio.wait_for(self._history_read.wait(), timeout=max(left, 0.0))
            except TimeoutError:
                logger.warning(
                    "chatdock: the history of %s is not read yet; the turn goes on without it", self.contact_id
                )
        # a look under way, once per change; not before the history is read (no look begins until then: that read
        # is the one to wait for, and it was, above), nor for a read a turn already waited out (a read that hangs:
        # each turn's change waited for it again, every turn for as long as it hung)
        looking = self._history_read.is_set() and self._reads != self._read_given_up
        if looking and not self._caught_up.is_set() and self._changes > self._given_up_at:
            try:
                await asyncio.wait_for(self._caught_up.wait(), timeout=self.read_timeout)
            except TimeoutError:
                self._given_up_at = self._changes
                self._read_given_up = self._reads
        self._run_asked = datetime.now(UTC)  # a speculative run too: the one a confirmed turn goes on with
        if not frame.speculation:
            self._context = frame.context
            self._fold(frame.context)
        targets = [frame.context]
        if frame.speculation and self._context is not None and self._context is not frame.context:
            targets.insert(0, self._context)
        notes = self._notes + ([self._note(self._arrived)] if self._arrived else [])
        if frame.speculation and self._context is None:  # the real context is not known yet: kept for it
            self._tell(targets, self._history, notes)
            return
        self._notes, self._arrived = notes, []
        self._tell(targets, self._history, notes)
        if self._context is not None:
            self._run_messages = list(self._context.get_messages())
            self._known_messages.update((id(message), message) for message in self._run_messages)

    def _fold(self, context: LLMContext) -> None:
        """The history and notes that a compaction of the context took in are not told again. A told text that
        is gone while a message that came after it in the last run's context is still there (the same object)
        was compacted: Pipecat's context summarization (by the pipeline's LLM or a model of its own) keeps the
        first system message and the newest ones and puts the rest, told texts among them, into its summary
        (told again, each run read them twice and each summary summarized them again). Gone with everything
        after it, the messages were replaced (pipecat-flows on a node change): it is told again."""
        if not self._run_messages:
            return
        present = {id(message) for message in context.get_messages()}
        for told in [self._history, *self._notes]:
            if told is None:
                continue
            at = next((n for n, message in enumerate(self._run_messages) if _content(message) == told), None)
            if at is None or id(self._run_messages[at]) in present:
                continue
            if any(id(message) in present for message in self._run_messages[at + 1 :]):
                if told == self._history:
                    self._history = None
                else:
                    self._notes.remove(told)

    def _note(self, arrived: list[Message]) -> str:
        return "\n".join([self.other_channels_prompt, *(entry(message, with_time=False) for message in arrived)])

    @staticmethod
    def _tell(contexts: list[LLMContext], history: str | None, notes: list[str]) -> None:
        """Put the history and the messages of other channels into each context that lacks them: the history
        after the leading system messages, the others before the user's turn that this run answers."""
        for context in contexts:
            messages = list(context.get_messages())
            # a message's content is a string, or a list of parts (an image, instructions as parts): the texts
            # told are strings, so only strings can be them
            texts = {
                content
                for message in messages
                if isinstance(message, dict) and isinstance(content := message.get("content"), str)
            }
            changed = False
            if history is not None and history not in texts:
                at = 0
                while at < len(messages) and role_of(messages[at]) in ("system", "developer"):
                    at += 1
                messages.insert(at, {"role": "system", "content": history})
                changed = True
            for note in notes:
                if note not in texts:
                    at = len(messages) - 1 if messages and role_of(messages[-1]) == "user" else len(messages)
                    messages.insert(at, {"role": "system", "content": note})
                    changed = True
            if changed:
                context.set_messages(messages)
