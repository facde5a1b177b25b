"""chatdock as the memory of a LiveKit Agents session: one chat per call, the caller's history in the model's
context from the first turn, every turn stored, and messages from other channels heard during the call.

    memory = ChatdockMemory(client, contact_id="+15550100")
    async with memory, AgentSession(llm=...) as session:
        await session.start(ChatdockAgent(memory, instructions="You are the front desk of ..."))

Why two pieces. LiveKit lets an application shape a turn in two places: an `Agent`'s overridable hooks and
nodes (`on_enter`, `llm_node`, ...) and the `AgentSession`'s events (`conversation_item_added`, `error`,
`close`). The call itself belongs to the session, which outlives any one agent (a handoff swaps agents in the
same call), so the per-call state (the chat, the ordered write queue, the watch on the contact) lives in
`ChatdockMemory`, which listens to the session's events; `ChatdockAgent` is the `Agent` subclass that wires
the two hooks a memory needs, and any agent of your own can make the same two calls (`memory.enter(self)` in
`on_enter`, `memory.before_reply(self, chat_ctx)` in `llm_node`). Several agents of one call share one memory.

Why `llm_node`. `Agent.on_user_turn_completed` is only called for turns that came through speech recognition:
in livekit-agents 1.8, `AgentSession.run(user_input=...)` and `generate_reply(user_input=...)` (text mode, the
framework's own tests) go straight to the reply, while `llm_node` is called before every reply in every mode.
The node may run before LiveKit has committed the user's message (with preemptive generation, before the user
has finished speaking); the turn is stored from the commit (`conversation_item_added`), so what is stored is the
final transcript, and a discarded preemptive attempt stores nothing. The node waits for neither.

What happens in a call:

- `enter` (from `on_enter`, the first time): opens a chat for the contact on `channel` (`voice`), enters a
  watch on the contact, and puts the contact's history (`get_context`, every channel) into the agent's chat
  context as one system message after the instructions. LiveKit 1.x does not wait for `on_enter` before it
  answers the caller's first words, so every reply (`before_reply`) waits for the history too, until
  `start_timeout` seconds from the call's start at most: after that the call goes on without it (logged once)
  and the history joins when it comes.
- each user message the session commits is stored as the contact (`post_as_contact`, one text part with
  `start_timestamp`/`end_timestamp` in seconds from the start of the call when LiveKit timed the speech; a
  text-mode turn has no timing and its part none) with `context_limit`, so the same round trip answers with the
  contact's context right after the write, which joins the agent's chat context for the replies after it: no
  reply waits for it.
- each assistant message is stored as `assistant` in the same chat (`append_message`), with its timing and
  whether the caller cut it off in the message's metadata.
- each message carries the time LiveKit gives it (`created_at`: when the speech began), not the time its write
  reached chatdock: a reply the caller cut off comes before what the caller said over it, as in LiveKit's own
  history, and turns stored late (chatdock was away) sort among what was written meanwhile by when they were said.
- messages that reach the contact on other channels during the call (a WhatsApp message while on the phone)
  come in through the watch (a change heard, then the contact's context read) and through each turn's context;
  each becomes a system message in the agent's chat context, at its time. A reply that starts while a change's
  read is under way waits for it, `context_timeout` seconds at most.
- at the end (the session's `close`, `aclose()`, or the job's shutdown) the chat's status is set: `FAILED` when
  the session reported an error it did not recover from or closed on one, `CANCELED` when the job shut the
  session down from outside (`CloseReason.JOB_SHUTDOWN`) or the owner's task was cancelled, `COMPLETED`
  otherwise; the writes still queued are flushed for at most `flush_timeout` seconds, and those given up then
  are logged and handed to `on_writes_lost` (`lost_writes` keeps them).

No turn waits on a write: every write (the chat, each turn, each reply, the status) goes through one ordered
background queue (writes.py's `WriteQueue`, as in the Pipecat integration), each with its own idempotency key
fixed when it is queued, retried while chatdock cannot be reached or is busy (the client's 429, 502, 503 and
504, a refused connection or a timeout among them) and given up on a 4xx, which a retry would get again. Only
reads are waited for: at the start of the call the history, until `start_timeout` from it; and a read of news
under way (the watch heard a change), for `context_timeout` (while chatdock is known to be unreachable, not at
all). A reply waits for nothing when nothing changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from livekit.agents import (
    Agent,
    AgentSession,
    CloseEvent,
    CloseReason,
    ConversationItemAddedEvent,
    ErrorEvent,
    FlushSentinel,
    ModelSettings,
    get_job_context,
    llm,
)

from chatdock.client import ChatdockClient
from chatdock.storage import Chat, ChatStatus, Context, Message, Part
from chatdock.storage.transcript import indented
from chatdock.storage.validation import MAX_MAX_CHARS

from .watch import follow_changes, news
from .writes import LostWrite, NoChat, WriteQueue, call_channel, call_contact, retryable

__all__ = ["ChatdockAgent", "ChatdockMemory", "LostWrite"]

logger = logging.getLogger("chatdock.integrations.livekit")

HISTORY_ITEM_ID = "chatdock_history"
"""The id of the system message that carries the contact's history in an agent's chat context."""

NOTE_ITEM_PREFIX = "chatdock_message_"
"""Each message heard from another channel during the call is a system message with this prefix and its id."""

CLOSE_WAIT = 2.0
"""How long the job's shutdown waits for the session's own close (which tells how the call ended) before it ends
the memory: with `flush_timeout`, well within LiveKit's `shutdown_process_timeout` (10 s), after which the
process is killed with the writes unmade and unlogged."""

FIRST_RETRY = 0.2
LAST_RETRY = 2.0
"""A write or a watch that could not reach chatdock is tried again after FIRST_RETRY seconds, doubling up to
LAST_RETRY."""


def _instructions(item: llm.ChatItem) -> bool:
    return isinstance(item, llm.ChatMessage) and item.role in ("system", "developer")


class ChatdockMemory:
    """The memory of one call (one `AgentSession`) kept in chatdock for one contact.

    `client` is a `ChatdockClient` (over HTTP or embedded), opened and closed by its owner, which must outlive
    the memory. `contact_id` is the caller: a phone number, an email, any identifier chatdock links to a
    contact. Settings:

    - `channel` (`"voice"`): the custom channel the call's chat is opened on (a provider channel, `whatsapp`,
      `sms`, ..., is refused with a ValueError: `post_as_contact` stores the caller's turns on custom ones only).
    - `agent_id` (None): the agent the chat and the assistant's messages are stored for.
    - `context_limit` (50): how many of the contact's latest messages (every channel) the model's context holds:
      the history at the start, and the context each user turn's write brings back (1 to 200).
    - `context_max_chars` (None): a bound on the history's text, its oldest messages left out first (None: no
      bound; a caller's long emails are otherwise in every model request of the call).
    - `context_timeout` (0.5 s): how long a reply waits for a read of the contact's news under way (the watch
      heard a change: a message from another channel, or the call's own writes); after it, the reply goes on
      with the context it has, and the news joins the replies after it. No reply waits when nothing changed,
      and none waits on a write.
    - `start_timeout` (2.0 s): how long, from the start of the call, its first replies (and `enter`) wait for the
      contact's history; after it, they go on without it, and it joins when it comes.
    - `flush_timeout` (5.0 s): how long the end of the call waits for the writes still queued (with the job's
      shutdown, well within LiveKit's `shutdown_process_timeout` of 10 s).
    - `on_writes_lost` (None): called (or awaited) at the end of the call with the writes given up then
      (`LostWrite`: what, the turn's text, when it was said, its idempotency key), for the application to keep
      them or make them later; they are logged either way, without their text.
    - `watch` (True): hear the contact's changes during the call, so a message from another channel reaches the
      model's context even when no user turn brings it.

    Use it as `async with memory:` around the session, or `await memory.aclose()` after the session closed (the
    close starts it); in a LiveKit job, the job's shutdown waits for it too.
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
        context_timeout: float = 0.5,
        start_timeout: float = 2.0,
        flush_timeout: float = 5.0,
        watch: bool = True,
        on_writes_lost: Callable[[list[LostWrite]], Awaitable[None] | None] | None = None,
    ) -> None:
        if not 1 <= context_limit <= 200:
            raise ValueError(f"context_limit must be between 1 and 200, got {context_limit}")
        if context_max_chars is not None and not 1 <= context_max_chars <= MAX_MAX_CHARS:
            raise ValueError(f"context_max_chars must be None or 1 to {MAX_MAX_CHARS:,}, got {context_max_chars}")
        for name, seconds in (
            ("context_timeout", context_timeout),
            ("start_timeout", start_timeout),
            ("flush_timeout", flush_timeout),
        ):
            if not seconds >= 0:
                raise ValueError(f"{name} must be 0 or more seconds, got {seconds}")
        self.client = client
        self.contact_id = call_contact(contact_id)
        self.channel = call_channel(channel)
        self.agent_id = agent_id
        self.context_limit = context_limit
        self.context_max_chars = context_max_chars
        self.context_timeout = context_timeout
        self.start_timeout = start_timeout
        self.flush_timeout = flush_timeout
        self.watch = watch
        self.on_writes_lost = on_writes_lost

        self.chat: Chat | None = None
        """The call's chat, once chatdock has opened it."""
        self.started_at: float | None = None
        """When the call started (`time.time()`); turn timestamps are seconds from it."""
        self.lost_writes: list[LostWrite] = []
        """The writes the end of the call gave up on (see `on_writes_lost`)."""

        self._session: AgentSession[Any] | None = None
        self._agent: Agent | None = None
        self._writes: WriteQueue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._history_task: asyncio.Task[None] | None = None
        self._history_in = asyncio.Event()  # the history is loaded, or its read is over (failed)
        self._history_deadline = 0.0  # the loop's time start_timeout after the call's start
        self._history_late = False  # the wait for it ran out (logged once)
        self._refresh_task: asyncio.Task[None] | None = None
        self._reads = 0  # the reads of changes begun: the one under way is the last
        self._read_given_up = -1  # the read a reply waited out (see _wait_for_news)
        self._refresh_wanted = False
        self._finishing: asyncio.Task[None] | None = None

        self._history_loaded = False
        self._history: llm.ChatMessage | None = None
        self._notes: dict[str, llm.ChatMessage] = {}
        self._known: set[str] = set()
        self._floor: datetime | None = None  # a message at or below it is older than the history: not news

        self._warned = False
        self._owned = False
        self._failed = False
        self._cancelled = False
        self._close_event: CloseEvent | None = None
        self._closed = asyncio.Event()

    @property
    def pending_writes(self) -> int:
        """How many of the call's writes are not stored yet: queued, or under way (sent again while chatdock is
        unavailable)."""
        return 0 if self._writes is None else self._writes.pending

    # --- the two hooks an agent calls ---

    async def enter(self, agent: Agent) -> None:
        """Called from `agent.on_enter`: the first time, open the call's chat, start hearing the contact and
        load its history; every time, put the history and what was heard so far into `agent`'s chat context."""
        if self._finishing is not None:
            raise RuntimeError("this ChatdockMemory's call has ended; make a new one per session")
        session = agent.session
        if self._session is None:
            self._begin(session)
        elif session is not self._session:
            raise RuntimeError("a ChatdockMemory serves one session; make a new one per call")
        self._agent = agent
        await self._wait_for_history()
        await self._publish()

    async def before_reply(self, agent: Agent, chat_ctx: llm.ChatContext) -> None:
        """Called from `agent.llm_node` with the reply's `chat_ctx`: wait (bounded) for the history at the start
        of the call and for a read of news under way, then put the history and the messages heard from other
        channels into `chat_ctx`. It never waits on a write."""
        if self._session is None:
            if not self._warned:
                self._warned = True
                logger.warning("a reply before memory.enter(agent): does an on_enter override skip the parent's?")
            return
        if self._finishing is not None:
            return
        await asyncio.gather(self._wait_for_history(), self._wait_for_news())
        self._apply(chat_ctx)

    async def _wait_for_history(self) -> None:
        """Until the history is in (loaded by its own read or by a turn's round trip, or its read failed), for
        what remains of `start_timeout` from the call's start: the replies at the start of the call have the
        caller's history, and none waits for it after that."""
        if self._history_in.is_set() or self._history_late:
            return
        left = self._history_deadline - asyncio.get_running_loop().time()
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._history_in.wait(), left)
        if not self._history_in.is_set() and not self._history_late:
            self._history_late = True
            logger.warning(
                "the history of %s took longer than %.1f s (start_timeout); the call goes on without it",
                self.contact_id,
                self.start_timeout,
            )

    async def _wait_for_news(self) -> None:
        """Until the read of a change the watch heard is done, `context_timeout` seconds at most (not at all while
        chatdock is known to be unreachable): a message that reached the contact on another channel a moment
        before the reply is in it."""
        reading = self._refresh_task
        if reading is None or reading.done() or self.context_timeout <= 0 or self._reads == self._read_given_up:
            return  # a read one reply already waited out: a stuck read is not waited for again by every reply
        if self._writes is not None and self._writes.unavailable:
            return
        try:
            await asyncio.wait_for(asyncio.shield(reading), self.context_timeout)
        except TimeoutError:
            self._read_given_up = self._reads
            logger.info(
                "the contact's news took longer than %.2f s to read; the reply goes on with the context it has",
                self.context_timeout,
            )

    # --- the call's beginning and end ---

    def _begin(self, session: AgentSession[Any]) -> None:
        self._session = session
        self.started_at = time.time()
        self._history_deadline = asyncio.get_running_loop().time() + self.start_timeout
        self._writes = WriteQueue(self.contact_id, logger=logger, first_delay=FIRST_RETRY, max_delay=LAST_RETRY)
        session.on("conversation_item_added", self._on_item)
        session.on("error", self._on_error)
        session.on("close", self._on_close)

        async def open_chat(key: str) -> None:
            self.chat = await self.client.open_chat(
                self.contact_id, self.channel, agent_id=self.agent_id, idempotency_key=key
            )
            logger.info("call of %s: chat %s opened on %s", self.contact_id, self.chat.id, self.channel)

        self._writes.submit("open the chat", open_chat)
        loop = asyncio.get_running_loop()
        if self.watch:
            watch = follow_changes(
                self.client,
                self.contact_id,
                self._refresh,
                logger=logger,
                first_delay=FIRST_RETRY,
                max_delay=LAST_RETRY,
                without="news between turns",
            )
            self._tasks.append(loop.create_task(watch, name="chatdock-livekit-watch"))
        self._history_task = loop.create_task(self._load_history(), name="chatdock-livekit-history")
        job = get_job_context(required=False)
        if job is not None:
            job.add_shutdown_callback(self._job_shutdown)

    async def _load_history(self) -> None:
        try:
            await self._read("the history", logging.WARNING)
        finally:  # read or not, the replies waiting for it go on
            self._history_in.set()

    def _on_item(self, event: ConversationItemAddedEvent) -> None:
        item = event.item
        if not isinstance(item, llm.ChatMessage) or self._writes is None or self._finishing is not None:
            return
        text = item.text_content
        if text and text.strip():
            if item.role == "user":
                self._store_turn(item, text)
            elif item.role == "assistant":
                self._store_reply(item, text)

    def _on_error(self, event: ErrorEvent) -> None:
        if not getattr(event.error, "recoverable", False):
            self._failed = True

    def _on_close(self, event: CloseEvent) -> None:
        self._close_event = event
        self._closed.set()
        if self._finishing is None and not self._owned:  # an `async with memory:` ends when its block does
            self._finishing = asyncio.get_running_loop().create_task(self._finish(), name="chatdock-livekit-finish")

    async def _job_shutdown(self, reason: str) -> None:
        """The job is shutting down: the session's own close runs beside this (the job runs its shutdown
        callbacks together), so its close reason is waited for before the chat's status is chosen."""
        if self._session is not None and self._close_event is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), min(CLOSE_WAIT, self.flush_timeout))
            if self._close_event is None:
                logger.info("job shut down (%s) with the session still running", reason)
                self._cancelled = True
        await self.aclose()

    def status(self) -> ChatStatus:
        """The status the chat gets at the end of the call, from what the session reported so far."""
        close = self._close_event
        if self._failed or (close is not None and (close.error is not None or close.reason == CloseReason.ERROR)):
            return "FAILED"
        if self._cancelled or (close is not None and close.reason == CloseReason.JOB_SHUTDOWN):
            return "CANCELED"
        return "COMPLETED"

    async def aclose(self) -> None:
        """End the call's memory: set the chat's status and flush the writes (at most `flush_timeout` seconds).
        It starts by itself when the session closes, unless the memory is used as `async with memory:` (then the
        block's end ends it, knowing whether the block was cancelled); awaiting it makes sure it is done. A
        second call waits for the first."""
        if self._finishing is None:
            self._finishing = asyncio.get_running_loop().create_task(self._finish(), name="chatdock-livekit-finish")
        await asyncio.shield(self._finishing)

    async def __aenter__(self) -> ChatdockMemory:
        self._owned = True
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if isinstance(error, asyncio.CancelledError):
            self._cancelled = True
        elif error is not None:
            self._failed = True
        await self.aclose()

    async def _finish(self) -> None:
        session, writes = self._session, self._writes
        if session is None or writes is None:
            return
        session.off("conversation_item_added", self._on_item)
        session.off("error", self._on_error)
        session.off("close", self._on_close)
        tasks = [task for task in [*self._tasks, self._refresh_task, self._history_task] if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        status = self.status()

        async def close_chat(key: str) -> None:
            await self.client.update_chat(self._chat_id(), status)
            logger.info("call of %s: chat %s %s", self.contact_id, self._chat_id(), status)

        writes.submit(f"set the chat's status to {status}", close_chat)
        self.lost_writes = await writes.close(self.flush_timeout)
        if self.lost_writes and self.on_writes_lost is not None:
            try:
                told = self.on_writes_lost(self.lost_writes)
                if told is not None:
                    await told
            except Exception:
                logger.exception("on_writes_lost failed")

    # --- writes ---

    def _chat_id(self) -> str:
        """The chat a write goes into: the call's, which the first write opened."""
        if self.chat is None:
            raise NoChat
        return self.chat.id

    @staticmethod
    def _said_at(message: llm.ChatMessage) -> datetime:
        """When a message was said: the start of its speech where LiveKit timed it (`started_speaking_at`; a user
        message from speech recognition is created, and dated, when the turn ends), else its `created_at`."""
        started = message.metrics.get("started_speaking_at")
        return datetime.fromtimestamp(started if started is not None else message.created_at, UTC)

    def _seconds(self, at: float | None) -> float | None:
        """A wall-clock time (`time.time()`) as seconds from the start of the call."""
        if at is None or self.started_at is None:
            return None
        return round(max(0.0, at - self.started_at), 3)

    def _store_turn(self, message: llm.ChatMessage, text: str) -> None:
        assert self._writes is not None
        part = Part(
            text=text,
            start_timestamp=self._seconds(message.metrics.get("started_speaking_at")),
            end_timestamp=self._seconds(message.metrics.get("stopped_speaking_at")),
        )
        said_at = self._said_at(message)

        async def post(key: str) -> None:
            posted = await self.client.post_as_contact(
                self.contact_id,
                self._chat_id(),
                [part],
                context_limit=self.context_limit,
                created_at=said_at,
                idempotency_key=key,
            )
            # the history comes from a bounded read when context_max_chars bounds it, never from this context
            bounded = self.context_max_chars is not None and not self._history_loaded
            if posted.context is not None and not bounded and self._absorb(posted.context):
                await self._publish()

        self._writes.submit("store a user turn", post, text=text, said_at=said_at)

    def _store_reply(self, message: llm.ChatMessage, text: str) -> None:
        assert self._writes is not None
        metadata: dict[str, Any] = {}
        start = self._seconds(message.metrics.get("started_speaking_at"))
        end = self._seconds(message.metrics.get("stopped_speaking_at"))
        if start is not None:
            metadata["start_timestamp"] = start
        if end is not None:
            metadata["end_timestamp"] = end
        if message.interrupted:
            metadata["interrupted"] = True
        said_at = self._said_at(message)

        async def append(key: str) -> None:
            await self.client.append_message(
                self.contact_id,
                self.channel,
                "assistant",
                text,
                agent_id=self.agent_id,
                chat_id=self._chat_id(),
                metadata=metadata or None,
                created_at=said_at,
                idempotency_key=key,
            )

        self._writes.submit("store a bot turn", append, text=text, said_at=said_at)

    # --- what the model hears ---

    def _refresh(self) -> None:
        """A change of the contact (heard through the watch, for the whole call): its context is read again, one
        read at a time, the changes that come meanwhile read once more after it."""
        self._refresh_wanted = True
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.get_running_loop().create_task(self._reread(), name="chatdock-livekit-read")

    async def _reread(self) -> None:
        while self._refresh_wanted:
            self._refresh_wanted = False
            self._reads += 1
            if not await self._read("the context", logging.DEBUG):
                return

    async def _read(self, what: str, level: int) -> bool:
        """Read the contact's context once and put what the model has not heard yet into the agent's chat context.
        A read that fails is logged, at `level` while chatdock is unavailable (a later turn or change brings what
        it would have); whether it was read."""
        try:
            context = await self.client.get_context(
                self.contact_id, limit=self.context_limit, max_chars=self.context_max_chars
            )
        except Exception as error:
            if retryable(error):
                logger.log(level, "could not read %s of %s (%s); a later turn brings it", what, self.contact_id, error)
            else:
                logger.error("chatdock refused %s of %s: %s", what, self.contact_id, error)
            return False
        if self._absorb(context):
            await self._publish()
        return True

    def _absorb(self, context: Context) -> bool:
        """Take in the messages of `context` the model has not heard yet, leaving out the call's own (the
        session has them already): the first context read becomes the history, later ones add notes. Whether
        anything was new."""
        own = self.chat.id if self.chat is not None else None
        fresh = [m for m in context.messages if m.id not in self._known and (own is None or m.chat_id != own)]
        if not fresh and self._history_loaded:
            return False
        self._known.update(message.id for message in fresh)
        if not self._history_loaded:
            self._history_loaded = True
            self._history_in.set()
            if context.messages and (context.truncated or len(context.messages) >= self.context_limit):
                # the contact has older messages than the history's oldest (context_max_chars or context_limit
                # left them out): a later, wider context brings them, and they are not news of the call
                self._floor = context.messages[0].created_at
            elif context.truncated:  # context_max_chars left out even the newest: what is new comes after it
                self._floor = datetime.now(UTC)
            if fresh:
                self._history = llm.ChatMessage(
                    id=HISTORY_ITEM_ID, role="system", content=[self.format_history(fresh, context.truncated)]
                )
            return bool(fresh)
        started = None if self.started_at is None else datetime.fromtimestamp(self.started_at, UTC)
        floor = self._floor
        for message in (m for m in fresh if news(m, started) and (floor is None or m.created_at > floor)):
            at = message.created_at.timestamp()
            self._notes[message.id] = llm.ChatMessage(
                id=NOTE_ITEM_PREFIX + message.id,
                role="system",
                content=[self.format_note(message)],
                created_at=max(at, self.started_at or at),
            )
        return True

    def format_history(self, messages: list[Message], truncated: bool) -> str:
        """The system message that gives the model the contact's history, oldest first; override to change it."""
        heading = "Earlier messages with this caller, on every channel, oldest first"
        if truncated:
            heading += " (older ones left out)"
        return heading + ":\n" + "\n".join(self.format_message(message) for message in messages)

    def format_note(self, message: Message) -> str:
        """The system message for a message of the contact's outside the call, during it (another channel, or
        another chat: a second call of the same caller at once, a WhatsApp bot's answer)."""
        return "While on this call, a message outside it (another channel, or another chat with this caller): " + (
            self.format_message(message)
        )

    def format_message(self, message: Message) -> str:
        when = message.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
        return f"[{when} UTC, {message.channel}] {message.role.upper()}: {indented(message.content)}"

    def _apply(self, chat_ctx: llm.ChatContext) -> bool:
        """Put the history (after the leading system messages, the instructions) and the notes (at their time)
        into `chat_ctx`; whether it changed."""
        changed = False
        if self._history is not None and chat_ctx.get_by_id(HISTORY_ITEM_ID) is None:
            items = chat_ctx.items
            at = 0
            while at < len(items) and _instructions(items[at]):
                at += 1
            history = self._history.model_copy(update={"created_at": items[at - 1].created_at if at else 0.0})
            items.insert(at, history)
            changed = True
        for note in self._notes.values():
            if chat_ctx.get_by_id(note.id) is None:
                chat_ctx.insert(note.model_copy())
                changed = True
        return changed

    async def _publish(self) -> None:
        """Put what the model should know into the current agent's chat context, for the replies to come."""
        agent = self._agent
        if agent is None:
            return
        chat_ctx = agent.chat_ctx.copy()
        if self._apply(chat_ctx):
            try:
                await agent.update_chat_ctx(chat_ctx)
            except Exception:  # a realtime model that refused the update: the call goes on without it
                logger.exception("could not update the chat context of %s", agent.label)


class ChatdockAgent(Agent):
    """An `Agent` whose call is kept in chatdock by `memory` (see `ChatdockMemory`); every other keyword is
    `Agent`'s (`instructions`, `tools`, `llm`, ...). A subclass that overrides `on_enter` or `llm_node` calls
    the parent's first (or `memory.enter(self)` / `memory.before_reply(self, chat_ctx)` itself)."""

    def __init__(self, memory: ChatdockMemory, **options: Any) -> None:
        super().__init__(**options)
        self.memory = memory

    async def on_enter(self) -> None:
        await self.memory.enter(self)

    async def llm_node(
        self, chat_ctx: llm.ChatContext, tools: list[llm.Tool], model_settings: ModelSettings
    ) -> AsyncGenerator[llm.ChatChunk | str | FlushSentinel, None]:
        await self.memory.before_reply(self, chat_ctx)
        async for chunk in Agent.default.llm_node(self, chat_ctx, tools, model_settings):
            yield chunk
