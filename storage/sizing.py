"""The bound on one result (4 MiB), and what a message costs in one.

A result carries a message's text more than once (its `content`, its parts'
texts, its entry in `formatted`, and the text content a model reads), each
JSON-escaped. `message_bytes` and `text_bytes` never count low: a result
whose estimate fits is smaller than the bound, whatever the text holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from .models import Message
from .validation import MAX_METADATA_BYTES

T = TypeVar("T")

MAX_RESULT_BYTES = 4 * 1024 * 1024
ENVELOPE_BYTES = 4 * 1024  # the result's own keys, ids and protocol framing, counted once
MESSAGE_FIELDS_BYTES = 512  # a message's keys, ids, timestamps, channel and role

# what JSON writes as an escape sequence: up to six bytes (\u001f) for one byte of text
_ESCAPED = re.compile(r'[\x00-\x1f"\\\x7f]')
_METADATA_BOUND = MAX_METADATA_BYTES * 5 // 4 + 16


def text_bytes(text: str) -> int:
    """At least the bytes `text` takes as a JSON string (UTF-8, escapes included)."""
    return len(text.encode("utf-8")) + 5 * len(_ESCAPED.findall(text)) + 2


def message_bytes(message: Message) -> int:
    """At least the bytes one message takes in a result's structured content."""
    size = MESSAGE_FIELDS_BYTES + text_bytes(message.content)
    size += sum(text_bytes(part.text) + 64 for part in message.parts)
    if message.metadata:  # at most 16 KiB of JSON; numbers may be written a little longer than json writes them
        written = json.dumps(message.metadata, ensure_ascii=False, separators=(",", ":"))
        size += len(written.encode("utf-8")) * 5 // 4 + 16  # never more than _METADATA_BOUND
    return size


def text_bound(text: str) -> int:
    """`text_bytes` without reading the text: no character takes more than six bytes in JSON."""
    return 6 * len(text) + 2


def message_bound(message: Message) -> int:
    """`message_bytes` without reading the texts (metadata was checked to be at most 16 KiB of JSON)."""
    size = (
        MESSAGE_FIELDS_BYTES + text_bound(message.content) + sum(text_bound(part.text) + 64 for part in message.parts)
    )
    return size + (_METADATA_BOUND if message.metadata else 0)


def fitting(items: Sequence[T], cost: Callable[[T], int], bound: Callable[[T], int]) -> int:
    """How many of `items`, taken in order, fit in one result beside its envelope, each costing `cost(item)`;
    `bound(item)` is a cheap upper bound of that cost, which most reads never need to go past."""
    if ENVELOPE_BYTES + sum(bound(item) for item in items) <= MAX_RESULT_BYTES:
        return len(items)
    total = ENVELOPE_BYTES
    for count, item in enumerate(items):
        total += cost(item)
        if total > MAX_RESULT_BYTES:
            return count
    return len(items)
