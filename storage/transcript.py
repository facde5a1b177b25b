"""The formatted transcript: one `ROLE: content` entry per message, oldest first.

Every line break inside a message (any of the breaks `str.splitlines` knows,
not only `\\n`) continues on a new line indented by two spaces, so no text a
customer sends can start a line that reads as another role's (`SYSTEM: ...`).
"""

from __future__ import annotations

from collections.abc import Sequence

from .models import Message


def format_entry(message: Message) -> str:
    lines = message.content.splitlines() or [""]
    return f"{message.role.upper()}: " + "\n  ".join(lines)


def format_transcript(messages: Sequence[Message]) -> str:
    return "\n".join(format_entry(message) for message in messages)


def fit_transcript(messages: Sequence[Message], max_chars: int | None) -> tuple[list[Message], str, bool]:
    """Drop the oldest messages until the transcript fits in `max_chars`; say whether any were dropped."""
    entries = [format_entry(message) for message in messages]
    if max_chars is None:
        return list(messages), "\n".join(entries), False
    kept = 0
    size = 0
    for entry in reversed(entries):
        grown = size + len(entry) + (1 if kept else 0)
        if grown > max_chars:
            break
        size = grown
        kept += 1
    start = len(entries) - kept
    return list(messages[start:]), "\n".join(entries[start:]), start > 0
