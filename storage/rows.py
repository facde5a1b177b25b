"""Rows to the contract's shapes and back, for every engine: times as integer microseconds since 1970, JSON text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import TypeAdapter

from .memo import Kept
from .models import ApiKeyInfo, ChannelRef, Chat, Message, Part
from .validation import EARLIEST


class Row(Protocol):
    """A row as a driver gives it (a tuple, an asyncpg Record): read by position or slice."""

    def __getitem__(self, index: Any, /) -> Any: ...

    def __iter__(self) -> Any: ...


def to_us(value: datetime) -> int:
    delta = value - EARLIEST
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    return EARLIEST + timedelta(microseconds=value)


def optional_from_us(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def _message_fields(row: Row, contact_id: str) -> dict[str, Any]:
    message_id, agent_id, chat_id, channel, role, content, parts, metadata, created_us = row[:9]
    return {
        "id": message_id,
        "contact_id": contact_id,
        "agent_id": agent_id,
        "chat_id": chat_id,
        "channel": channel,
        "role": role,
        "content": content,
        "parts": json.loads(parts) if parts is not None else [{"text": content}],
        "metadata": json.loads(metadata) if metadata is not None else {},
        "created_at": from_us(created_us),
    }


_MESSAGES = TypeAdapter(list[Message])


def message(row: Row, contact_id: str) -> Message:
    """A row of `MESSAGE_COLUMNS` (queries.py) as a Message."""
    return Message.model_validate(_message_fields(row, contact_id))


class _Built:
    """Messages already built, filed by their seq with the whole row they were built from: a row read again
    that equals it (every column read, so an edited, moved or deleted message is another row, or none) gets
    that message. Building one costs more than finding it here (4 us against 0.3); filing by the seq, an
    integer, keeps what a miss adds to the building near 1 us (hashing whole rows cost twice that).
    Messages are frozen, so the one object serves every read. Kept as memo.py keeps (`Kept`), weighed by
    their text (content, parts and metadata as stored), looked up and filed under one taking of its lock
    for all the rows of a read."""

    def __init__(self, most: int, chars: int) -> None:
        self._kept: Kept[int, tuple[tuple[Any, ...], Message]] = Kept(most, chars)

    def messages(self, found_rows: list[tuple[Any, ...]]) -> list[Message]:
        found: list[Message | None] = []
        missing: list[int] = []
        kept = self._kept
        with kept.lock:
            for index, row in enumerate(found_rows):
                filed = kept.get(row[9])
                if filed is not None and filed[0] == row:
                    found.append(filed[1])
                else:
                    missing.append(index)
                    found.append(None)
        if missing:
            fresh = _MESSAGES.validate_python([_message_fields(found_rows[i], found_rows[i][10]) for i in missing])
            with kept.lock:
                for index, message in zip(missing, fresh, strict=True):
                    row = found_rows[index]  # (in place of what the seq had: changed, or another database's)
                    kept.file(row[9], (row, message), len(row[5]) + len(row[6] or "") + len(row[7] or ""))
                    found[index] = message
        return found  # type: ignore[return-value]  # every missing one was built above


MESSAGES_KEPT = 8192
MESSAGE_CHARS_KEPT = 4 * 1024 * 1024
_built = _Built(MESSAGES_KEPT, MESSAGE_CHARS_KEPT)


def messages(found: Sequence[Row]) -> list[Message]:
    """Rows of `MESSAGE_COLUMNS` and their contact's contact_id (index 10; what follows is not read) as
    Messages: those read lately as they were built then (`_Built`), the others validated in one call (a
    context's 50 messages cost a quarter less than one by one)."""
    return _built.messages([tuple(row[:11]) for row in found])  # not the contact's version (index 11)


def chat(row: Row) -> Chat:
    """A row of `CHAT_COLUMNS` (queries.py) as a Chat."""
    chat_id, contact_id, agent_id, status, created_us, updated_us, channels = row
    return Chat(
        id=chat_id,
        contact_id=contact_id,
        agent_id=agent_id,
        status=status,
        channels=[ChannelRef(id=c[0], name=c[1], kind=c[2]) for c in json.loads(channels)],
        created_at=from_us(created_us),
        updated_at=from_us(updated_us),
    )


def key_info(row: Row) -> ApiKeyInfo:
    """A row of `KEY_COLUMNS` (queries.py) as an ApiKeyInfo."""
    prefix, name, org, created_us, last_used_us, revoked_us, read_only = row
    return ApiKeyInfo(
        prefix=prefix,
        name=name,
        org=org,
        read_only=bool(read_only),
        created_at=from_us(created_us),
        last_used_at=optional_from_us(last_used_us),
        revoked_at=optional_from_us(revoked_us),
    )


def parts_json(parts: Sequence[Part], plain: bool) -> str | None:
    """NULL for a plain message (its one part is its content), else the parts as JSON."""
    return None if plain else json.dumps([p.model_dump(exclude_none=True) for p in parts])


def metadata_json(metadata: dict[str, Any]) -> str | None:
    return json.dumps(metadata, ensure_ascii=False, separators=(",", ":")) if metadata else None
