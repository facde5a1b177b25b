"""An append with `context_limit` answers with the context a `get_context` right after it gives, on both
engines: the contact's newest messages are read while the message is written, and the message joins them
when nothing came between the read and the write (the contact's version tells) and it is the newest;
otherwise (another caller's message or delete between the two, dated in the past, found already there, a
retried key) they are read again after the write."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chatdock.storage import AppendedMessage, NewMessage, Store
from chatdock.storage.records import MessageRecord
from chatdock.storage.sizing import message_bytes

ORG = "acme"
CALLER = "+31612345678"
EMOJI = "😀" * 32_768  # the longest content there is, at four bytes a character


def turn(content: str, **fields: Any) -> NewMessage:
    return NewMessage.model_validate(
        {"contact_id": CALLER, "channel": "voice", "role": "user", "content": content, **fields}
    )


class Rereads:
    """Counts the appends whose context was read again after the write."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        again = store._with_context

        async def counted(org: str, stored: AppendedMessage, limit: int) -> AppendedMessage:
            self.count += 1
            return await again(org, stored, limit)

        monkeypatch.setattr(store, "_with_context", counted)


async def same_as_a_read_after(store: Store, appended: AppendedMessage, limit: int) -> None:
    read = await store.get_context(
        ORG, appended.contact_id, agent_id=appended.agent_id, limit=limit, reserved=2 * message_bytes(appended)
    )
    assert appended.context == read


async def test_each_append_answers_with_the_context_read_right_after_it(
    store: Store, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rereads = Rereads(store, monkeypatch)
    first = await store.append_message(ORG, turn("hello"), context_limit=5)  # a contact that did not exist
    assert first.context is not None and [m.content for m in first.context.messages] == ["hello"]
    await same_as_a_read_after(store, first, 5)
    for index in range(6):
        appended = await store.append_message(ORG, turn(f"turn {index}"), context_limit=3)
        assert appended.context is not None and appended.context.messages[-1].id == appended.id
        await same_as_a_read_after(store, appended, 3)
    await store.link_contacts(ORG, CALLER, "caller@example.com")  # named by an alias: the same contact's context
    by_alias = await store.append_message(ORG, turn("by mail", contact_id="caller@example.com"), context_limit=4)
    assert by_alias.contact_id == CALLER
    await same_as_a_read_after(store, by_alias, 4)
    for agent in ("agent-1", "agent-2", "agent-1"):  # an agent's context holds its own messages only
        appended = await store.append_message(ORG, turn(f"for {agent}", agent_id=agent), context_limit=10)
        await same_as_a_read_after(store, appended, 10)
    # each was the newest and nothing came between: joined to what was read beside its write, but for each
    # agent's first message when that read came before the write (on PostgreSQL, as a rule): it found no
    # message, so no version of the contact to compare. On SQLite a lone caller's write is done first.
    assert rereads.count <= (2 if db.startswith("postgresql") else 0)


async def test_what_the_read_beside_the_write_cannot_place_is_read_again_after_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    rereads = Rereads(store, monkeypatch)
    for index in range(4):
        await store.append_message(ORG, turn(f"turn {index}"))
    past = datetime.now(UTC) - timedelta(days=1)
    dated = await store.append_message(ORG, turn("said yesterday", created_at=past), context_limit=3)
    assert dated.context is not None and dated.id not in [m.id for m in dated.context.messages]
    await same_as_a_read_after(store, dated, 3)
    assert rereads.count == 1  # older than what was read beside its write (which may have come after it)
    later = past + timedelta(seconds=1)
    older = await store.append_message(ORG, turn("a while ago", created_at=later), context_limit=10)
    assert older.context is not None and older.id == older.context.messages[1].id  # in its place, by its date
    await same_as_a_read_after(store, older, 10)
    webhook = turn("from the webhook", metadata={"provider_message_id": "wamid.7"}, channel="whatsapp")
    await store.append_message(ORG, webhook)
    await store.append_message(ORG, turn("later"))
    before = rereads.count
    twin = await store.append_message(ORG, webhook, context_limit=1)  # found already there, older than "later"
    assert twin.deduplicated
    await same_as_a_read_after(store, twin, 1)
    keyed = await store.append_message(ORG, turn("keyed"), idempotency_key="k-1", context_limit=3)
    await store.append_message(ORG, turn("after the key"))
    retried = await store.append_message(ORG, turn("keyed"), idempotency_key="k-1", context_limit=1)
    assert retried.id == keyed.id
    await same_as_a_read_after(store, retried, 1)
    assert rereads.count == before + 2  # the twin and the retry


async def test_a_context_cut_at_the_result_bound_is_cut_as_a_read_after_the_write_cuts_it(store: Store) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for index in range(36):  # 36 x 128 KiB: past what one result may carry
        await store.append_message(ORG, turn(EMOJI, created_at=start + timedelta(seconds=index)))
    for size in (10, 32_768):
        appended = await store.append_message(ORG, turn("😀" * size), context_limit=200)
        assert appended.context is not None and appended.context.truncated
        await same_as_a_read_after(store, appended, 200)


async def test_concurrent_appends_each_find_their_own_message_in_their_context(store: Store) -> None:
    await store.append_message(ORG, turn("start"))
    answers = await asyncio.gather(
        *(store.append_message(ORG, turn(f"at once {index}"), context_limit=50) for index in range(24))
    )
    for appended in answers:
        assert appended.context is not None
        ids = [message.id for message in appended.context.messages]
        assert appended.id in ids and len(ids) == len(set(ids))
        times = [(message.created_at, message.id) for message in appended.context.messages]
        assert [t for t, _ in times] == sorted(t for t, _ in times)  # oldest first


class Between:
    """Makes `between(store)` happen after the read beside the write of a message with content `TURN` and
    before that write: a change of the contact by another caller, which that read cannot have seen."""

    TURN = "the voice turn"

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch, between: Callable[[], Awaitable[object]]) -> None:
        backend = store.backend
        read, insert = backend.latest_messages, backend.insert_message
        done = asyncio.Event()
        self.reads_before_the_write = 0

        async def read_then_change(*args: Any) -> Any:
            found = await read(*args)
            if not done.is_set():
                self.reads_before_the_write += 1
                await between()
                done.set()
            return found

        async def insert_after_it(org: str, record: MessageRecord) -> AppendedMessage:
            if record.message.content == self.TURN:
                await done.wait()
            return await insert(org, record)

        monkeypatch.setattr(backend, "latest_messages", read_then_change)
        monkeypatch.setattr(backend, "insert_message", insert_after_it)


async def test_a_message_another_caller_stores_between_the_read_and_the_write_is_in_the_context(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(3):
        await store.append_message(ORG, turn(f"turn {index}"))
    rereads = Rereads(store, monkeypatch)
    whatsapp = turn("sent on WhatsApp during the call", channel="whatsapp")
    between = Between(store, monkeypatch, lambda: store.append_message(ORG, whatsapp))
    appended = await store.append_message(ORG, turn(Between.TURN), context_limit=10)
    assert between.reads_before_the_write == 1 and rereads.count == 1  # the versions differ: read again after the write
    assert appended.context is not None
    contents = [message.content for message in appended.context.messages]
    assert contents[-2:] == [Between.TURN, whatsapp.content]  # stored after the turn's record was made
    await same_as_a_read_after(store, appended, 10)


async def test_a_message_deleted_between_the_read_and_the_write_is_not_in_the_context(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    doomed = await store.append_message(ORG, turn("deleted during the call"))
    await store.append_message(ORG, turn("kept"))
    rereads = Rereads(store, monkeypatch)
    Between(store, monkeypatch, lambda: store.delete_message(ORG, doomed.id))
    appended = await store.append_message(ORG, turn(Between.TURN), context_limit=10)
    assert rereads.count == 1
    assert appended.context is not None
    assert [message.content for message in appended.context.messages] == ["kept", Between.TURN]
    await same_as_a_read_after(store, appended, 10)


async def test_a_merge_between_the_read_and_the_write_brings_the_merged_contacts_messages(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append_message(ORG, turn("on the phone"))
    await store.append_message(ORG, turn("by mail", contact_id="caller@example.com", channel="email"))
    rereads = Rereads(store, monkeypatch)
    Between(store, monkeypatch, lambda: store.link_contacts(ORG, CALLER, "caller@example.com"))
    appended = await store.append_message(ORG, turn(Between.TURN), context_limit=10)
    assert rereads.count == 1
    assert appended.context is not None
    assert [message.content for message in appended.context.messages] == ["on the phone", "by mail", Between.TURN]
    await same_as_a_read_after(store, appended, 10)
