"""An answer's body, its messages written from memory (server/http/bodies.py), is byte for byte what pydantic's
serializer writes, whatever the messages hold, read once or again, changed or not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from chatdock.server.http import bodies
from chatdock.server.http.bodies import json_body
from chatdock.storage import NewMessage, open_store
from chatdock.storage.models import (
    AppendedMessage,
    Chat,
    ChatWithMessages,
    Context,
    Message,
    MessagePage,
    Part,
    SearchHit,
    SearchPage,
)

# strings like a hole (the real one is this process's own random token: a fixed one would be found here)
HOLE_LIKE = st.sampled_from(["chatdock-hole-", "chatdock-hole-00-0", '["chatdock-hole-0"]', "\x00", "\u2028"])
TEXT = st.one_of(st.text(max_size=40), HOLE_LIKE)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
# the keys an answer's own fields have, as metadata keys too
METADATA = st.dictionaries(
    st.one_of(TEXT, st.sampled_from(["messages", "formatted", "context"])), JSON_VALUE, max_size=4
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    content = draw(st.text(min_size=1, max_size=60))
    return Message(
        id=draw(st.uuids()).hex,
        contact_id=draw(TEXT),
        agent_id=draw(st.none() | TEXT),
        chat_id=draw(st.none() | st.uuids().map(str)),
        channel=draw(st.sampled_from(["sms", "whatsapp", "voice"])),
        role=draw(st.sampled_from(["user", "assistant", "tool"])),
        content=content,
        parts=[Part(text=content, start_timestamp=draw(st.none() | st.floats(0, 1e4)))],
        metadata=draw(METADATA),
        created_at=datetime(2026, 12, 5, tzinfo=UTC) + timedelta(microseconds=draw(st.integers(0, 10**12))),
    )


class TwoLists(BaseModel):
    """No answer has two lists of messages yet: the holes after the first, and one inside a field's model."""

    first: list[Message]
    context: Context
    hidden: list[Message] = Field(exclude=True)  # written by nobody: no hole to fill
    last: list[Message]


class Unwritten(BaseModel):
    """A list of messages its field writes otherwise (here: not at all) leaves no hole: pydantic writes it all."""

    messages: list[Message] = Field(exclude=True)
    note: str


def answers(listed: list[Message], one: Message, deduplicated: bool) -> list[BaseModel]:
    context = Context(contact_id=one.contact_id, agent_id=None, messages=listed, formatted="USER: hi", truncated=False)
    chat = Chat(
        id="0192d3a4-0000-7000-8000-000000000001",
        contact_id=one.contact_id,
        agent_id=None,
        status="RUNNING",
        channels=[],
        created_at=one.created_at,
        updated_at=one.created_at,
    )
    hits = [SearchHit(**dict(m), snippet="[hi]") for m in listed]
    return [
        context,
        MessagePage(messages=listed, next_cursor=None),
        AppendedMessage(**dict(one), context=context, deduplicated=deduplicated),
        AppendedMessage(**dict(one), deduplicated=deduplicated),
        ChatWithMessages(**dict(chat), messages=listed),
        SearchPage(hits=hits, next_cursor="c"),
        TwoLists(first=listed[::-1], context=context, hidden=listed, last=[one, *listed]),
        Unwritten(messages=listed, note="n"),
    ]


@settings(max_examples=150, deadline=None)
@given(listed=st.lists(messages(), max_size=6), one=messages(), deduplicated=st.booleans())
def test_a_body_is_what_pydantic_writes(listed: list[Message], one: Message, deduplicated: bool) -> None:
    for answer in answers(listed, one, deduplicated):
        expected = answer.model_dump_json(by_alias=True).encode()
        assert json_body(answer) == expected
        assert json_body(answer) == expected  # again, its messages now written from memory


def test_a_changed_copy_of_a_message_is_written_as_it_is_now() -> None:
    first = Message(
        id="m1",
        contact_id="c",
        agent_id=None,
        chat_id=None,
        channel="sms",
        role="user",
        content="hello",
        parts=[Part(text="hello")],
        metadata={},
        created_at=datetime(2026, 12, 5, tzinfo=UTC),
    )
    changed = first.model_copy(update={"content": "goodbye", "parts": [Part(text="goodbye")]})
    page: dict[str, Any] = {"next_cursor": None}
    assert b"hello" in json_body(MessagePage(messages=[first], **page))
    written = json_body(MessagePage(messages=[first, changed], **page))
    assert written == MessagePage(messages=[first, changed], **page).model_dump_json().encode()
    assert bodies._written.holds(first) and bodies._written.holds(changed)


async def test_forgetting_a_contact_lets_go_of_every_message_written(tmp_path: Path) -> None:
    async with open_store(str(tmp_path / "forget.db")) as store:
        message = NewMessage(contact_id="+31600000001", channel="sms", role="user", content="kept")
        await store.append_message("acme", message)
        await store.append_message("acme", message.model_copy(update={"contact_id": "+31600000002"}))
        context = await store.get_context("acme", "+31600000001")
        assert json_body(context) == context.model_dump_json(by_alias=True).encode()
        assert bodies._written.holds(context.messages[0])
        await store.forget_contact("acme", "+31600000002")
        assert not bodies._written.holds(context.messages[0])  # its text leaves the process's memory
