"""SQLite's search index catches up in batches (storage/sqlite/indexing.py): an append notes its message, a
batch of them is indexed in the background, and a search first indexes what any process left noted; a noted
message deleted or moved to another contact leaves the index as it should be."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from chatdock.storage import NewMessage, Store, open_store
from chatdock.storage.sqlite import schema
from chatdock.storage.sqlite.indexing import SEARCH_BATCH, SEARCH_WAIT

ORG = "acme"


def said(contact: str, content: str) -> NewMessage:
    return NewMessage(contact_id=contact, channel="sms", role="user", content=content)


def noted(path: Path) -> int:
    """How many messages wait to be indexed."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM search_pending").fetchone()[0])


def assert_index_matches_messages(path: Path) -> None:
    """FTS5's own check of the index against the messages it indexes: every indexed message is there with its
    text and contact, none more; `noted(path)` must be 0 first, as the noted ones are not in it yet."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)")


async def hits(store: Store, query: str, contact: str | None = None) -> list[str]:
    page = await store.search_messages(ORG, query, contact_id=contact, limit=200)
    return sorted(hit.content for hit in page.hits)


async def test_every_batch_of_appends_is_indexed_by_the_append_after_it(tmp_path: Path) -> None:
    path = tmp_path / "batch.db"
    async with open_store(str(path)) as store:
        for index in range(SEARCH_BATCH):
            await store.append_message(ORG, said("+31600000001", f"parcel {index}"))
        assert noted(path) == SEARCH_BATCH
        await store.append_message(ORG, said("+31600000001", "the batch is full"))
        assert noted(path) == 0  # indexed in that append's own transaction, itself included
        assert_index_matches_messages(path)
        assert len(await hits(store, "parcel")) == SEARCH_BATCH


async def test_an_import_is_indexed_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "import.db"
    async with open_store(str(path)) as store:
        await store.import_messages(ORG, [said(f"+3160000{index:04d}", f"imported {index}") for index in range(300)])
        deadline = time.monotonic() + 10
        while noted(path):  # by writes of their own, which no caller waits for
            assert time.monotonic() < deadline, f"{noted(path)} messages still wait to be indexed"
            await asyncio.sleep(0.01)
        assert_index_matches_messages(path)
        assert len(await hits(store, "imported")) == 200  # a page holds at most 200


async def test_a_search_finds_what_any_process_appended_just_before(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with open_store(str(path)) as searcher:  # another process's store on the same file, as replicas share it
        async with open_store(str(path)) as writer:
            await writer.append_message(ORG, said("+31600000001", "where is my refund"))
            await writer.append_message(ORG, said("+31600000002", "refund received"))
            assert noted(path) == 2
        assert await hits(searcher, "refund") == ["refund received", "where is my refund"]
        assert await hits(searcher, "refund", "+31600000002") == ["refund received"]
        assert noted(path) == 0
        assert_index_matches_messages(path)


async def test_messages_deleted_or_merged_before_they_were_indexed_leave_the_index_right(tmp_path: Path) -> None:
    path = tmp_path / "changed.db"
    async with open_store(str(path)) as store:
        indexed = await store.append_message(ORG, said("+31600000001", "indexed order"))
        assert await hits(store, "order") == ["indexed order"]  # the search indexed it
        gone = await store.append_message(ORG, said("+31600000001", "noted order, then deleted"))
        await store.append_message(ORG, said("ann@example.com", "noted order of ann"))
        await store.append_message(ORG, said("+31600000003", "noted order of someone forgotten"))
        assert noted(path) == 3
        await store.delete_message(ORG, gone.id)
        await store.delete_message(ORG, indexed.id)  # an indexed one goes out of the index at once
        await store.link_contacts(ORG, "+31600000001", "ann@example.com")  # ann's messages move to +316...01
        await store.forget_contact(ORG, "+31600000003")
        assert noted(path) == 1  # the deleted and forgotten ones are no longer noted
        assert await hits(store, "order") == ["noted order of ann"]
        assert await hits(store, "order", "+31600000001") == ["noted order of ann"]
        assert noted(path) == 0
        assert_index_matches_messages(path)


async def test_a_store_closing_indexes_what_it_noted_and_a_search_finds_what_others_left(tmp_path: Path) -> None:
    path = tmp_path / "restart.db"
    async with open_store(str(path)) as store:
        await store.append_message(ORG, said("+31600000001", "noted at shutdown"))
        assert noted(path) == 1
    assert noted(path) == 0  # indexed as the store closed
    with contextlib.closing(sqlite3.connect(path)) as conn:  # a writer that ended without indexing (killed)
        conn.execute(
            "INSERT INTO messages (id, org_id, contact_pk, channel, role, content, created_us) "
            "SELECT 'raw-1', org_id, contact_pk, channel, role, 'left by a killed writer', created_us + 1 FROM messages"
        )
        conn.commit()
    assert noted(path) == 1
    async with open_store(str(path)) as store:
        assert await hits(store, "shutdown") == ["noted at shutdown"]
        assert await hits(store, "killed") == ["left by a killed writer"]
    assert_index_matches_messages(path)


async def test_a_search_waits_a_bounded_time_for_a_write_lock_held_elsewhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "locked.db"
    async with open_store(str(path)) as store:
        await store.append_message(ORG, said("+31600000001", "parcel indexed first"))
        assert await hits(store, "parcel") == ["parcel indexed first"]
        await store.append_message(ORG, said("+31600000001", "parcel noted while another process writes"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's long write holds the lock
        try:
            began = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="chatdock.storage"):
                assert await hits(store, "parcel") == ["parcel indexed first"]  # what the index holds
            assert time.monotonic() - began < SEARCH_WAIT + 1
            assert "the newest messages are not searchable yet" in caplog.text
        finally:
            other.execute("ROLLBACK")
            other.close()
        deadline = time.monotonic() + 10
        while len(await hits(store, "parcel")) != 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert noted(path) == 0
    assert_index_matches_messages(path)


async def test_a_file_from_before_the_organizations_word_is_indexed_again_on_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 14 indexes every message again with its organization beside its contact (indexing.owner), so
    that an organization's search reads its own matches only: a file indexed the old way comes out consistent,
    its messages found within their organization and their contact, and deletes keep it so."""
    path = tmp_path / "before.db"
    with monkeypatch.context() as patched:
        patched.setattr(schema, "MIGRATIONS", tuple(m for m in schema.MIGRATIONS if m.version < 14))
        async with open_store(str(path)) as store:
            await store.append_message(ORG, said("+31600000001", "parcel one"))
            await store.append_message(ORG, said("+31600000002", "parcel two"))
            await store.append_message("globex", said("+31600000001", "parcel three"))
    with contextlib.closing(sqlite3.connect(path)) as conn:  # the index as the chatdock of before kept it
        conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('delete-all')")
        conn.execute(
            "INSERT INTO messages_fts (rowid, content, owner) SELECT seq, content, 'k' || contact_pk FROM messages"
        )
        conn.execute("DELETE FROM search_pending")
        conn.commit()
    assert_index_matches_messages(path)
    async with open_store(str(path)) as store:
        assert_index_matches_messages(path)
        assert await hits(store, "parcel") == ["parcel one", "parcel two"]
        assert await hits(store, "parcel", "+31600000002") == ["parcel two"]
        assert [hit.content for hit in (await store.search_messages("globex", "parcel")).hits] == ["parcel three"]
        (gone,) = (await store.search_messages(ORG, "one")).hits
        await store.delete_message(ORG, gone.id)
        assert await hits(store, "parcel") == ["parcel two"]
    assert_index_matches_messages(path)
