"""One pydantic model per shape of the contract, shared by the store, the tools and the resources."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, PrivateAttr
from pydantic_core import PydanticCustomError

Role = Literal["user", "assistant", "system", "tool", "event", "note"]
ROLES: tuple[Role, ...] = ("user", "assistant", "system", "tool", "event", "note")

ChatStatus = Literal["RUNNING", "COMPLETED", "FAILED", "CANCELED"]
CHAT_STATUSES: tuple[ChatStatus, ...] = ("RUNNING", "COMPLETED", "FAILED", "CANCELED")
MAX_TEXT_CHARS = 32_768  # a message's text, and so each of its parts' (validation.py holds the rules)

ChannelKind = Literal["custom", "provider"]

PROVIDER_CHANNELS = frozenset({"whatsapp", "sms", "mms", "rcs", "email", "messenger", "instagram", "telegram"})


def channel_kind(name: str) -> ChannelKind:
    """A channel is a provider channel when a provider's webhook carries it, custom otherwise."""
    return "provider" if name in PROVIDER_CHANNELS else "custom"


@lru_cache(maxsize=8192)
def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds, always the same width: `2026-11-21T07:40:44.000123Z`. Remembered for
    the last few thousand: every turn of a conversation writes the same recent messages out again."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


Timestamp = Annotated[
    AwareDatetime,
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
    Field(description="RFC 3339, UTC, microseconds"),
]


_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")
_LEAP_SECOND = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:60")
_TIME_EXAMPLE = "like '2026-11-21T09:30:00Z' or '2026-11-21T10:30:00+01:00'"


def written_time(value: object) -> object:
    """A time is written out (RFC 3339), whoever gives it (a tool, a route, a history line): pydantic also reads
    a number, or a string of digits, as seconds or milliseconds since 1970, whichever it guesses (a basic-format
    date, 20261207, became 1970-08-23 and sorted to the start of the history), and a date alone as its midnight
    (in no timezone, refused quoting a time the caller never wrote)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise PydanticCustomError("datetime_type", f"input should be a time written out, {_TIME_EXAMPLE}, not a number")
    if isinstance(value, str) and not _DATE_TIME.match(value.strip()):
        raise PydanticCustomError(
            "datetime_type", f"input should be a date and a time with its timezone, {_TIME_EXAMPLE}"
        )
    if isinstance(value, str) and _LEAP_SECOND.match(value.strip()):  # RFC 3339's, which no datetime holds
        raise PydanticCustomError(
            "datetime_type",
            "input is a leap second (:60), which cannot be stored; give it as :59.999999 of that minute",
        )
    return value


WrittenTime = Annotated[datetime, BeforeValidator(written_time)]  # a time given to the store: written out


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _absent(value: object) -> bool:
    return value is None


class Part(_Model):
    """A piece of a message's text; timestamps: seconds from the start of the call or recording, if known."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["text"] = "text"
    text: Annotated[str, Field(json_schema_extra={"minLength": 1, "maxLength": MAX_TEXT_CHARS})]  # validation.parts
    start_timestamp: float | None = Field(default=None, exclude_if=_absent)
    end_timestamp: float | None = Field(default=None, exclude_if=_absent)


class Message(_Model):
    """A stored message."""

    # frozen, as one read's messages may be the next read's too (rows.messages), and so are its parts; its `parts`
    # list and `metadata` dict are shared with every read of it: change neither in place (a changed copy is
    # `message.model_copy(update={...}, deep=True)`). The docstring above is the schema's description.

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    contact_id: str
    agent_id: str | None
    chat_id: str | None
    channel: str
    role: Role
    content: str
    parts: list[Part]
    metadata: dict[str, Any]
    created_at: Timestamp


class Context(_Model):
    """The last messages of a contact, oldest first, and the same as an LLM-ready transcript."""

    contact_id: str
    agent_id: str | None
    messages: list[Message]
    formatted: str
    truncated: bool


class StoredMessage(Message):
    """A message just written and, when the write asked for it with `context_limit`, the contact's context
    right after it (what `get_context` would return), saving a voice turn its second round trip."""

    context: Context | None = Field(default=None, exclude_if=_absent)


class AppendedMessage(StoredMessage):
    """The stored message, and whether it was already there (same channel and provider_message_id)."""

    deduplicated: bool
    # not part of the answer: the contact's version its write made (`contacts.version`), when it stored it
    _contact_version: int | None = PrivateAttr(default=None)


def appended(message: Message, deduplicated: bool, contact_version: int | None = None) -> AppendedMessage:
    """`message` as an append returns it; built without checking again what the store just checked.
    `contact_version`: the count of changes of the contact's messages its write made (see Store._joined)."""
    made = AppendedMessage.model_construct(**vars(message), deduplicated=deduplicated)
    made._contact_version = contact_version
    return made


def as_message(stored: Message) -> Message:
    """A stored or appended message as a plain `Message` (its fields alone, no context nor outcome), built
    without checking again what the store checked."""
    return Message.model_construct(**{name: getattr(stored, name) for name in Message.model_fields})


class NewMessage(_Model):
    """What a caller asks the store to keep; the store checks every field before it writes."""

    contact_id: str
    channel: str
    role: str
    content: str | None = None
    parts: list[Part] | None = None
    agent_id: str | None = None
    chat_id: str | None = None
    metadata: dict[str, Any] | None = None
    created_at: WrittenTime | None = None
    id: str | None = None


class NewChannel(_Model):
    """A channel of an imported chat; `id` is kept when the contact has no channel of that name yet."""

    id: str | None = None
    name: str
    kind: str | None = None


class NewChat(_Model):
    """A chat as history import brings it in: its own id, status, channels and timestamps kept."""

    id: str
    contact_id: str
    agent_id: str | None = None
    status: str = "RUNNING"
    channels: list[NewChannel]
    created_at: WrittenTime
    updated_at: WrittenTime | None = None


class ChannelRef(_Model):
    """A channel attached to a chat; `id` is what post_as_contact's `channel_id` names."""

    id: str
    name: str
    kind: ChannelKind


class Chat(_Model):
    """One conversation thread of one contact."""

    id: str
    contact_id: str
    agent_id: str | None
    status: ChatStatus
    channels: list[ChannelRef]
    created_at: Timestamp
    updated_at: Timestamp


class ChatList(_Model):
    chats: list[Chat]


class MessagePage(_Model):
    """A page of messages, newest first; pass `next_cursor` back for the next page (null on the last)."""

    messages: list[Message]
    next_cursor: str | None


class RecentContact(_Model):
    contact_id: str
    last_active_at: Timestamp  # the list's order, the most recently active first


class ContactPage(_Model):
    """A page of the organization's contacts, the most recently active first; pass `next_cursor` back as
    `cursor` for the next page (null on the last)."""

    contacts: list[RecentContact]
    next_cursor: str | None

    @property
    def contact_ids(self) -> list[str]:
        return [contact.contact_id for contact in self.contacts]


class DeletedMessage(_Model):
    id: str
    deleted: Literal[True] = True


class ForgetResult(_Model):
    contact_id: str
    deleted_messages: int
    deleted_chats: int
    deleted_identifiers: int = 0


class ContactInfo(_Model):
    """A contact: its own id, its other identifiers, where it wrote, how much, and when."""

    contact_id: str
    aliases: list[str]
    channels: list[str]
    message_count: int
    chat_count: int
    first_seen_at: Timestamp
    last_active_at: Timestamp


class LinkResult(ContactInfo):
    """The contact after a link, and what a merge moved into it."""

    merged_messages: int
    merged_chats: int


class NewAlias(_Model):
    """An alias as history import brings it in."""

    contact_id: str
    identifier: str
    created_at: WrittenTime


class Alias(_Model):
    """An alias of a contact, as history export writes it."""

    contact_id: str
    identifier: str
    created_at: Timestamp


class ApiKeyInfo(_Model):
    """What is kept of an API key: never the key itself, only its hash and visible prefix."""

    prefix: str
    name: str | None
    org: str
    read_only: bool = False  # its bearer may read, and is refused every write (`keys create --read-only`)
    created_at: Timestamp
    last_used_at: Timestamp | None
    revoked_at: Timestamp | None


class NewApiKey(_Model):
    key: str
    info: ApiKeyInfo


class ChatWithMessages(Chat):
    """A chat with the message just posted into it (and the contact's context after it, when asked)."""

    messages: list[Message]
    context: Context | None = Field(default=None, exclude_if=_absent)


class SearchHit(Message):
    """A message that matched, with its matched words marked [ ] in `snippet`."""

    snippet: str


class SearchPage(_Model):
    """Hits best first; pass `next_cursor` back for more (null when there are no more)."""

    hits: list[SearchHit]
    next_cursor: str | None
