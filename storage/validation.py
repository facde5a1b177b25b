"""The contract's bounds, checked before anything is written; each failure says what to fix."""

from __future__ import annotations

import json
import math
import re
import unicodedata
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from .errors import InvalidInput
from .models import CHAT_STATUSES, ROLES, ChatStatus, Part, Role
from .models import format_timestamp as format_time

MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 32_768
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 32
MAX_PARTS = 100
MIN_LIMIT, MAX_LIMIT = 1, 200
MAX_MAX_CHARS = 10_000_000

CHANNEL_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")


def _shown(value: object, width: int = 40) -> str:
    """A value as it may be echoed in an error: repr, cut short."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# Control, format and line/paragraph separator characters: invisible or line-breaking, they would make
# look-alike identifiers (a zero-width space, a right-to-left override) or break a transcript's lines.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def normal_identifier(value: str) -> str:
    """An identifier as it is stored: Unicode NFC (so "José" typed either way is one contact)."""
    return unicodedata.normalize("NFC", value)


def refused_character(value: str) -> tuple[int, str] | None:
    """The first character (position, category) an identifier may not hold, or None."""
    for index, char in enumerate(value):
        category = unicodedata.category(char)
        if category in REFUSED_CATEGORIES:
            return index, category
    return None


def identifier(value: object, name: str) -> str:
    """A contact, alias or agent id: NFC, 1 to 256 characters, no control, format or separator characters."""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    value = normal_identifier(value)
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise InvalidInput(f"{name} must be 1 to {MAX_ID_CHARS} characters, got {len(value)}")
    found = refused_character(value)
    if found is not None:
        index, category = found
        if category == "Cc":
            raise InvalidInput(
                f"{name} must not contain control characters (NUL, newline, tab, ...), got {_shown(value)}"
            )
        raise InvalidInput(
            f"{name} must not contain invisible format or line-separator characters (zero-width space, "
            f"right-to-left override, U+2028, ...); it has U+{ord(value[index]):04X} at position {index + 1}"
        )
    return value


def contact_id(value: object) -> str:
    return identifier(value, "contact_id")


def optional_identifier(value: object, name: str) -> str | None:
    return None if value is None else identifier(value, name)


def channel(value: object, name: str = "channel") -> str:
    if not isinstance(value, str) or not CHANNEL_PATTERN.fullmatch(value):
        raise InvalidInput(
            f"{name} must be a lower-case name of 1 to 64 characters from a-z, 0-9 and _.:- "
            f"starting with a letter or digit (like 'whatsapp' or 'voice'), got {_shown(value)}"
        )
    return value


def role(value: object) -> Role:
    for known in ROLES:
        if value == known:
            return known
    raise InvalidInput(f"role must be one of {', '.join(ROLES)}; got {_shown(value)}")


def chat_status(value: object) -> ChatStatus:
    for known in CHAT_STATUSES:
        if value == known:
            return known
    raise InvalidInput(f"status must be one of {', '.join(CHAT_STATUSES)}; got {_shown(value)}")


def uuid_text(value: object, name: str) -> str:
    """A UUID in its canonical lower-case form."""
    if isinstance(value, str) and len(value) <= 64:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise InvalidInput(f"{name} must be a UUID like '0192f0c4-7d3e-7b1a-9c4e-2f1d3a5b6c7d', got {_shown(value)}")


def optional_uuid(value: object, name: str) -> str | None:
    return None if value is None else uuid_text(value, name)


def limit(value: object, name: str = "limit", low: int = MIN_LIMIT, high: int = MAX_LIMIT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be a whole number between {low} and {high}, got {_shown(value)}")
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}, got {value}")
    return value


def content(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"content must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInput("content must not be empty; send the message's text")
    _text_size(len(value), "content")
    if "\x00" in value:
        raise InvalidInput("content must not contain NUL characters (\\x00); remove them and send again")
    return value


def _text_size(size: int, what: str) -> None:
    if size > MAX_TEXT_CHARS:
        raise InvalidInput(f"{what} must be at most {MAX_TEXT_CHARS} characters, got {size}; split the message")


def _timestamp(value: object, name: str, index: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InvalidInput(
            f"parts[{index}].{name} must be a number of seconds from the start of the call, 0 or more, "
            f"got {_shown(value)}"
        )
    return float(value)


def parts(values: Sequence[Part]) -> tuple[list[Part], str]:
    """Checked parts and the content they make: their texts joined by single spaces."""
    if not 1 <= len(values) <= MAX_PARTS:
        raise InvalidInput(f"message must have 1 to {MAX_PARTS} parts, got {len(values)}")
    checked: list[Part] = []
    for index, part in enumerate(values):
        if not part.text.strip():
            raise InvalidInput(f"parts[{index}].text must not be empty")
        if "\x00" in part.text:
            raise InvalidInput(f"parts[{index}].text must not contain NUL characters (\\x00)")
        start = _timestamp(part.start_timestamp, "start_timestamp", index)
        end = _timestamp(part.end_timestamp, "end_timestamp", index)
        if start is not None and end is not None and end < start:
            raise InvalidInput(f"parts[{index}].end_timestamp ({end}) must not be before start_timestamp ({start})")
        checked.append(Part(text=part.text, start_timestamp=start, end_timestamp=end))
    _text_size(sum(len(part.text) for part in checked), "the parts' texts together")
    joined = " ".join(part.text for part in checked)
    _text_size(len(joined), "content")
    return checked, joined


def _depth(value: object) -> int:
    """How deeply a JSON value nests, without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_METADATA_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def metadata(value: object) -> tuple[dict[str, Any], str | None]:
    """Checked metadata, as a JSON object, and its provider_message_id."""
    if value is None:
        return {}, None
    if not isinstance(value, dict):
        raise InvalidInput(f"metadata must be a JSON object, got {type(value).__name__}")
    if _depth(value) > MAX_METADATA_DEPTH:
        raise InvalidInput(f"metadata must nest at most {MAX_METADATA_DEPTH} levels deep")
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metadata must be plain JSON: {exc}") from exc
    size = len(encoded.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise InvalidInput(f"metadata must be at most {MAX_METADATA_BYTES} bytes of JSON, got {size}")
    if "\x00" in encoded:
        raise InvalidInput("metadata must not contain NUL characters (\\x00)")
    provider_message_id = value.get("provider_message_id")
    if provider_message_id is not None and (
        not isinstance(provider_message_id, str) or not 1 <= len(provider_message_id) <= MAX_ID_CHARS
    ):
        raise InvalidInput(
            f"metadata.provider_message_id must be a string of 1 to {MAX_ID_CHARS} characters, "
            f"got {_shown(provider_message_id)}"
        )
    attachments = value.get("attachments")
    if attachments is not None and not isinstance(attachments, list):
        raise InvalidInput(f"metadata.attachments must be a list, got {type(attachments).__name__}")
    return value, provider_message_id


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=1)


def created_at(value: datetime | None, now: datetime, name: str = "created_at") -> datetime:
    """A message's time: timezone-aware, from 1970 on, at most a day ahead of the server's clock."""
    if value is None:
        return now
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(
            f"{name} must carry a timezone, like '2026-11-21T09:30:00Z' or '2026-11-21T10:30:00+01:00', "
            f"got {value.isoformat()}"
        )
    given = value.isoformat()
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01 east of UTC, 9999-12-31 west of it: out of range either way
        value = EARLIEST - FUTURE_SLACK if value.year < 1970 else now + 2 * FUTURE_SLACK
    if value < EARLIEST:
        raise InvalidInput(f"{name} must be 1970-01-01T00:00:00Z or later, got {given}")
    if value > now + FUTURE_SLACK:
        raise InvalidInput(
            f"{name} must not be more than a day ahead of the server's clock ({format_time(now)}), got {given}"
        )
    return value


def max_chars(value: object) -> int | None:
    if value is None:
        return None
    return limit(value, "max_chars", 1, MAX_MAX_CHARS)


def roles(values: Sequence[object] | None) -> list[Role] | None:
    if values is None:
        return None
    if not values:
        raise InvalidInput("roles must name at least one role, or be left out to include every role")
    return sorted({role(value) for value in values})


def channels(values: Sequence[object] | None) -> list[str] | None:
    if values is None:
        return None
    if not values:
        raise InvalidInput("channels must name at least one channel, or be left out to include every channel")
    if len(values) > 64:
        raise InvalidInput(f"channels may name at most 64 channels, got {len(values)}")
    return sorted({channel(value, "channels[]") for value in values})


def utc_now() -> datetime:
    return datetime.now(UTC)


def explain(error: ValidationError | Sequence[Any]) -> str:
    """A pydantic failure (or its list of errors) in the contract's voice: each field, what is wrong, what was
    given."""
    problems = []
    for item in error.errors(include_url=False) if isinstance(error, ValidationError) else error:
        where = ".".join(str(part) for part in item["loc"]) or "the value"
        if item["type"] == "missing":
            problems.append(f"{where} is required")
        elif item["type"] == "extra_forbidden":
            problems.append(f"{where} is not a known field")
        else:
            message = item["msg"][0].lower() + item["msg"][1:]
            problems.append(f"{where}: {message}, got {_shown(item['input'])}")
    return "; ".join(problems)
