"""Records checked in full before any backend sees them: what a backend persists, and nothing it must check.

`message_record` and `chat_record` apply every rule of the contract that does
not depend on what is stored (bounds, patterns, normalization, timestamps);
a backend only has to keep the record and enforce what the stored state
decides (a chat of another contact, an id taken, a duplicate webhook).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from . import validation as check
from .errors import InvalidInput
from .ids import uuid7
from .models import ChatStatus, Message, NewAlias, NewChat, NewMessage, Part, channel_kind

T = TypeVar("T")

MAX_CHAT_CHANNELS = 64


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A message ready to store, with what the store derives from it: the webhook key, and whether its parts
    are just its content (one part, no timestamps), which a backend need not keep apart."""

    message: Message
    provider_message_id: str | None
    plain: bool


def message_record(new: NewMessage, now: datetime) -> MessageRecord:
    """Check a message in full; InvalidInput says what to fix, every field that needs it at once (a model that
    got two wrong learns both in one answer)."""
    problems: list[str] = []

    def checked(check_one: Callable[..., T], *args: Any) -> T:
        try:
            return check_one(*args)
        except InvalidInput as exc:
            problems.append(exc.message)
            return cast(T, None)

    contact_id = checked(check.contact_id, new.contact_id)
    channel = checked(check.channel, new.channel)
    role = checked(check.role, new.role)
    agent_id = checked(check.optional_identifier, new.agent_id, "agent_id")
    chat_id = checked(check.optional_uuid, new.chat_id, "chat_id")
    parts: list[Part] = []
    content = ""
    if new.parts is not None:
        if new.content is not None:
            problems.append("give either content or parts, not both")
        else:
            parts, content = checked(check.parts, new.parts, "parts") or ([], "")
    elif new.content is not None:
        content = checked(check.content, new.content)
        parts = [Part.model_construct(text=content)]
    else:
        problems.append("content must not be empty; send the message's text")
    metadata, provider_message_id = checked(check.metadata, new.metadata) or ({}, None)
    created = checked(check.created_at, new.created_at, now)
    if problems:
        raise InvalidInput("; ".join(problems))
    message = Message.model_construct(  # every field was checked above: no second validation
        id=uuid7() if new.id is None else check.uuid_text(new.id, "id"),
        contact_id=contact_id,
        agent_id=agent_id,
        chat_id=chat_id,
        channel=channel,
        role=role,
        content=content,
        parts=parts,
        metadata=metadata,
        created_at=created,
    )
    only = parts[0] if len(parts) == 1 else None
    plain = only is not None and only.start_timestamp is None and only.end_timestamp is None
    return MessageRecord(message, provider_message_id, plain)


@dataclass(slots=True)
class ChatRecord:
    """A chat ready to store; each channel is (the id it should keep when still free, its name)."""

    id: str
    contact_id: str
    agent_id: str | None
    status: ChatStatus
    channels: list[tuple[str | None, str]]
    created_at: datetime
    updated_at: datetime


def new_chat_record(contact_id: object, channel: object, agent_id: object, now: datetime) -> ChatRecord:
    """A chat being opened now on one channel: RUNNING, with a fresh id."""
    return ChatRecord(
        id=uuid7(),
        contact_id=check.contact_id(contact_id),
        agent_id=check.optional_identifier(agent_id, "agent_id"),
        status="RUNNING",
        channels=[(None, check.channel(channel))],
        created_at=now,
        updated_at=now,
    )


def chat_record(new: NewChat, now: datetime) -> ChatRecord:
    """Check an imported chat in full (its own id, status, channels and times); InvalidInput says what to fix."""
    chat_id = check.uuid_text(new.id, "id")
    contact_id = check.contact_id(new.contact_id)
    agent_id = check.optional_identifier(new.agent_id, "agent_id")
    status = check.chat_status(new.status)
    if not new.channels:
        raise InvalidInput("channels must name at least one channel: a chat is opened on a channel")
    if len(new.channels) > MAX_CHAT_CHANNELS:
        raise InvalidInput(f"a chat may have at most {MAX_CHAT_CHANNELS} channels, got {len(new.channels)}")
    channels: list[tuple[str | None, str]] = []
    for ref in new.channels:
        name = check.channel(ref.name, "channels[].name")
        if ref.kind is not None and ref.kind != channel_kind(name):
            raise InvalidInput(f"channel {name!r} is a {channel_kind(name)} channel; kind {ref.kind!r} is wrong")
        channels.append((check.optional_uuid(ref.id, "channels[].id"), name))
    if len({name for _, name in channels}) != len(channels):
        raise InvalidInput("channels must not name the same channel twice")
    created = check.created_at(new.created_at, now)
    updated = check.created_at(new.updated_at if new.updated_at is not None else new.created_at, now, "updated_at")
    if updated < created:
        raise InvalidInput("updated_at must not be before created_at")
    return ChatRecord(chat_id, contact_id, agent_id, status, channels, created, updated)


@dataclass(frozen=True, slots=True)
class AliasRecord:
    """An imported alias: `identifier` names the contact of `contact_id` since `created_at`."""

    contact_id: str
    identifier: str
    created_at: datetime


def alias_record(new: NewAlias, now: datetime) -> AliasRecord:
    return AliasRecord(
        contact_id=check.contact_id(new.contact_id),
        identifier=check.identifier(new.identifier, "identifier"),
        created_at=check.created_at(new.created_at, now),
    )
