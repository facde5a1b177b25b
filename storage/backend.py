"""The backend seam: what a storage engine must do, and nothing the contract's rules decide.

`Store` (store.py) checks and normalizes every argument, words every error
and applies every rule that belongs to no engine; then it asks a `Backend`
to persist or query records that are already checked (records.py). A
backend scopes every query by the organization it is given, so an id of
another organization behaves exactly like an unknown id, and it enforces
what only the stored state can decide, inside its own transaction: a chat
that belongs to another contact, an id already taken, a retried webhook
(one row, by a unique constraint). One subpackage per engine: `sqlite/`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from .changes import Deliver
from .cursor import Position
from .errors import ChatdockError
from .models import (
    Alias,
    ApiKeyInfo,
    AppendedMessage,
    Chat,
    ChatStatus,
    ContactInfo,
    ForgetResult,
    LinkResult,
    Message,
    Role,
)
from .records import AliasRecord, ChatRecord, MessageRecord
from .search import Query

# How each imported record went: newly stored, or already there (same id; or channel and provider id).
Imported = Literal["stored", "existing"]


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """Which of a contact's messages a read wants; None means no restriction."""

    agent_id: str | None = None
    chat_id: str | None = None
    roles: Sequence[Role] | None = None
    channels: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class StoredKey:
    """What a backend keeps of an API key: its hash, never the key."""

    hash: str
    org: str
    revoked: bool
    last_used_at: datetime | None
    read_only: bool = False


class Snapshot(Protocol):
    """The history at one moment (`Backend.snapshot`)."""

    def export_chats(
        self, org: str | None, contact_id: str | None, batch: int, skipped: list[str] | None = None
    ) -> AsyncIterator[tuple[str, Chat]]:
        """Every chat as (organization, chat) in the order stored, `batch` rows at a time. Given a `skipped`
        list, what a damaged database cannot read is named there and passed over instead of raising."""
        ...

    def export_aliases(self, org: str | None, contact_id: str | None) -> AsyncIterator[tuple[str, Alias]]:
        """Every alias as (organization, alias), oldest first."""
        ...

    def export_messages(
        self, org: str | None, contact_id: str | None, batch: int, skipped: list[str] | None = None
    ) -> AsyncIterator[tuple[str, Message]]:
        """Every message as (organization, message), oldest first, `batch` rows at a time (`skipped`: as for
        chats)."""
        ...

    async def count_records(self, org: str | None, contact_id: str | None) -> int:
        """How many lines the three exports would yield."""
        ...


class Backend(Protocol):
    applied: list[int]  # the migrations this process applied as it opened the database (none: it was up to date)

    # --- messages ---
    async def insert_message(self, org: str, record: MessageRecord) -> AppendedMessage:
        """Store one message; an already stored one (same id, or channel and provider id) comes back instead,
        with `deduplicated: true`. A `chat_id` must name a chat of the record's contact. A stored one carries
        the contact's version its write made (`_contact_version`): every change of a contact's messages (an
        append, a delete, a merge) counts one, in its transaction."""
        ...

    async def insert_messages(self, org: str, records: Sequence[MessageRecord]) -> list[AppendedMessage]:
        """`insert_message` for each record, in one transaction: all or none."""
        ...

    async def latest_messages(
        self, org: str, contact_id: str, only: MessageFilter, limit: int, max_bytes: int
    ) -> tuple[list[Message], int | None]:
        """The contact's newest `limit` messages that pass `only`, newest first, stopping after the one whose
        stored text (content, parts, metadata) brings the total to `max_bytes`: a read never holds more. And
        the contact's version as of the same read (None when no message was found): the count of changes of
        its messages, which `insert_message` also tells."""
        ...

    async def message_page(
        self, org: str, contact_id: str, only: MessageFilter, limit: int, after: Position | None, max_bytes: int
    ) -> list[tuple[Message, Position]]:
        """The messages of `latest_messages` starting after the keyset position `after`; each with its position."""
        ...

    async def search(
        self,
        org: str,
        query: Query,
        contact_id: str | None,
        channel: str | None,
        role: str | None,
        window: int,
        upto: int | None = None,
        since: int | None = None,
    ) -> tuple[list[tuple[int, str]], int]:
        """The `window` most recently stored messages of the organization (of one contact, any of its
        identifiers) that match, newest first, none with a seq past `upto`: each one's seq and content
        (ranking.py ranks them); and for a narrowed query (search.py's CANDIDATES), the oldest seq its search
        considered (0: every message). With `since` (a later page's: what the first page answered), none
        before that seq, no bound of its own, and `since` answered again."""
        ...

    async def messages_at(self, org: str, seqs: Sequence[int]) -> list[tuple[int, Message]]:
        """The organization's messages with these seqs, each with its seq, in that order (those still there)."""
        ...

    async def delete_message(self, org: str, message_id: str) -> Message | None:
        """Delete one message; the message deleted, or None when the organization has no such message."""
        ...

    # --- chats ---
    async def chat(self, org: str, chat_id: str) -> Chat | None: ...

    async def retired_channel(self, org: str, channel_id: str) -> str | None:
        """The channel of the organization a merge folded the channel `channel_id` into (two of one name
        became one); None when no merge of the organization retired that id."""
        ...

    async def insert_chat(self, org: str, record: ChatRecord) -> Chat:
        """Store a new chat with its channels (created for the contact when it has none of that name)."""
        ...

    async def set_chat_status(self, org: str, chat_id: str, status: ChatStatus, now: datetime) -> Chat | None: ...

    async def chats(self, org: str, contact_id: str, limit: int) -> list[Chat]:
        """The contact's chats, newest first."""
        ...

    # --- contacts ---
    async def forget_contact(self, org: str, contact_id: str) -> ForgetResult: ...

    async def resolve(self, org: str, identifier: str) -> str | None:
        """The contact_id of the contact `identifier` names (itself, or an alias of it), None for none."""
        ...

    async def contact(self, org: str, contact_id: str) -> ContactInfo | None:
        """The contact any of its identifiers names, None for none."""
        ...

    async def link(self, org: str, contact_id: str, identifier: str, key: str | None = None) -> tuple[LinkResult, bool]:
        """Make `identifier` name the contact of `contact_id` (created when new), in one transaction; when it
        names another contact, move that one's messages, chats, channels and identifiers into it. With an
        Idempotency-Key `key`, the answer is kept in the same transaction, and a retry gets it instead. With
        the answer, whether this call merged two contacts (a retry given the first answer did not)."""
        ...

    async def unlink(self, org: str, identifier: str, of: str | None = None) -> ContactInfo | None:
        """Detach an alias from its contact (InvalidInput for a contact's own id); None for an unknown one, or
        (with `of`, any identifier of a contact) for one that is not that contact's, in the same transaction."""
        ...

    async def recent_contacts(self, org: str, limit: int, after: Position | None) -> list[tuple[str, Position]]:
        """The contacts with the latest messages first (then the latest made), each with its keyset position
        (last activity, key); with `after`, those after that position."""
        ...

    # --- history ---
    def snapshot(self) -> AbstractAsyncContextManager[Snapshot]:
        """The whole history as it is at one moment, for an export: every read of the snapshot is made in one
        read transaction, so writes made meanwhile are in none of its parts or in all of them (a message is
        never exported without the chat it is in)."""
        ...

    async def import_history(
        self, org: str, records: Sequence[ChatRecord | AliasRecord | MessageRecord | ChatdockError], keep_going: bool
    ) -> list[Imported | ChatdockError]:
        """Store records as they were (ids, times, status) in one transaction, each in its own savepoint.

        An error in `records` (a record that failed its checks) is passed through as its outcome. Without
        `keep_going`, the first error undoes the whole batch and the outcomes stop at it.
        """
        ...

    async def message_orgs(self, message_ids: Sequence[str]) -> dict[str, str]:
        """The organization of each of these message ids that is stored anywhere."""
        ...

    async def chat_owners(self, chat_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """The (organization, contact) of each of these chat ids that is stored anywhere."""
        ...

    async def secret(self, name: str) -> str | None:
        """The database's secret `name` (made by a migration), None when it has none."""
        ...

    # --- API keys ---
    async def insert_api_key(
        self, org: str, prefix: str, name: str | None, key_hash: str, read_only: bool = False
    ) -> ApiKeyInfo:
        """Keep a new key's hash; a live key of the same name is a Conflict."""
        ...

    async def api_keys(self) -> list[ApiKeyInfo]: ...

    async def api_key(self, prefix: str) -> StoredKey | None: ...

    async def revoke_api_key(self, prefix_or_name: str, org: str | None = None) -> ApiKeyInfo | None: ...

    async def touch_api_key(self, prefix: str, now: datetime) -> None: ...

    # --- change feed (changes.py) ---
    def announce_to(self, deliver: Deliver) -> Callable[[], None]:
        """Call `deliver` (on the event loop) with each change this process commits, once it is committed;
        returns the function that stops it."""
        ...

    async def follow(self, deliver: Deliver, wanted: Callable[[], bool], ready: Callable[[], None]) -> None:
        """Until cancelled, deliver the changes other processes commit, within a fraction of a second, looking
        only while `wanted()`; `EVERYTHING` when some may have been missed. `ready()` is called once every
        change committed from then on will be delivered."""
        ...

    # --- health ---
    async def ping(self) -> None:
        """Raise when the database cannot be read."""
        ...

    async def health(self, writes: bool = True) -> list[str]:
        """What keeps the database from reading or writing now (without `writes`: from reading, for a server
        that takes no writes), each said as an Unavailable error says it; empty when it is sound. Cheap enough
        for every /healthz."""
        ...

    async def close(self) -> None: ...
