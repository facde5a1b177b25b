"""Concurrent writes to one contact from two replicas (two stores on one database): forget, link, unlink and
merges racing each other. Each call gets what one of the two orders in sequence would give (a result, or
the NotFound that order gives), never another error, and the data stays sound. SQLite's one writer runs
them one after the other; PostgreSQL runs them at once, where row locks must order them.

A race of two calls (`race`) is run in two ways, round after round: the second call started a little later
each round, and (PostgreSQL) the second started while the first is held just before it changes the
contact's row, the interleaving where a call that looked at the contact without a lock found it gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import asyncpg
import pytest

from chatdock.storage import ChatdockError, InvalidInput, NotFound, Store, open_store
from chatdock.storage.models import ContactInfo, ForgetResult, LinkResult, Part
from tests.storage.test_storage import msg, stored
from tests.transports import Rest, create_key, http_server

T = TypeVar("T")
U = TypeVar("U")

ORG = "acme"
ROUNDS = 20  # each round races the calls on fresh contacts
STEP = 0.0003  # seconds: how much later the second call of a race starts in each next staggered round


@pytest.fixture
async def replica(db: str, store: Store) -> AsyncIterator[Store]:
    """A second store on the database of `store`, as another replica behind a load balancer."""
    async with open_store(db) as opened:
        yield opened


async def outcome(call: Awaitable[T]) -> T | ChatdockError:
    """What a call answers: its result or its ChatdockError; any other exception fails the test."""
    try:
        return await call
    except ChatdockError as exc:
        return exc


async def later(n: int, call: Awaitable[T]) -> T:
    """`call`, started `n` steps late (the loop kept turning: a sleep would wait a whole millisecond at least):
    over the rounds it meets each statement of the other call in turn, where starting both at once would meet
    only the first few."""
    deadline = time.monotonic() + n * STEP
    while time.monotonic() < deadline:
        await asyncio.sleep(0)
    return await call


async def waiting(conn: Any, sessions: int, call: asyncio.Future[Any]) -> None:
    """Until `sessions` sessions of the database wait for a lock, or `call` has ended (at most 5 s)."""
    deadline = time.monotonic() + 5
    locked = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    while not call.done() and time.monotonic() < deadline and await conn.fetchval(locked) < sessions:
        await asyncio.sleep(0.001)


async def race(
    db: str, n: int, first: Awaitable[T], second: Awaitable[U]
) -> tuple[T | ChatdockError, U | ChatdockError]:
    """What two calls answer, run at once as round `n` of a race runs them. Even rounds start `second` a
    little later each time (`later`). Odd rounds on PostgreSQL start `second` once `first` waits to change a
    contact's row (a forget deletes it last, a merge updates the kept one last), which it cannot while a session
    of the test holds the contacts table in SHARE mode; the table is let go once `second` waits too (or ends)."""
    if n % 2 == 0 or not db.startswith("postgres"):
        return await asyncio.gather(outcome(first), outcome(later(n // 2, second)))
    conn = await asyncpg.connect(db)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE contacts IN SHARE MODE")
            started = asyncio.ensure_future(outcome(first))
            await waiting(conn, 1, started)
            then = asyncio.ensure_future(outcome(second))
            await waiting(conn, 2, then)
    finally:
        await conn.close()
    return await started, await then


async def history(store: Store, contact_id: str, count: int) -> None:
    for n in range(count):
        await store.append_message(ORG, msg(contact_id, f"{contact_id} says {n}"))


async def unknown(store: Store, *identifiers: str) -> bool:
    """Whether no identifier of `identifiers` names a contact."""
    for identifier in identifiers:
        if not isinstance(await outcome(store.get_contact(ORG, identifier)), NotFound):
            return False
    return True


async def assert_sound(store: Store, messages: int) -> None:
    """Every contact keeps its own identifier, every row has its contact, and `messages` messages are left."""
    assert (
        await stored(
            store,
            "SELECT c.external_id FROM contacts c WHERE NOT EXISTS (SELECT 1 FROM identifiers i "
            "WHERE i.org_id = c.org_id AND i.identifier = c.external_id AND i.contact_pk = c.id)",
        )
        == []
    )
    for table in ("identifiers", "messages", "chats", "channels"):
        orphans = f"SELECT count(*) FROM {table} WHERE contact_pk NOT IN (SELECT id FROM contacts)"
        assert await stored(store, orphans) == [(0,)], table
    assert await stored(store, "SELECT count(*) FROM messages") == [(messages,)]


async def test_forgetting_one_contact_at_once_forgets_it_once(store: Store, replica: Store) -> None:
    # a double click, a retry on another replica, and a forget by an alias: as in sequence, the first forgets
    # the contact and the others find nothing left, as a forget of an unknown contact does
    for n in range(ROUNDS):
        a, x = f"{n}-a", f"{n}-x"
        await history(store, a, 2)
        await store.link_contacts(ORG, a, x)
        answers = await asyncio.gather(
            outcome(store.forget_contact(ORG, a)),
            outcome(replica.forget_contact(ORG, a)),
            outcome(replica.forget_contact(ORG, x)),
        )
        first = ForgetResult(contact_id=a, deleted_messages=2, deleted_chats=0, deleted_identifiers=2)
        nothing = [ForgetResult(contact_id=asked, deleted_messages=0, deleted_chats=0) for asked in (a, a, x)]
        assert answers.count(first) == 1, answers
        assert all(answer in (first, none) for answer, none in zip(answers, nothing, strict=True)), answers
        assert await unknown(store, a, x)
    await assert_sound(store, 0)


async def test_a_forget_racing_a_merge_of_the_contact(db: str, store: Store, replica: Store) -> None:
    # forget(a) while a is merged into b: either a is forgotten first and then becomes b's (new) alias, or the
    # merge comes first and forgetting a forgets b, a's history with it
    for n in range(ROUNDS):
        a, b = f"{n}-a", f"{n}-b"
        await history(store, a, 2)
        await history(store, b, 1)
        linked, forgot = await race(db, n, replica.link_contacts(ORG, b, a), store.forget_contact(ORG, a))
        assert isinstance(forgot, ForgetResult) and isinstance(linked, LinkResult), (forgot, linked)
        if forgot.contact_id == a:  # the forget first
            assert (forgot.deleted_messages, forgot.deleted_identifiers) == (2, 1)
            assert (linked.contact_id, linked.aliases, linked.merged_messages, linked.message_count) == (b, [a], 0, 1)
            assert (await store.get_contact(ORG, a)).model_dump() == (await store.get_contact(ORG, b)).model_dump()
            await store.forget_contact(ORG, b)
        else:  # the merge first
            assert (linked.contact_id, linked.aliases, linked.merged_messages, linked.message_count) == (b, [a], 2, 3)
            assert forgot == ForgetResult(contact_id=b, deleted_messages=3, deleted_chats=0, deleted_identifiers=2)
        assert await unknown(store, a, b)
    await assert_sound(store, 0)


async def test_an_unlink_racing_a_merge_of_its_contact(db: str, store: Store, replica: Store) -> None:
    # unlink x (an alias of a) while a is merged into b: x leaves a before the merge, or leaves b after it
    for n in range(ROUNDS):
        a, b, x = f"{n}-a", f"{n}-b", f"{n}-x"
        await history(store, a, 2)
        await history(store, b, 1)
        await store.link_contacts(ORG, a, x)
        linked, unlinked = await race(db, n, replica.link_contacts(ORG, b, a), store.unlink_contact(ORG, x, a))
        assert isinstance(unlinked, ContactInfo) and isinstance(linked, LinkResult), (unlinked, linked)
        assert (linked.contact_id, linked.merged_messages, linked.message_count) == (b, 2, 3)
        if unlinked.contact_id == a:  # the unlink first
            assert (unlinked.aliases, unlinked.message_count, linked.aliases) == ([], 2, [a])
        else:  # the merge first
            assert (unlinked.contact_id, unlinked.aliases, unlinked.message_count) == (b, [a], 3)
            assert linked.aliases == [a, x]
        kept = await store.get_contact(ORG, a)
        assert (kept.contact_id, kept.aliases, kept.message_count) == (b, [a], 3)
        assert await unknown(store, x)
    await assert_sound(store, 3 * ROUNDS)


async def test_merges_of_two_contacts_in_both_directions_at_once(
    db: str, store: Store, replica: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # link(a, b) and link(b, a) at once: one merges the other contact in, the second finds them one already;
    # both lock the two contacts in one order, so neither waits for a deadlock to be found (a second, each)
    for n in range(ROUNDS):
        a, b = f"{n}-a", f"{n}-b"
        await history(store, a, 2)
        await history(store, b, 1)
        with caplog.at_level(logging.DEBUG, logger="chatdock"):
            answers = await race(db, n, store.link_contacts(ORG, a, b), replica.link_contacts(ORG, b, a))
        assert "DeadlockDetectedError" not in caplog.text
        assert all(isinstance(answer, LinkResult) for answer in answers), answers
        first, second = answers
        assert isinstance(first, LinkResult) and isinstance(second, LinkResult)
        assert first.contact_id == second.contact_id, answers
        merged = {first.contact_id: 0, a: 1, b: 2}[first.contact_id]  # a keeps b's one message, b keeps a's two
        assert sorted([first.merged_messages, second.merged_messages]) == [0, merged], answers
        assert first.message_count == second.message_count == 3
        assert first.aliases == second.aliases == [b if first.contact_id == a else a]
        assert (await store.get_contact(ORG, a)).model_dump() == (await store.get_contact(ORG, b)).model_dump()
    await assert_sound(store, 3 * ROUNDS)


async def test_an_unlink_racing_a_forget_of_its_contact(db: str, store: Store, replica: Store) -> None:
    # unlink x (an alias of a) while a is forgotten: x leaves first, or the forget leaves no x to unlink
    for n in range(ROUNDS):
        a, x = f"{n}-a", f"{n}-x"
        await history(store, a, 2)
        await store.link_contacts(ORG, a, x)
        forgot, unlinked = await race(db, n, replica.forget_contact(ORG, a), store.unlink_contact(ORG, x))
        assert isinstance(forgot, ForgetResult), forgot
        assert (forgot.contact_id, forgot.deleted_messages) == (a, 2)
        if isinstance(unlinked, ContactInfo):  # the unlink first
            assert (unlinked.contact_id, unlinked.aliases, forgot.deleted_identifiers) == (a, [], 1)
        else:  # the forget first
            assert isinstance(unlinked, NotFound), unlinked
            assert forgot.deleted_identifiers == 2
        assert await unknown(store, a, x)
    await assert_sound(store, 0)


async def test_links_unlinks_and_forgets_of_one_contact_at_once_leave_it_sound(store: Store, replica: Store) -> None:
    # all at once on one person: every call answers as in some order (a result, or an id that order left
    # unknown), and what is left holds together
    for n in range(ROUNDS):
        a, b, x, y = f"{n}-a", f"{n}-b", f"{n}-x", f"{n}-y"
        await history(store, a, 2)
        await history(store, b, 1)
        await store.link_contacts(ORG, a, x)
        answers = await asyncio.gather(
            outcome(store.link_contacts(ORG, b, a)),
            outcome(replica.unlink_contact(ORG, x)),
            outcome(store.link_contacts(ORG, y, x)),
            outcome(replica.forget_contact(ORG, b)),
            outcome(store.link_contacts(ORG, a, y)),
            outcome(replica.unlink_contact(ORG, y)),
        )
        links, unlinks = [answers[0], answers[2], answers[4]], [answers[1], answers[5]]
        assert all(isinstance(answer, LinkResult) for answer in links), answers
        assert isinstance(answers[3], ForgetResult), answers
        # an unlink finds its id unknown in some orders, or (y, once linked to x first) a contact's own id
        assert all(isinstance(answer, ContactInfo | NotFound | InvalidInput) for answer in unlinks), answers
        for identifier in (a, b, x, y):
            found = await outcome(store.get_contact(ORG, identifier))
            assert isinstance(found, ContactInfo | NotFound), found
        for identifier in (a, b, x, y):
            await store.forget_contact(ORG, identifier)
        assert await unknown(store, a, b, x, y)
    await assert_sound(store, 0)


@pytest.mark.process
async def test_forgets_of_one_contact_at_two_replicas_answer_200(postgres_url: str) -> None:
    # DELETE /contacts/X twice at once, once at each `chatdock serve --http` (a retry landing on the other
    # replica), and once more by an alias: each answers 200, one with what was forgotten
    key = create_key(postgres_url, ORG, "concurrent")
    with http_server(postgres_url) as one, http_server(postgres_url) as other:
        first, second = Rest(one, key), Rest(other, key)
        for n in range(ROUNDS // 2):
            a, x = f"{n}-a", f"{n}-x"
            first.ok("POST", "/chats", {"contact_id": a, "channel": "sms", "role": "user", "content": "hi"})
            first.ok("POST", f"/contacts/{a}/aliases", {"identifier": x})
            answers = await asyncio.gather(
                asyncio.to_thread(first, "DELETE", f"/contacts/{a}"),
                asyncio.to_thread(second, "DELETE", f"/contacts/{a}"),
                asyncio.to_thread(second, "DELETE", f"/contacts/{x}"),
            )
            assert [status for status, _ in answers] == [200, 200, 200], answers
            assert sorted(body["deleted_messages"] for _, body in answers) == [0, 0, 1], answers
            assert first("GET", f"/contacts/{a}")[0] == second("GET", f"/contacts/{x}")[0] == 404


async def test_a_post_into_a_chat_a_merge_moves_meanwhile_lands_in_it(
    store: Store, replica: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """post_as_contact names its contact, then reads the chat: a merge (another replica links the contact to
    another) committed between the two moves the chat to the kept contact, and the post lands in it, as
    identity.md says of writes during a merge (it was refused as 'chat not found', which a client does not
    retry: a lost voice turn; a race review, 20 of 180 posts on PostgreSQL)."""
    chat = await store.open_chat(ORG, "merged-away", "voice")
    await store.append_message(ORG, msg("kept", "the contact kept"))
    read_chat = store.backend.chat

    async def merge_first(org: str, chat_id: str) -> Any:
        monkeypatch.setattr(store.backend, "chat", read_chat)  # once
        await replica.link_contacts(ORG, "kept", "merged-away")
        return await read_chat(org, chat_id)

    monkeypatch.setattr(store.backend, "chat", merge_first)
    posted = await store.post_as_contact(ORG, "merged-away", chat.id, [Part(text="hello?")])
    assert (posted.contact_id, posted.chat_id) == ("kept", chat.id)
    assert [m.content for m in (await store.get_context(ORG, "kept")).messages] == ["the contact kept", "hello?"]
