"""An append with `context_limit` answers with the context a `get_context` right after it gives, on both
engines: the contact's newest messages are read while the message is written, and the message joins them
when it is the newest; otherwise (dated in the past, found already there, a retried key) they are read again
after the write."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chatdock.storage import AppendedMessage, NewMessage, Store
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
    store: Store, monkeypatch: pytest.MonkeyPatch
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
    assert rereads.count == 0  # each was the newest: joined to what was read beside its write


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
