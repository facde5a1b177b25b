"""An append with `context_limit` answers with the context a `get_context` right after it gives, on both
engines: the message joins the contact's newest messages the store saw right before its write (the ones of
the turn before, storage/newest.py), or, when it saw none, the ones read while the message is written, when
nothing came between (the contact's version tells) and it is the newest; otherwise (another caller's or
another process's message, delete or merge in between, dated in the past, found already there, a retried
key) they are read again after the write."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chatdock.storage import AppendedMessage, Message, NewMessage, Part, Store, Unavailable, open_store
from chatdock.storage.errors import StoredUnanswered
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
        again = store._read_again

        async def counted(org: str, stored: Message, limit: int) -> list[Message]:
            self.count += 1
            return await again(org, stored, limit)

        monkeypatch.setattr(store, "_read_again", counted)


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
    # each was the newest: joined to the newest messages the store saw right before its write (the ones of the
    # append before it, which agent-2's message moved on for agent-1 too), or to what was read beside the write
    # when it had seen none (the first of the contact, each agent's first), but on PostgreSQL for those firsts
    # when that read came before the write (as a rule): it found no message, so no version of the contact to
    # compare. On SQLite a lone caller's write is done first.
    assert rereads.count <= 3 if db.startswith("postgresql") else rereads.count == 0


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


class Reads:
    """Counts the reads of a contact's newest messages."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        read = store.backend.latest_messages

        async def counted(*args: Any) -> Any:
            self.count += 1
            return await read(*args)

        monkeypatch.setattr(store.backend, "latest_messages", counted)


async def test_a_call_s_turns_join_the_newest_messages_of_the_turn_before_without_reading_them(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    said = [f"before the call {index}" for index in range(8)]
    for content in said:
        await store.append_message(ORG, turn(content))
    chat = await store.open_chat(ORG, CALLER, "voice")
    reads = Reads(store, monkeypatch)
    for index in range(6):
        said.append(f"turn {index}")
        appended = await store.append_message(ORG, turn(said[-1], chat_id=chat.id), context_limit=5)
        assert appended.context is not None and [m.content for m in appended.context.messages] == said[-5:]
        assert reads.count == 1  # the call's first turn read the newest messages beside its write; none since
        said.append(f"reply {index}")  # the bot's reply, stored with no context
        await store.append_message(ORG, turn(said[-1], role="assistant", chat_id=chat.id))
        said.append(f"caller {index}")
        posted = await store.post_as_contact(ORG, CALLER, chat.id, [Part(text=said[-1])], context_limit=3)
        assert posted.context is not None and [m.content for m in posted.context.messages] == said[-3:]
    assert reads.count == 1
    read = await store.get_context(ORG, CALLER, limit=3, reserved=2 * message_bytes(posted))
    assert posted.context == read


async def test_another_agent_s_message_moves_an_agent_s_newest_messages_on_without_a_read(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(3):
        await store.append_message(ORG, turn(f"for a {index}", agent_id="a"), context_limit=10)
    await store.append_message(ORG, turn("for anyone"), context_limit=10)  # every agent's newest, for no agent
    reads = Reads(store, monkeypatch)
    await store.append_message(ORG, turn("for b", agent_id="b"))
    for_a = await store.append_message(ORG, turn("for a again", agent_id="a"), context_limit=10)
    for_all = await store.append_message(ORG, turn("for no agent"), context_limit=10)
    assert reads.count == 0
    assert for_a.context is not None and for_all.context is not None
    assert [m.content for m in for_a.context.messages] == ["for a 0", "for a 1", "for a 2", "for a again"]
    every = ["for a 0", "for a 1", "for a 2", "for anyone", "for b", "for a again", "for no agent"]
    assert [m.content for m in for_all.context.messages] == every
    await same_as_a_read_after(store, for_all, 10)


@pytest.mark.parametrize("change", ["whatsapp", "delete", "merge", "forget"])
async def test_a_change_another_process_makes_between_two_turns_is_in_the_next_turn_s_context(
    store: Store, db: str, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await store.append_message(ORG, turn("turn 0"), context_limit=10)
    # another process on the same file, or another replica: what it forgets leaves this process's memory as is
    monkeypatch.setattr("chatdock.storage.store.let_go_of_all", lambda: None)
    async with open_store(db) as other:
        if change == "whatsapp":
            await other.append_message(ORG, turn("sent on WhatsApp", channel="whatsapp"))
        elif change == "delete":
            await other.delete_message(ORG, first.id)
        elif change == "merge":
            await other.append_message(ORG, turn("by mail", contact_id="caller@example.com", channel="email"))
            await other.link_contacts(ORG, CALLER, "caller@example.com")
        else:  # forgotten, and the same contact_id stores messages again: up to the count the first one stood at
            await other.forget_contact(ORG, CALLER)
            again = await other.append_message(ORG, turn("after it was forgotten"))
            assert first._contact_version is not None and again._contact_version is not None
            while 0 < first._contact_version - again._contact_version < 10:  # were versions to count the same
                again = await other.append_message(ORG, turn("after it was forgotten"))
    appended = await store.append_message(ORG, turn("turn 1"), context_limit=10)
    await same_as_a_read_after(store, appended, 10)


async def test_a_stored_message_whose_context_cannot_be_read_is_said_stored(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database failed the read of the context after the message was stored (PostgreSQL's connections
    killed under load): the answer said "nothing was written", and a caller sending the message again stored it
    twice (found by an operator's review: 10 of 33 posts so answered were stored). It says the message is stored,
    by its id; a retry under the same key stores nothing more and answers in full. On the read beside the write
    (a contact this process knows nothing of) and on the one after it, for an append and for a post."""
    read = store.backend.latest_messages

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise Unavailable("cannot reach the database: connection reset by peer")

    chat = await store.open_chat(ORG, CALLER, "voice")
    monkeypatch.setattr(store.backend, "latest_messages", unreachable)
    with pytest.raises(StoredUnanswered) as appended:
        await store.append_message(ORG, turn("first"), idempotency_key="turn-1", context_limit=5)
    with pytest.raises(StoredUnanswered) as posted:
        await store.post_as_contact(
            ORG, CALLER, chat.id, [Part(text="second")], idempotency_key="turn-2", context_limit=5
        )
    monkeypatch.setattr(store.backend, "latest_messages", read)
    stored = (await store.list_messages(ORG, CALLER)).messages
    assert [m.content for m in stored] == ["second", "first"]
    for error, message in ((posted.value, stored[0]), (appended.value, stored[1])):
        assert str(error) == (
            f"the message was stored (id {message.id}), but the context after it could not be read for the answer: "
            "cannot reach the database: connection reset by peer; do not send it again (get_context, or GET "
            "/chats/context, reads the context); a retry with the same Idempotency-Key header or "
            "metadata.provider_message_id stores nothing twice and answers in full"
        )
    again = await store.append_message(ORG, turn("first"), idempotency_key="turn-1", context_limit=5)
    assert again.id == stored[1].id and again.context is not None
    assert [m.content for m in again.context.messages] == ["first", "second"]
    assert len((await store.list_messages(ORG, CALLER)).messages) == 2
