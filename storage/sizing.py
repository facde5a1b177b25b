"""The bound on one result (4 MiB), and what a message costs in one.

A result is sent as UTF-8 JSON on every transport and era (server/mcp/sdk.py sees
to the one SDK path that escaped non-ASCII text), so a character takes at most
six bytes in it: four for an emoji, six for a control character's `\\u001f`.
A message's text travels in a result more than once: a tool result carries its
`content`, its parts' texts, its entry in `formatted` and that entry again in
the text a model reads; the context resource carries the first three as JSON
inside a JSON string, escaped twice (an escaped character then takes at most
seven bytes, three copies of it at most 21, while four copies are counted at
six bytes each). Metadata is counted at twice its JSON, the most that escaping
it once more can make of it.

`message_bytes` and `text_bytes` never count low, so a result whose estimate
fits is smaller than the bound, whatever the text, identifiers or timestamps
hold; `message_bound` and `text_bound` never count lower than they do and read
no text, for the common read that fits by far.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from .models import Message
from .validation import MAX_ID_CHARS, MAX_METADATA_BYTES

T = TypeVar("T")

MAX_RESULT_BYTES = 4 * 1024 * 1024
# the result's own keys, its protocol framing (JSON-RPC, SSE) and a page's cursor, counted once, and a
# context's contact_id and agent_id: an identifier's character takes at most four bytes (an emoji, or a `"`
# escaped twice in the context resource; identifiers hold no control characters)
ENVELOPE_BYTES = 4 * 1024 + 2 * 4 * MAX_ID_CHARS
# a message's keys and punctuation, its id, chat id, role and timestamp (about 300 bytes, their quotes
# escaped once more in the context resource); its contact_id, agent_id and channel are counted apart
MESSAGE_FIELDS_BYTES = 512
# a part's keys and punctuation and its two timestamps: a float takes at most 24 characters in JSON
PART_FIELDS_BYTES = 128

# what JSON writes as an escape sequence: up to six bytes (\u001f) for one byte of text
_ESCAPED = re.compile(r'[\x00-\x1f"\\\x7f]')
_METADATA_BOUND = 2 * MAX_METADATA_BYTES + 16


def text_bytes(text: str) -> int:
    """At least the bytes `text` takes as a JSON string (UTF-8, escapes included)."""
    return len(text.encode("utf-8")) + 5 * len(_ESCAPED.findall(text)) + 2


def text_bound(text: str) -> int:
    """`text_bytes` without reading the text: no character takes more than six bytes in UTF-8 JSON."""
    return 6 * len(text) + 2


def _metadata_bytes(message: Message) -> int:
    """At least the bytes `message.metadata` takes in a result: its JSON (numbers may be written a little longer
    than json writes them), escaped once more in the context resource; never more than `_METADATA_BOUND`."""
    if not message.metadata:
        return 0
    written = json.dumps(message.metadata, ensure_ascii=False, separators=(",", ":"))
    return 2 * len(written.encode("utf-8")) + 16


def message_bytes(message: Message) -> int:
    """At least the bytes one message takes in a result's structured content."""
    size = MESSAGE_FIELDS_BYTES + text_bytes(message.contact_id) + text_bytes(message.agent_id or "")
    size += text_bytes(message.channel) + text_bytes(message.content)
    size += sum(text_bytes(part.text) + PART_FIELDS_BYTES for part in message.parts)
    return size + _metadata_bytes(message)


def message_bound(message: Message) -> int:
    """`message_bytes` without reading the texts (metadata was checked to be at most 16 KiB of JSON): each of
    the four texts and each part's text as `text_bound` counts it, summed in one expression (it runs for every
    message of every read)."""
    parts = message.parts
    chars = len(message.contact_id) + len(message.agent_id or "") + len(message.channel) + len(message.content)
    chars += len(parts[0].text) if len(parts) == 1 else sum(len(part.text) for part in parts)
    size = MESSAGE_FIELDS_BYTES + 6 * chars + 2 * (4 + len(parts)) + PART_FIELDS_BYTES * len(parts)
    return size + (_METADATA_BOUND if message.metadata else 0)


def fitting(items: Sequence[T], cost: Callable[[T], int], bound: Callable[[T], int], reserved: int = 0) -> int:
    """How many of `items`, taken in order, fit in one result beside its envelope and `reserved` bytes the
    result holds besides them, each costing `cost(item)`; `bound(item)` is a cheap upper bound of that cost,
    which most reads never need to go past."""
    if ENVELOPE_BYTES + reserved + sum(bound(item) for item in items) <= MAX_RESULT_BYTES:
        return len(items)
    total = ENVELOPE_BYTES + reserved
    for count, item in enumerate(items):
        total += cost(item)
        if total > MAX_RESULT_BYTES:
            return count
    return len(items)
