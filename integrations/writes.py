"""The writes of one call, as both voice integrations (pipecat.py, livekit.py) make them: in one ordered queue
that a background task empties, each with an idempotency key fixed when it is queued, retried while chatdock is
unavailable and given up on when chatdock refuses it; the one rule for what is worth sending again; and the checks
of the caller and of the channel a call is kept on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chatdock.client import ChatdockApiError
from chatdock.storage import ChatdockError
from chatdock.storage import validation as check
from chatdock.storage.models import channel_kind

__all__ = ["LostWrite", "NoChat", "WriteQueue", "call_channel", "call_contact", "describe", "retryable"]


def call_contact(contact_id: object) -> str:
    """The caller a call is kept for, checked when the integration is made: an id chatdock would refuse (None
    where the caller's number was missing from the call's data, "", a space around it) made every write of the
    call fail later, each with a log line, and the call was not kept at all. ValueError says what to pass."""
    try:
        return check.contact_id(contact_id)
    except ChatdockError as error:
        raise ValueError(
            f"{error}; pass the caller's identifier as chatdock keeps it (a phone number such as '+31612345678', "
            "an email): is the caller's number missing from the call's data?"
        ) from None


def call_channel(channel: str) -> str:
    """The channel a call's chat is opened on, checked when the integration is made: a custom channel, the only
    kind `post_as_contact` stores the caller's turns on (chatdock's rule: the provider channels are those a
    provider's webhook carries, `whatsapp`, `sms`, `email`, ...). Otherwise every user turn would be refused
    later, each with a log line, and the call kept without the caller's words. ValueError says what to pass."""
    try:
        check.channel(channel)
    except ChatdockError as error:
        raise ValueError(f"{error}; pass a custom channel such as 'voice' (the default) or 'phone'") from None
    if channel_kind(channel) == "provider":
        raise ValueError(
            f"channel {channel!r} is a provider channel, whose messages arrive from the provider's webhook; a "
            "call is kept on a custom channel, the kind post_as_contact stores the caller's turns on: pass one "
            "such as 'voice' (the default), 'phone' or 'sip'"
        )
    return channel


def retryable(error: BaseException) -> bool:
    """Whether a failed chatdock call may succeed later, sent again as it was (a write with the same idempotency
    key): chatdock (or the way to it) is busy or unavailable (`ChatdockApiError.retryable`: 429, 502, 503, 504),
    or the connection failed or timed out. A 4xx is the request's own fault and a 500 a bug: sending it again
    changes nothing."""
    if isinstance(error, ChatdockApiError):
        return error.retryable
    return isinstance(error, (OSError, TimeoutError))


def describe(error: BaseException) -> str:
    """An error as a log line tells it: chatdock's status and words, or the exception's type and text."""
    if isinstance(error, ChatdockApiError):
        return f"{error.status} {error.error}: {error.message}"
    return f"{type(error).__name__}: {error}"


class NoChat(Exception):
    """Raised by a write into the call's chat when the call has none (chatdock refused to open it): the write is
    dropped with an error logged, not retried."""


def _nothing() -> None:
    pass


def _start(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(work, name=name)


@dataclass(frozen=True)
class LostWrite:
    """A write of the call that the end of the call gave up on (chatdock was unavailable or did not answer within
    the flush's time): what it was ("store a user turn", "store a bot turn", "set the chat's status to
    COMPLETED"), the turn's text and when it was said (None for a write that is not a turn), and its idempotency
    key. `await lost.make()` sends it again, the very request under the same key, once chatdock is back: it is
    stored once even if the first attempt landed. `under_way`: it was being sent when the time ran out, so
    chatdock may yet store it."""

    what: str
    text: str | None
    said_at: datetime | None
    idempotency_key: str
    under_way: bool
    send: Callable[[str], Awaitable[object]] = field(repr=False, compare=False)

    async def make(self) -> None:
        """Make the write now (raises the client's error if chatdock refuses it or cannot be reached)."""
        await self.send(self.idempotency_key)


@dataclass
class _Write:
    what: str
    send: Callable[[str], Awaitable[object]]
    give_up: Callable[[], None]
    text: str | None = None
    said_at: datetime | None = None
    key: str = field(default_factory=lambda: str(uuid.uuid4()))


class WriteQueue:
    """The writes of one call, made one at a time and in the order they were queued by a background task: the
    chat is open before a turn is stored in it, and the turns are stored in the order they were said.

    `submit(what, send)` queues a write: `send(key)` makes it with its idempotency key, the same key at every
    attempt, so a write sent again (after a timeout whose first attempt may have been stored) is stored once.
    While chatdock is unavailable (`retryable`) the write is sent again after `first_delay` seconds, the wait
    doubling up to `max_delay`, and the writes behind it wait. A refusal, or a write into a chat the call does
    not have (`send` raises `NoChat`), is logged as an error and the write dropped; its `give_up` is called,
    as it is for the writes still queued when `close` runs out of time.

    Logs go to `logger`, each naming `contact_id`: a warning when chatdock becomes unavailable and an info line
    when it is back (once per outage, however many writes wait), an error for each write given up. `start`
    starts the background task (`start(work, name)`: a framework's own task factory, or asyncio's)."""

    def __init__(
        self,
        contact_id: str,
        *,
        logger: logging.Logger,
        first_delay: float,
        max_delay: float,
        start: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]] = _start,
    ) -> None:
        self.contact_id = contact_id
        self.logger = logger
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.unavailable = False
        """True from a write that found chatdock unavailable until one that got through."""
        self._queue: deque[_Write] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task = start(self._work(), "chatdock_writes")

    @property
    def pending(self) -> int:
        """How many writes are not made yet: queued, or under way (sent again while chatdock is unavailable)."""
        return len(self._queue)

    def submit(
        self,
        what: str,
        send: Callable[[str], Awaitable[object]],
        give_up: Callable[[], None] = _nothing,
        *,
        text: str | None = None,
        said_at: datetime | None = None,
    ) -> None:
        """Queue a write; `what` names it in the logs ("store a user turn"); a turn's `text` and `said_at` are
        what a `LostWrite` tells the application if the write is given up at the end of the call."""
        if self._closing:
            raise RuntimeError("the call's writes are closed")
        self._queue.append(_Write(what, send, give_up, text, said_at))
        self._wake.set()

    async def _work(self) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            write = self._queue[0]
            await self._make(write)
            self._queue.popleft()

    async def _make(self, write: _Write) -> None:
        delay, attempts = self.first_delay, 0
        while True:
            attempts += 1
            try:
                await write.send(write.key)
            except NoChat:
                self.logger.error("chatdock: could not %s for %s: the call has no chat", write.what, self.contact_id)
            except Exception as error:
                if retryable(error):
                    if not self.unavailable:
                        self.logger.warning(
                            "chatdock unavailable, will %s for %s again (the call's writes wait): %s",
                            write.what,
                            self.contact_id,
                            describe(error),
                        )
                    self.unavailable = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_delay)
                    continue
                self.logger.error(
                    "chatdock refused to %s for %s (not retried): %s", write.what, self.contact_id, describe(error)
                )
            else:
                if self.unavailable:
                    self.logger.info(
                        "chatdock is back: did %s for %s at attempt %d; %d writes of the call to go",
                        write.what,
                        self.contact_id,
                        attempts,
                        len(self._queue) - 1,
                    )
                self.unavailable = False
                return
            write.give_up()
            return

    async def close(self, timeout: float) -> list[LostWrite]:
        """Make the writes still queued, for at most `timeout` seconds; those left then are logged as lost, each
        on a line of its own (what it was, when it was said, its length and key: not its text, which the logs of
        a call centre should not hold), given up, and returned, for the application to keep or make later."""
        self._closing = True
        self._wake.set()
        sending = False
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            sending = bool(self._queue)  # the first was being sent (or waited to be sent again)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        lost = [
            LostWrite(write.what, write.text, write.said_at, write.key, sending and at == 0, write.send)
            for at, write in enumerate(self._queue)
        ]
        if lost:
            self.logger.error(
                "chatdock: %d writes of the call of %s were not made within %.1f s and are given up, chatdock being "
                "unavailable or slow (the one being sent when the time ran out may yet be stored, if it answers "
                "late)",
                len(lost),
                self.contact_id,
                timeout,
            )
        for write in lost:
            said = "" if write.said_at is None else f", said at {write.said_at.isoformat()}"
            length = "" if write.text is None else f", {len(write.text):,} characters"
            self.logger.error(
                "chatdock: not stored for %s: %s%s%s (Idempotency-Key %s%s)",
                self.contact_id,
                write.what,
                said,
                length,
                write.idempotency_key,
                "; it was being sent and may yet be stored" if write.under_way else "",
            )
        while self._queue:
            self._queue.popleft().give_up()
        return lost
