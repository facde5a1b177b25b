"""What a tool result carries: the whole typed result as `structuredContent`, and as text only what a model
needs (docs/reference.md, "What a tool result carries").

Most clients hand a result's text to the model as the tool message, so the text is kept small:
`get_context`'s is the transcript itself, `list_messages`'s one line per message, every other tool's the
result as compact JSON (a write that asked for the context: its message as JSON, then the transcript).
Applications read `structuredContent`, which is built once from the same model; `get_context` carries it only
when asked (`include_messages`), see `context_result`.
"""

from __future__ import annotations

from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel

from chatdock.storage import Context, MessagePage, StoredMessage
from chatdock.storage.models import Part, SearchPage
from chatdock.storage.transcript import format_line, search_line
from chatdock.storage.validation import e164_of

NO_MESSAGES = "(no messages yet)"
# a model that searched a sentence ("Where's my refund?") read "(no matches)" as there being none
NO_MATCHES = (
    "(no matches: a message is found when it holds every word of the query; try fewer words, or a word's start: "
    "refund*)"
)
NOTHING_FITS = "(the contact has messages, but not even the newest fits in max_chars: ask with a larger max_chars)"
LEFT_OUT = "(older messages were left out to fit; list_messages pages back through them)"


def transcript_text(context: Context, filters: str = "") -> str:
    """The context's transcript as a model reads it, which cannot see `truncated`: a first line says that
    older messages were left out, when they were; said so when there is none yet, when there are messages but
    `max_chars` (or the size bound) left out every one of them, and when the `filters` asked for (`agent_id
    bot-1, channels voice`) matched none (a model read "no messages yet" as a new contact)."""
    if context.formatted:
        return f"{LEFT_OUT}\n{context.formatted}" if context.truncated else context.formatted
    if context.truncated:
        return NOTHING_FITS
    if filters:
        return f"(no messages match {filters}; without them, the contact may have others)"
    # named by a phone number as a customer writes it: how it is most likely stored (a model took "(no messages
    # yet)" for a new customer: an agent developer's review)
    stored = e164_of(context.contact_id)
    if stored is None:
        return NO_MESSAGES
    return (
        f"(no messages yet for {context.contact_id}: identifiers match exactly, and a phone number is most often "
        f"stored in E.164, as {stored})"
    )


def _result(model: BaseModel, text: str) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=model.model_dump(mode="json")
    )


def as_json(model: BaseModel) -> CallToolResult:
    """The result, as compact JSON for the model (non-ASCII as itself) and typed for the application."""
    return _result(model, model.model_dump_json())


def stored_result(stored: StoredMessage) -> CallToolResult:
    """A written message as compact JSON; when the write asked for the context, the model reads the message
    without it, then the transcript (the context's messages would be the result's bulk, twice). A message whose
    one part is its content is read without its parts (the model read a 30,000-character message twice: an agent
    developer's review); the application's structured content has them."""
    left_out = {"context"}
    if len(stored.parts) == 1 and stored.parts[0] == Part(text=stored.content):
        left_out.add("parts")
    message = stored.model_dump_json(exclude=left_out)
    return _result(stored, message if stored.context is None else message + "\n" + transcript_text(stored.context))


def context_result(context: Context, include_messages: bool, filters: str = "") -> CallToolResult:
    """The transcript, and nothing else unless the caller asks for the messages: clients differ in what they
    hand their model (the text, the structured content, or the whole result), and only a result that carries
    the transcript once is the transcript's size in all of them. With `include_messages`, the whole context as
    structured content for the application."""
    text = transcript_text(context, filters)
    if include_messages:
        return _result(context, text)
    return CallToolResult(content=[TextContent(type="text", text=text)])


def page_result(page: MessagePage) -> CallToolResult:
    """One line per message (newest first) and the cursor to the next page, when there is one."""
    lines = [format_line(message) for message in page.messages] or ["(no messages)"]
    if page.next_cursor is not None:
        lines.append(f"next_cursor: {page.next_cursor}")
    return _result(page, "\n".join(lines))


def search_result(page: SearchPage) -> CallToolResult:
    """One line per hit, best first, whose it is and its snippet (matched words in [ ]) for the content; the
    cursor line."""
    lines = [search_line(hit) for hit in page.hits] or [NO_MATCHES]
    if page.next_cursor is not None:
        lines.append(f"next_cursor: {page.next_cursor}")
    return _result(page, "\n".join(lines))
