"""`Store`: the contract's rules, once, over whichever `Backend` persists the records.

Every argument is checked and normalized here before a backend sees it, and
every error a caller can meet is worded here (or in errors.py): the bounds,
the `post_as_contact` channel choice, transcript fitting, cursors, the API
key format, hash and check. `server/` talks only to this class.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any, TypeVar

from . import audit, keys, newest, ranking
from . import validation as check
from .backend import Backend, Imported, MessageFilter, Snapshot, StoredKey
from .changes import Change, Deliver
from .cursor import (
    CONTACTS,
    CURSOR_SECRET,
    SearchPosition,
    decode_cursor,
    decode_search_cursor,
    encode_cursor,
    encode_search_cursor,
)
from .errors import (
    ChatdockError,
    InvalidInput,
    Unavailable,
    chat_not_found,
    contact_not_found,
    identifier_not_found,
    key_used_elsewhere,
    message_not_found,
    no_live_key,
    stored_unanswered,
)
from .ids import idempotent_id
from .memo import let_go_of_all
from .models import (
    Alias,
    ApiKeyInfo,
    AppendedMessage,
    ChannelRef,
    Chat,
    ContactInfo,
    ContactPage,
    Context,
    ForgetResult,
    LinkResult,
    Message,
    MessagePage,
    NewAlias,
    NewApiKey,
    NewChat,
    NewMessage,
    Part,
    RecentContact,
    SearchHit,
    SearchPage,
    StoredMessage,
)
from .records import (
    AliasRecord,
    ChatRecord,
    MessageRecord,
    alias_record,
    chat_record,
    message_record,
    new_chat_record,
)
from .rows import from_us
from .search import parse_query
from .sizing import MAX_RESULT_BYTES, fitting, message_bound, message_bytes, text_bound, text_bytes
from .telemetry import Telemetry
from .transcript import fit_hits, fit_transcript, format_line

EXPORT_BATCH = 1000
FEED_START_WAIT = 10.0  # seconds a process waits at start for the change feed of the others to be in place
SEARCHES_PER_ORG = 2  # an organization's searches a process works on at once (search_messages)

M = TypeVar("M", bound=StoredMessage)
T = TypeVar("T")

logger = logging.getLogger("chatdock.storage")


def _feed_ended(follower: asyncio.Future[None]) -> None:
    """A change feed that stopped other than by being cancelled: said at once, since from then on the changes
    of other processes are not heard here (until the process starts again)."""
    if not follower.cancelled() and follower.exception() is not None:
        logger.error("the change feed of other processes stopped: %s", follower.exception())


def choose_channel(chat: Chat, channel_id: str | None) -> ChannelRef:
    """The channel `post_as_contact` posts on: one of the chat's custom channels, as the contract says."""
    custom = [c for c in chat.channels if c.kind == "custom"]
    listed = ", ".join(f"{c.id} ({c.name})" for c in custom)
    if not custom:
        names = ", ".join(c.name for c in chat.channels) or "none"
        raise InvalidInput(
            f"post_as_contact supports only custom channels (voice, widget, web, ...); chat {chat.id} has "
            f"only provider channels ({names}), whose messages arrive from the provider's webhook: store such a "
            "message with append_message (role user, its channel, and this chat_id)"
        )
    if channel_id is None:
        if len(custom) > 1:
            raise InvalidInput(f"chat {chat.id} has several custom channels; pass channel_id as one of: {listed}")
        return custom[0]
    for candidate in custom:
        if candidate.id == channel_id:
            return candidate
    raise InvalidInput(f"channel_id {channel_id} is not a custom channel of chat {chat.id}; use one of: {listed}")


def prepare(record: NewChat | NewAlias | NewMessage) -> ChatRecord | AliasRecord | MessageRecord:
    """A history record checked in full; InvalidInput when no database could take it."""
    now = check.utc_now()
    if isinstance(record, NewChat):
        return chat_record(record, now)
    if isinstance(record, NewAlias):
        return alias_record(record, now)
    return message_record(record, now)


def _joined(
    newest_first: list[Message], version: int | None, stored: AppendedMessage, limit: int
) -> tuple[list[Message], int | None] | None:
    """The newest `limit` messages a read right after the write of `stored` finds, and the version they are
    at, from those a read beside the write found (at the contact's `version`), newest first; None when that
    read cannot tell: when `stored` is among them, the read came after the write, and is one; else the message
    joins them by newest.py's rule."""
    if any(message.id == stored.id for message in newest_first):
        return newest_first, version  # the read came after the write
    after = newest.joined(newest_first, version, stored, limit)
    return None if after is None else (after, stored._contact_version)


@contextmanager
def _answering(stored: Message) -> Iterator[None]:
    """The context after `stored`, read for its answer: a failure says the message is stored, never that nothing
    was written (errors.py's `stored_unanswered`)."""
    try:
        yield
    except ChatdockError as exc:
        raise stored_unanswered(
            stored.id, "the context after it", exc, "get_context, or GET /chats/context, reads the context"
        ) from None


def _quietly(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # taken, so that asyncio does not log it as never retrieved


async def _worked_off_the_loop(work: Callable[[], T]) -> T:
    """`work` in a thread. A caller cancelled meanwhile (a client gave up) returns only once the thread is done,
    which a thread cannot be told to be: what it holds (a search's turn) is held as long as the work goes on."""
    running = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait([running])
        raise


class Store:
    """chatdock's store; open one with `open_store(url)` (see `storage/__init__.py`)."""

    def __init__(self, backend: Backend, telemetry: Telemetry | None = None) -> None:
        self.backend = backend
        self.telemetry = telemetry or Telemetry()  # what an operator is told (telemetry.py)
        self._touching: dict[str, asyncio.Future[None]] = {}  # "last used" writes under way, by key prefix
        # keys this process verified live, by prefix, and when (time.monotonic()) they were read (see verify)
        self._live_keys: dict[str, tuple[StoredKey, float]] = {}
        self._revoked: dict[str, float] = {}  # keys this process revoked, and when (time.monotonic())
        self._newest = newest.Newest()  # each contact's newest messages this process last saw (newest.py)
        self._cursor_secret: bytes | None = None  # the key of list cursors' mask, once read (b"": none)
        # searches of each organization under way at once (`SEARCHES_PER_ORG`); the others wait their turn
        self._searching: collections.defaultdict[str, asyncio.Semaphore] = collections.defaultdict(
            lambda: asyncio.Semaphore(SEARCHES_PER_ORG)
        )
        self.telemetry.trace_calls(self)

    async def close(self) -> None:
        """Let the "last used" writes under way finish (they are small), then close the backend."""
        if self._touching:
            await asyncio.wait(list(self._touching.values()), timeout=5)
        await self.backend.close()

    # --- messages ---

    async def append_message(
        self,
        org: str,
        message: NewMessage,
        idempotency_key: str | None = None,
        context_limit: int | None = None,
    ) -> AppendedMessage:
        """Store one message; with `idempotency_key`, a retried request gets the first answer (see `_again`);
        with `context_limit`, the answer carries the contact's context right after the write (`_with_context`)."""
        limit = None if context_limit is None else check.limit(context_limit, "context_limit")
        key = None if idempotency_key is None else check.idempotency_key(idempotency_key)
        if key is not None:
            message = message.model_copy(update={"id": idempotent_id(org, "message", key)})
        record = message_record(message, check.utc_now())
        # the message joins the contact's newest messages this process saw right before its write (newest.py);
        # when it saw none, they are read while the message is written (a voice turn waits for the longer of
        # the two, not for both), and the message joins them when nothing came between the read and the write
        # and it is the newest (`_joined`); otherwise they are read again after the write
        beside, another = None, False
        if limit is not None and not self._newest.knows(org, message.contact_id, message.agent_id, limit):
            beside = self._newest_beside(org, record, limit)
        try:
            stored = await self.backend.insert_message(org, record)
            self.telemetry.appended(stored.deduplicated)
            if key is not None:  # a key used for another request is refused here, before anything is said of it
                stored = await self._again(org, key, record, stored, dated=message.created_at is not None)
            if stored.deduplicated and stored.id != record.message.id and stored.contact_id != message.contact_id:
                another = await self._another_contacts(org, record, stored)  # found by its provider id
        except BaseException:
            if beside is not None:
                beside.cancel()
                beside.add_done_callback(_quietly)  # its own failure, if any, says nothing more
            raise
        if another:
            return await self._for_another(org, message, stored, limit, beside)
        if limit is None:
            self._newest.after(org, stored)  # the state kept moves on with it (a bot's reply between two turns)
            return stored
        newest_first = self._newest.after(org, stored, limit)
        with _answering(stored):
            if beside is not None:
                if newest_first is None:
                    found = _joined(*await beside, stored, limit)
                    if found is not None:
                        newest_first = found[0]
                        self._newest.keep(org, stored.contact_id, stored.agent_id, found[1], newest_first, limit)
                else:  # another turn of the contact told the store meanwhile: the read is let run (a cancelled
                    beside.add_done_callback(_quietly)  # PostgreSQL query costs the server a connection to cancel)
            return await self._with_context(org, stored, limit, newest_first)

    async def _another_contacts(self, org: str, record: MessageRecord, stored: AppendedMessage) -> bool:
        """Whether a message was deduplicated to one of another contact (not an alias of the one it names): its
        provider id was reused, an application's bug (a webhook's retry names the same contact). The contract
        answers the stored copy, with `deduplicated`; the log says so, and the context asked for is the named
        contact's (it was the copy's: one customer's history to the agent serving another, found by an agent
        developer's review)."""
        if await self.backend.resolve(org, record.message.contact_id) == stored.contact_id:
            return False
        logger.warning(
            "an append named another contact than message %s, stored earlier with provider_message_id %r on "
            "channel %r: nothing was stored and that message was answered (deduplicated); a provider's id names "
            "one message, so the application reused one (a webhook's retry names the same contact)",
            stored.id,
            record.provider_message_id,
            stored.channel,
        )
        return True

    async def _for_another(
        self,
        org: str,
        message: NewMessage,
        stored: AppendedMessage,
        limit: int | None,
        beside: asyncio.Task[tuple[list[Message], int | None]] | None,
    ) -> AppendedMessage:
        """The answer of an append deduplicated to another contact's message: that message, with the context
        asked for (`limit`) of the contact the append named."""
        if beside is not None:  # it read the named contact's newest; the context is read whole below
            beside.add_done_callback(_quietly)
        if limit is None:
            return stored
        with _answering(stored):
            asked = await self.get_context(
                org, message.contact_id, agent_id=message.agent_id, limit=limit, reserved=2 * message_bytes(stored)
            )
        return stored.model_copy(update={"context": asked})

    def _newest_beside(
        self, org: str, record: MessageRecord, limit: int
    ) -> asyncio.Task[tuple[list[Message], int | None]]:
        """The newest `limit` messages of the contact the record names (for its agent), read while it is
        written (they may or may not hold it), and the contact's version they were read at."""
        return asyncio.ensure_future(self._newest_of(org, record.message.contact_id, record.message.agent_id, limit))

    def _newest_of(
        self, org: str, contact_id: str, agent_id: str | None, limit: int
    ) -> Coroutine[Any, Any, tuple[list[Message], int | None]]:
        """What an append's context is made of: the contact's newest `limit` messages for the agent (newest
        first), and the contact's version they were read at."""
        only = MessageFilter(agent_id, None, None, None)
        return self.backend.latest_messages(org, contact_id, only, limit, MAX_RESULT_BYTES)

    async def _with_context(self, org: str, stored: M, limit: int, newest_first: list[Message] | None) -> M:
        """`stored` with what `get_context(contact_id, agent_id=..., limit=limit)` returns right after the
        write: from the contact's newest messages joined with it, or, when none are (None), read again after it
        (`_read_again`); the context gives up its oldest messages for the room the message takes in the same
        result (its fields, and its JSON again in the text a model reads)."""
        if newest_first is None:
            newest_first = await self._read_again(org, stored, limit)
        context = self._context(stored.contact_id, stored.agent_id, newest_first, None, 2 * message_bytes(stored))
        return stored.model_copy(update={"context": context})

    async def _read_again(self, org: str, stored: Message, limit: int) -> list[Message]:
        """The newest `limit` messages of the contact of `stored`, for its agent, read after its write; kept for
        the contact's next turn (newest.py)."""
        newest_first, version = await self._newest_of(org, stored.contact_id, stored.agent_id, limit)
        self._newest.keep(org, stored.contact_id, stored.agent_id, version, newest_first, limit)
        return newest_first

    async def import_messages(self, org: str, messages: Sequence[NewMessage]) -> list[AppendedMessage]:
        """Append many messages in one transaction (all or none); each comes back as `append_message` gives it."""
        now = check.utc_now()
        stored = await self.backend.insert_messages(org, [message_record(message, now) for message in messages])
        for each in stored:
            self.telemetry.appended(each.deduplicated)
        return stored

    async def post_as_contact(
        self,
        org: str,
        contact_id: str,
        chat_id: str,
        parts: Sequence[Part],
        channel_id: str | None = None,
        idempotency_key: str | None = None,
        context_limit: int | None = None,
        created_at: datetime | None = None,
    ) -> StoredMessage:
        """Post `parts` into a chat as the contact; with `context_limit`, the contact's context after it.
        `created_at`: when the contact wrote or said it (a voice turn stored late), as for an append."""
        contact_id, chat_id, checked_parts, wanted, limit = self.checked_post(
            contact_id, chat_id, parts, channel_id, context_limit
        )
        now = check.utc_now()
        contact_id, chat = await self._contact_and_chat(org, contact_id, chat_id)
        if wanted is not None and all(channel.id != wanted for channel in chat.channels):
            became = await self.backend.retired_channel(org, wanted)  # retired by a merge: what it became
            if became is not None and any(channel.id == became for channel in chat.channels):
                wanted = became
        chosen = choose_channel(chat, wanted)
        key = None if idempotency_key is None else check.idempotency_key(idempotency_key)
        new = NewMessage(
            id=None if key is None else idempotent_id(org, "message", key),
            contact_id=contact_id,
            channel=chosen.name,
            role="user",
            parts=checked_parts,
            chat_id=chat_id,
            created_at=created_at,
        )
        record = message_record(new, now)
        stored = await self.backend.insert_message(org, record)  # checks again, in its transaction, the chat
        self.telemetry.appended(stored.deduplicated)
        if key is not None:
            stored = await self._again(org, key, record, stored, dated=created_at is not None)
        posted = StoredMessage(**stored.model_dump(exclude={"deduplicated"}))
        newest_first = self._newest.after(org, stored, limit or 0)
        if limit is None:
            return posted
        with _answering(stored):
            return await self._with_context(org, posted, limit, newest_first)

    @staticmethod
    def checked_post(
        contact_id: str, chat_id: str, parts: Sequence[Part], channel_id: str | None, context_limit: int | None
    ) -> tuple[str, str, list[Part], str | None, int | None]:
        """`post_as_contact`'s arguments checked, in its order (a route that refuses the chat for another reason,
        an organization not the key's, checks them first too, so that a bad argument gets the same answer)."""
        limit = None if context_limit is None else check.limit(context_limit, "context_limit")
        checked_contact = check.contact_id(contact_id)
        checked_chat = check.uuid_text(chat_id, "chat_id")
        wanted = check.optional_uuid(channel_id, "channel_id")
        checked_parts, _ = check.parts(parts)
        return checked_contact, checked_chat, checked_parts, wanted, limit

    async def chat(self, org: str, chat_id: str) -> Chat:
        """One chat of the organization, by its id."""
        chat_id = check.uuid_text(chat_id, "chat_id")
        found = await self.backend.chat(org, chat_id)
        if found is None:
            raise chat_not_found(chat_id)
        return found

    async def _again(
        self, org: str, key: str, record: MessageRecord, stored: AppendedMessage, dated: bool
    ) -> AppendedMessage:
        """What an append under an Idempotency-Key answers: when the message that key names was already stored,
        the request is a retry and gets the first answer (the message, as stored then, not "deduplicated"); a
        different request under the same key (another contact, another text or parts, another `created_at` when
        the retry gives one, ...) is refused. (`dated`: the request gave its `created_at`; without one, the first
        request's time is the server's, which a retry cannot repeat.)"""
        if stored.id != record.message.id or not stored.deduplicated:
            return stored  # stored now, or found by its provider id as the first request found it
        wanted = record.message
        fields = ("channel", "role", "content", "parts", "agent_id", "chat_id", "metadata", *(("created_at",) * dated))
        same = all(getattr(stored, field) == getattr(wanted, field) for field in fields)
        if not same or await self._canonical(org, wanted.contact_id) != stored.contact_id:
            raise key_used_elsewhere(key)
        return stored.model_copy(update={"deduplicated": False})

    async def contact_id_of(self, org: str, identifier: str) -> str:
        """The contact_id of the contact any of its identifiers names, in any spelling reading accepts (NFC);
        the identifier itself, as stored, when it names no contact yet."""
        return await self._canonical(org, check.contact_id(identifier))

    async def _canonical(self, org: str, identifier: str) -> str:
        """The contact_id of the contact `identifier` names (an alias resolves to its contact), or itself."""
        return await self.backend.resolve(org, identifier) or identifier

    async def _contact_and_chat(self, org: str, identifier: str, chat_id: str) -> tuple[str, Chat]:
        """The contact `identifier` names and its chat `chat_id`. A merge that moves the chat between the two
        reads (another process links the contact to another) is met by naming the contact again: its chat
        is found with the contact it moved to, not refused."""
        contact_id = await self._canonical(org, identifier)
        chat = await self.backend.chat(org, chat_id)
        if chat is not None and chat.contact_id != contact_id:
            contact_id = await self._canonical(org, identifier)
        if chat is None or chat.contact_id != contact_id:
            raise chat_not_found(chat_id, contact_id)
        return contact_id, chat

    async def get_context(
        self,
        org: str,
        contact_id: str,
        *,
        agent_id: str | None = None,
        chat_id: str | None = None,
        limit: int = 50,
        roles: Sequence[str] | None = None,
        channels: Sequence[str] | None = None,
        max_chars: int | None = None,
        reserved: int = 0,
        text_only: bool = False,
    ) -> Context:
        """The contact's last messages and their transcript; `reserved` bytes of the result hold something else
        (an append's own message, see `_with_context`); `text_only`: the result carries the transcript's text
        alone (the tool's default), so the size bound cuts it there."""
        contact_id = check.contact_id(contact_id)
        agent_id = check.optional_identifier(agent_id, "agent_id")
        chat_id = check.optional_uuid(chat_id, "chat_id")
        limit = check.limit(limit)
        only = MessageFilter(agent_id, chat_id, check.roles(roles), check.channels(channels))
        budget = check.max_chars(max_chars)
        resolved = chat_id is not None
        if chat_id is not None:
            contact_id, _ = await self._contact_and_chat(org, contact_id, chat_id)
        newest_first, _ = await self.backend.latest_messages(org, contact_id, only, limit, MAX_RESULT_BYTES)
        # the messages name their contact by its own id, whichever identifier asked; with none, ask (once)
        if newest_first:
            contact_id = newest_first[0].contact_id
        elif not resolved:
            contact_id = await self._canonical(org, contact_id)
        return self._context(contact_id, agent_id, newest_first, budget, reserved, text_only)

    @staticmethod
    def _context(
        contact_id: str,
        agent_id: str | None,
        newest_first: list[Message],
        budget: int | None,
        reserved: int,
        text_only: bool = False,
    ) -> Context:
        """The context of these messages: as many of the newest as fit (see `fit_transcript`)."""
        kept, formatted, truncated = fit_transcript(newest_first[::-1], budget, reserved, text_only)
        return Context(
            contact_id=contact_id, agent_id=agent_id, messages=kept, formatted=formatted, truncated=truncated
        )

    async def list_messages(
        self,
        org: str,
        contact_id: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        agent_id: str | None = None,
        chat_id: str | None = None,
        channel: str | None = None,
    ) -> MessagePage:
        contact_id = check.contact_id(contact_id)
        limit = check.limit(limit)
        agent_id = check.optional_identifier(agent_id, "agent_id")
        chat_id = check.optional_uuid(chat_id, "chat_id")
        only = MessageFilter(agent_id, chat_id, None, None if channel is None else [check.channel(channel)])
        key = await self._cursor_key()
        # what the cursor pages through: a cursor of another contact, or of other filters, was read as a place
        # in this list, silently (a page of another contact's times, or none)
        listed = "\x00".join((contact_id, agent_id or "", chat_id or "", channel or ""))
        after = None if cursor is None else decode_cursor(cursor, key, org, listed=listed)
        if only.chat_id is not None:
            await self._contact_and_chat(org, contact_id, only.chat_id)
        rows = await self.backend.message_page(org, contact_id, only, limit + 1, after, MAX_RESULT_BYTES)
        # a page fits in one result (each message also has its line in the text a model reads), the rest is
        # on the next page
        kept = fitting(
            [message for message, _ in rows[:limit]],
            lambda message: message_bytes(message) + text_bytes(format_line(message)),
            lambda message: message_bound(message) + text_bound(format_line(message)),
        )
        more = len(rows) > kept
        rows = rows[:kept]
        return MessagePage(
            messages=[message for message, _ in rows],
            next_cursor=encode_cursor(rows[-1][1], key, org, listed=listed) if more else None,
        )

    async def _cursor_key(self) -> bytes | None:
        """The key of list cursors' mask (cursor.py): the database's secret, read once."""
        if self._cursor_secret is None:
            found = await self.backend.secret(CURSOR_SECRET)
            self._cursor_secret = b"" if found is None else bytes.fromhex(found)
        return self._cursor_secret or None

    async def search_messages(
        self,
        org: str,
        query: str,
        *,
        contact_id: str | None = None,
        channel: str | None = None,
        role: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> SearchPage:
        """Full-text search, best match first: words regardless of case and accents, prefixes (refund*), quoted
        phrases, -exclusions; the whole organization, or one contact with all its identifiers."""
        parsed = parse_query(query)
        contact_id = None if contact_id is None else check.contact_id(contact_id)
        channel = None if channel is None else check.channel(channel)
        role = None if role is None else check.role(role)
        limit = check.limit(limit)
        key = await self._cursor_key()
        searched = "\x00".join((query, contact_id or "", channel or "", role or ""))  # what the cursor pages
        at = SearchPosition(0, None, None) if cursor is None else decode_search_cursor(cursor, searched, key, org)
        # ranking and snippets are CPU work of up to a few hundred milliseconds (ranking.py): in a thread, so
        # that a search never holds the event loop every other request waits for, and at most SEARCHES_PER_ORG
        # of an organization's at once, so that one organization's burst leaves the others their share
        async with self._searching[org]:
            newest, since = await self.backend.search(
                org, parsed, contact_id, channel, role, ranking.WINDOW, at.upto, at.since
            )
            absent = None if at.after is None else (at.after, at.features)
            # the rule: ranking.py (the later pages weigh as the first did: a delete does not reorder the rest)
            order = await _worked_off_the_loop(lambda: ranking.rank(parsed, newest, at.weights or None, absent))
            ranked = order.seqs
            start = at.offset
            if at.after is not None and at.after in ranked:  # where the last page ended, wherever a delete moved it
                start = ranked.index(at.after) + 1
            elif order.place is not None:  # that hit was deleted: where it would rank, were it there
                start = order.place
            found = await self.backend.messages_at(org, ranked[start : start + limit])
            snippets = await _worked_off_the_loop(lambda: [ranking.snippet(parsed, hit.content) for _, hit in found])
        hits = [SearchHit(**hit.model_dump(), snippet=snip) for (_, hit), snip in zip(found, snippets, strict=True)]
        kept = fit_hits(hits)  # a page that would pass the size bound ends early; the cursor goes on from there
        # the next page goes on after the last hit given (those of the page deleted meanwhile are passed by)
        given = ranked.index(found[kept - 1][0]) + 1 if kept else start + min(limit, len(ranked) - start)
        if len(ranked) <= given:
            return SearchPage(hits=hits[:kept], next_cursor=None)
        upto = at.upto if at.upto is not None else newest[0][0]  # the later pages rank the same matches
        last = ranked[given - 1]  # the last hit given, or passed by (deleted before its page was read)
        its = ranking.features(parsed, next(content for seq, content in newest if seq == last))
        after = SearchPosition(given, upto, last, its, order.weights, since)
        return SearchPage(hits=hits[:kept], next_cursor=encode_search_cursor(after, searched, key, org))

    async def delete_message(self, org: str, message_id: str) -> Message:
        message_id = check.uuid_text(message_id, "message_id")
        deleted = await self.backend.delete_message(org, message_id)
        if deleted is None:
            raise message_not_found(message_id)
        audit.took(org, f"deleted message {message_id}")
        return deleted

    # --- chats ---

    async def open_chat(
        self, org: str, contact_id: str, channel: str, agent_id: str | None = None, idempotency_key: str | None = None
    ) -> Chat:
        """A new RUNNING chat; with `idempotency_key`, a retried request gets the chat the first one opened."""
        record = new_chat_record(contact_id, channel, agent_id, check.utc_now())
        if idempotency_key is None:
            return await self.backend.insert_chat(org, record)
        key = check.idempotency_key(idempotency_key)
        record.id = idempotent_id(org, "chat", key)
        chat = await self.backend.insert_chat(org, record)
        if chat.agent_id != record.agent_id or record.channels[0][1] not in [ref.name for ref in chat.channels]:
            raise key_used_elsewhere(key)
        return chat

    async def update_chat(self, org: str, chat_id: str, status: str, contact_id: str | None = None) -> Chat:
        """Set a chat's status; with `contact_id`, only a chat of that contact."""
        chat_id = check.uuid_text(chat_id, "chat_id")
        if contact_id is not None:
            await self._contact_and_chat(org, check.contact_id(contact_id), chat_id)
        updated = await self.backend.set_chat_status(org, chat_id, check.chat_status(status), check.utc_now())
        if updated is None:
            raise chat_not_found(chat_id)
        return updated

    async def list_chats(self, org: str, contact_id: str, limit: int = 50) -> list[Chat]:
        contact_id = check.contact_id(contact_id)
        return await self.backend.chats(org, contact_id, check.limit(limit))

    # --- contacts ---

    async def forget_contact(self, org: str, contact_id: str) -> ForgetResult:
        """Delete a contact and everything of it; what this process kept of the messages it read (memo.py)
        goes too."""
        forgotten = await self.backend.forget_contact(org, check.contact_id(contact_id))
        let_go_of_all()
        if forgotten.deleted_identifiers:  # a contact was there (none: unknown, or forgotten before)
            audit.took(
                org,
                f"forgot a contact ({forgotten.deleted_messages} messages, {forgotten.deleted_chats} chats, "
                f"{forgotten.deleted_identifiers} identifiers erased)",
            )
        return forgotten

    async def get_contact(self, org: str, contact_id: str) -> ContactInfo:
        """A contact, named by its contact_id or any alias: identifiers, channels, counts, first and last activity."""
        found = await self.backend.contact(org, check.contact_id(contact_id))
        if found is None:
            raise contact_not_found(contact_id)
        return found

    async def link_contacts(
        self, org: str, contact_id: str, identifier: str, idempotency_key: str | None = None
    ) -> LinkResult:
        """Afterwards `identifier` names the contact of `contact_id`; a contact it named before is merged in.

        A link is idempotent by itself, but its answer is not (a retry merges nothing more): with
        `idempotency_key`, a retried request gets the first answer, merge counts included, and the same key
        with another request is refused."""
        key = None if idempotency_key is None else check.idempotency_key(idempotency_key)
        contact_id, identifier = check.contact_id(contact_id), check.identifier(identifier, "identifier")
        linked, merged = await self.backend.link(org, contact_id, identifier, key)
        if merged:  # (not a retry given the first answer)
            moved = f"{linked.merged_messages} messages, {linked.merged_chats} chats moved"
            audit.took(org, f"merged two contacts ({moved})")
        return linked

    async def unlink_contact(self, org: str, identifier: str, contact_id: str | None = None) -> ContactInfo:
        """`identifier` no longer names its contact (whose history stays); the next message under it starts a
        new contact. With `contact_id`, only an identifier of that contact."""
        identifier = check.identifier(identifier, "identifier")
        of = None if contact_id is None else check.contact_id(contact_id)
        found = await self.backend.unlink(org, identifier, of)
        if found is None:
            raise identifier_not_found(identifier, of)
        audit.took(org, "unlinked an identifier from its contact")
        return found

    async def recent_contacts(self, org: str, limit: int = 50, cursor: str | None = None) -> ContactPage:
        limit = check.limit(limit)
        key = await self._cursor_key()
        after = None if cursor is None else decode_cursor(cursor, key, org, CONTACTS)
        found = await self.backend.recent_contacts(org, limit + 1, after)
        more = len(found) > limit
        return ContactPage(
            contacts=[
                RecentContact(contact_id=contact_id, last_active_at=from_us(position[0]))
                for contact_id, position in found[:limit]
            ],
            next_cursor=encode_cursor(found[limit - 1][1], key, org, CONTACTS) if more else None,
        )

    # --- history (the import's two-pass policy is in history.py) ---

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[HistorySnapshot]:
        """The history as it is at one moment, for an export: what its reads see was all committed before it
        began (a message is never exported without the chat it is in, however the writes go on)."""
        async with self.backend.snapshot() as taken:
            yield HistorySnapshot(taken)

    async def message_orgs(self, message_ids: Sequence[str]) -> dict[str, str]:
        """The organization of each of these message ids that is stored (an import's check for ids taken)."""
        return await self.backend.message_orgs(message_ids)

    async def chat_owners(self, chat_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """(organization, contact) of each of these chat ids that is stored."""
        return await self.backend.chat_owners(chat_ids)

    async def import_history(
        self, org: str, records: Sequence[NewChat | NewAlias | NewMessage], keep_going: bool = False
    ) -> list[Imported | ChatdockError]:
        """Import chats and messages as they were (ids, timestamps, status), in one transaction.

        Each record comes back as "stored", "existing" (already there: re-importing stores nothing
        twice) or the error that kept it out. Without `keep_going` the first error undoes the whole
        batch and the outcomes stop at it.
        """
        org = check.identifier(org, "org")
        prepared: list[ChatRecord | AliasRecord | MessageRecord | ChatdockError] = []
        for record in records:
            try:
                prepared.append(prepare(record))
            except ChatdockError as exc:
                prepared.append(exc)
        return await self.backend.import_history(org, prepared, keep_going)

    # --- API keys ---

    async def create_api_key(self, org: str, name: str | None = None, read_only: bool = False) -> NewApiKey:
        """A new key of `org`, printed once; a `read_only` one may read and is refused every write."""
        org = check.identifier(org, "org")
        if name is not None:
            name = check.identifier(name, "name")
            if name.startswith(keys.PREFIX):
                raise InvalidInput("name must not start with 'cdk_' (that is how key prefixes start); choose another")
        prefix, key = keys.new_key()
        info = await self.backend.insert_api_key(org, prefix, name, keys.key_hash(key, read_only), read_only)
        return NewApiKey(key=key, info=info)

    async def list_api_keys(self) -> list[ApiKeyInfo]:
        if self._touching:  # the last uses recorded in the background land first, on any engine
            await asyncio.wait(list(self._touching.values()))
        return await self.backend.api_keys()

    async def revoke_api_key(self, prefix_or_name: str, org: str | None = None) -> ApiKeyInfo:
        """Revoke a live key by its prefix or name, or given the whole key (what one has at hand when it leaked:
        its secret part is never repeated, in an error either); with `org`, only a key of that organization."""
        prefix_or_name = keys.revoked_by(prefix_or_name)
        revoked = await self.backend.revoke_api_key(prefix_or_name, org)
        if revoked is None:
            raise no_live_key(prefix_or_name, org)
        self._live_keys.pop(revoked.prefix, None)
        self._revoked[revoked.prefix] = time.monotonic()
        return revoked

    async def verify_api_key(self, key: str) -> keys.LiveKey | None:
        """The organization of a live key (and whether it may only read), or None for a malformed, unknown or
        revoked one.

        A key verified live in the last `keys.REMEMBER_SECONDS` is not read again, so that requests never
        queue for the database just to show their key: a revocation takes effect in this process at once, and
        in every other process (another replica, after `chatdock keys revoke`) within that bound."""
        prefix = keys.prefix_of(key)
        if prefix is None:
            return None
        asked = time.monotonic()
        remembered = self._live_keys.get(prefix)
        if remembered is not None and asked - remembered[1] < keys.REMEMBER_SECONDS:
            return keys.live(remembered[0]) if keys.matches(key, remembered[0]) else None
        # a key that cannot be read (the database away, its table locked) is not let through on an older look:
        # a revocation holds within the bound whatever the database does (the caller hears why: a 503)
        stored = await self.backend.api_key(prefix)
        if stored is not None and not stored.revoked and self._revoked.get(prefix, float("-inf")) < asked:
            self._live_keys[prefix] = (stored, asked)  # not when this process revoked it while it was being read
        else:
            self._live_keys.pop(prefix, None)
        if not keys.matches(key, stored) or stored is None or stored.revoked:
            return None
        now = check.utc_now()
        if (stored.last_used_at is None or now - stored.last_used_at > keys.TOUCH_INTERVAL) and (
            prefix not in self._touching
        ):
            # best-effort and off the request's path: a full disk or a read-only file must not fail a request
            self._touching[prefix] = asyncio.ensure_future(self._touch(prefix, now))
        return keys.live(stored)

    async def _touch(self, prefix: str, now: datetime) -> None:
        try:
            await self.backend.touch_api_key(prefix, now)
        except ChatdockError as exc:
            logger.warning("could not record when key %s was last used: %s", prefix, exc)
        finally:
            self._touching.pop(prefix, None)

    async def ping(self) -> None:
        await self.backend.ping()

    # --- change feed ---

    def announce_to(self, deliver: Deliver) -> Callable[[], None]:
        """`deliver` each change this process commits; returns the function that stops it."""
        return self.backend.announce_to(deliver)

    @asynccontextmanager
    async def following(
        self, deliver: Deliver, wanted: Callable[[], bool], wait: float = FEED_START_WAIT
    ) -> AsyncIterator[None]:
        """While inside, `deliver` the changes other processes commit, looking only while `wanted()`. Entering
        waits (at most `wait` seconds) until the feed is in place, so that every change committed once inside
        is heard: a replica that says it is ready misses none of them."""
        started = asyncio.Event()

        def heard(change: Any) -> None:
            # a contact forgotten elsewhere (or changes too many to tell): what was kept of its text goes here too
            if not isinstance(change, Change) or change.kind == "forgotten":
                let_go_of_all()
            deliver(change)

        follower = asyncio.ensure_future(self.backend.follow(heard, wanted, started.set))
        try:
            waiting = asyncio.ensure_future(started.wait())
            try:
                await asyncio.wait({waiting, follower}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
            if follower.done() and not started.is_set():
                follower.result()  # what stopped it before it was in place, said now
                raise Unavailable("the change feed of other processes ended before it was in place")
            if not started.is_set():
                logger.warning(
                    "the change feed of other processes is not in place after %g s; changes they commit before "
                    "it is are not heard here",
                    wait,
                )
            follower.add_done_callback(_feed_ended)  # from here on, a feed that stops is logged, not raised
            yield
        finally:
            follower.cancel()
            await asyncio.wait({follower})  # the follower's end; a cancel of this task still goes through

    async def health(self, writes: bool = True) -> list[str]:
        """What keeps the store from reading or writing now (without `writes`, a server that only reads: from
        reading); empty when it is sound."""
        return await self.backend.health(writes)


class HistorySnapshot:
    """The history at one moment (`Store.snapshot`): its chats, aliases and messages, as an export writes them."""

    def __init__(self, taken: Snapshot) -> None:
        self._taken = taken

    def export_chats(
        self,
        org: str | None = None,
        contact_id: str | None = None,
        batch: int = EXPORT_BATCH,
        skipped: list[str] | None = None,
    ) -> AsyncIterator[tuple[str, Chat]]:
        """Every chat as (organization, chat), in the order stored, a batch at a time (never all in memory).

        Given a `skipped` list, what a damaged database cannot read is named there and passed over."""
        contact_id = None if contact_id is None else check.contact_id(contact_id)
        return self._taken.export_chats(org, contact_id, check.limit(batch, "batch", 1, 100_000), skipped)

    def export_aliases(self, org: str | None = None, contact_id: str | None = None) -> AsyncIterator[tuple[str, Alias]]:
        """Every alias as (organization, alias), oldest first."""
        contact_id = None if contact_id is None else check.contact_id(contact_id)
        return self._taken.export_aliases(org, contact_id)

    def export_messages(
        self,
        org: str | None = None,
        contact_id: str | None = None,
        batch: int = EXPORT_BATCH,
        skipped: list[str] | None = None,
    ) -> AsyncIterator[tuple[str, Message]]:
        """Every message as (organization, message), oldest first, a batch at a time (`skipped`: as for chats)."""
        contact_id = None if contact_id is None else check.contact_id(contact_id)
        return self._taken.export_messages(org, contact_id, check.limit(batch, "batch", 1, 100_000), skipped)

    async def count_records(self, org: str | None = None, contact_id: str | None = None) -> int:
        """How many lines an export of `org` (all, when None) and `contact_id` writes: chats, aliases,
        messages."""
        contact_id = None if contact_id is None else check.contact_id(contact_id)
        return await self._taken.count_records(org, contact_id)
