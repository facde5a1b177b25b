"""The formatted transcript: one `ROLE: content` entry per message, oldest first.

Every line break inside a message (any of the breaks `str.splitlines` knows,
not only `\\n`) continues on a new line indented by two spaces, so no text a
customer sends can start a line that reads as another role's (`SYSTEM: ...`).
A message list's line (`format_line`) starts with the message's id and keeps
the message on that one line, its line breaks turned into spaces.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from .memo import PerMessage
from .models import Message, SearchHit, format_timestamp
from .sizing import fitting, message_bound, message_bytes, text_bound, text_bytes

LINE_ENTRY_CHARS = 200


def indented(text: str) -> str:
    """`text` with each line break continuing on a line indented by two spaces: the one rule that keeps a
    message from starting a line of its own in any text built for a model."""
    return "\n  ".join(text.splitlines() or [""])


def format_entry(message: Message) -> str:
    return f"{message.role.upper()}: " + indented(message.content)


def format_transcript(messages: Sequence[Message]) -> str:
    return "\n".join(format_entry(message) for message in messages)


def format_line(message: Message, width: int = LINE_ENTRY_CHARS, text: str | None = None, contact: bool = False) -> str:
    """One line of a message list: id, time, channel (with `contact`, the contact's id after it) and the `ROLE:
    content` entry on a single line (its line breaks as spaces), shortened to `width` characters; `text` stands
    for the content when given (a snippet)."""
    entry = f"{message.role.upper()}: " + " ".join((message.content if text is None else text).splitlines())
    if len(entry) > width:
        entry = entry[: width - 1] + "\u2026"
    # quoted: an id may hold spaces and colons ("w-1 ASSISTANT: ..."), which bare would read as a role's line
    who = f" {json.dumps(message.contact_id, ensure_ascii=False)}" if contact else ""
    return f"{message.id} {format_timestamp(message.created_at)} {message.channel}{who} {entry}"


def search_line(hit: SearchHit) -> str:
    """A search hit's line: its snippet for the content, and whose message it is (a search of the whole
    organization finds many contacts' messages, and a model that reads only the text needs to know whose)."""
    return format_line(hit, text=hit.snippet, contact=True)


def _measured(message: Message) -> tuple[str, int]:
    """The message's transcript entry and the bound of what it adds to a result (`message_bound` and the entry
    twice)."""
    entry = format_entry(message)
    return entry, message_bound(message) + 2 * text_bound(entry)


_entries = PerMessage(_measured, lambda message, measured: 2 * len(measured[0]))  # the entry and its message


def fit_transcript(
    messages: Sequence[Message], max_chars: int | None, reserved: int = 0, text_only: bool = False
) -> tuple[list[Message], str, bool]:
    """Drop the oldest messages until the transcript fits in `max_chars` and the whole result (the messages,
    the transcript, and the transcript again as the text a model reads, beside `reserved` bytes of whatever
    else the result holds; with `text_only`, a result that carries the text alone) in one result; say whether
    any were dropped."""
    measured = [_entries.of(message) for message in messages]
    entries = [entry for entry, _ in measured]
    newest_first = list(zip(reversed(messages), reversed(measured), strict=True))
    cost, bound = (
        # the messages and the structured transcript are not sent: four times as many may fit
        (lambda item: text_bytes(item[1][0]), lambda item: text_bound(item[1][0]))
        if text_only
        else (lambda item: message_bytes(item[0]) + 2 * text_bytes(item[1][0]), lambda item: item[1][1])
    )
    kept = fitting(newest_first, cost, bound, reserved)
    if max_chars is not None:
        size = -1  # no separator before the first entry
        for count, (_, (entry, _)) in enumerate(newest_first[:kept]):
            size += len(entry) + 1
            if size > max_chars:
                kept = count
                break
    start = len(entries) - kept
    return list(messages[start:]), "\n".join(entries[start:]), start > 0


def fit_hits(hits: Sequence[SearchHit]) -> int:
    """How many of `hits`, best first, fit in one result: each hit's message and snippet, and its line (with the
    snippet for the content) in the text a model reads. A page cut short goes on at the first hit left out."""
    return fitting(
        hits,
        lambda hit: message_bytes(hit) + text_bytes(hit.snippet) + text_bytes(search_line(hit)),
        lambda hit: message_bound(hit) + text_bound(hit.snippet) + text_bound(search_line(hit)),
    )
