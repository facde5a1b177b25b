"""The hot queries are index look-ups: a lost index fails here, not at a million messages in production."""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatdock.storage import NewMessage, Part, open_store
from chatdock.storage.backend import MessageFilter
from chatdock.storage.sql.queries import latest_sql, within
from chatdock.storage.sqlite.queries import DIALECT
from chatdock.storage.sqlite.schema import MIGRATIONS


def plan(path: str, sql: str, params: list[object]) -> str:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return "\n".join(row[-1] for row in rows)


def assert_index_only(text: str, index: str) -> None:
    assert f"USING INDEX {index}" in text or f"USING COVERING INDEX {index}" in text, text
    assert "SCAN m" not in text and "SCAN messages" not in text, text
    assert "TEMP B-TREE" not in text, text


@pytest.fixture
async def filled(tmp_path: Path) -> str:
    path = str(tmp_path / "plans.db")
    async with open_store(path) as store:
        chat = await store.open_chat("o", "c0", "voice")
        batch = [
            NewMessage(
                contact_id=f"c{i % 20}",
                channel="sms",
                role="user",
                content=f"m{i}",
                agent_id="a" if i % 3 else None,
                chat_id=chat.id if i % 20 == 0 else None,
            )
            for i in range(400)
        ]
        await store.import_messages("o", batch)
    with sqlite3.connect(path) as conn:
        conn.execute("ANALYZE")
    return path


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "messages_contact"),
        ({"roles": ["user", "note"]}, "messages_contact"),
        ({"channels": ["sms"]}, "messages_contact"),
        ({"agent_id": "a"}, "messages_agent"),
        ({"chat_id": "00000000-0000-7000-8000-000000000000"}, "messages_chat"),
    ],
)
async def test_context_query_walks_an_index_backwards(filled: str, filters: dict[str, object], index: str) -> None:
    sql, params = latest_sql(DIALECT, "o", "c0", MessageFilter(**filters), 50, 4 * 2**20)  # type: ignore[arg-type]
    assert_index_only(newest_rows(plan(filled, sql, params)), index)
    # the statement its reader cuts (queries.within) walks the same index, and sorts nothing either
    sql, params = latest_sql(DIALECT, "o", "c0", MessageFilter(**filters), 50, None)  # type: ignore[arg-type]
    assert_index_only(plan(filled, sql, params), index)


async def test_a_read_cut_as_it_is_read_keeps_the_rows_the_statement_keeps(tmp_path: Path) -> None:
    """`within` counts a row's bytes as the statement's `octet_length` does: content, parts and metadata in
    UTF-8, NULL as nothing; the row that crosses the bound comes, none after it."""
    path = str(tmp_path / "sizes.db")
    texts = ["a" * 700, "héllo wörld " * 40, "🙂" * 300, "x", "日本語のテキスト" * 50]
    async with open_store(path) as store:
        for i in range(60):
            text = texts[i % len(texts)]
            parts = (
                [Part(text=text[: len(text) // 2]), Part(text=text[len(text) // 2 :])]
                if i % 4 == 0 and len(text) > 1
                else None
            )
            metadata = {"n": i, "note": "ünïcode" * (i % 7)} if i % 3 else None
            await store.append_message(
                "o",
                NewMessage(
                    contact_id="c",
                    channel="sms",
                    role="user",
                    content=None if parts else text,
                    parts=parts,
                    metadata=metadata,
                ),
            )
    with sqlite3.connect(path) as conn:
        whole = conn.execute(*latest_sql(DIALECT, "o", "c", MessageFilter(), 60, 2**40)).fetchall()
        assert len(whole) == 60
        sizes = conn.execute(
            "SELECT coalesce(length(CAST(content AS BLOB)), 0) + coalesce(length(CAST(parts AS BLOB)), 0)"
            " + coalesce(length(CAST(metadata AS BLOB)), 0) FROM messages ORDER BY created_us DESC, seq DESC"
        ).fetchall()
        bounds = sorted({1, 2**40} | {sum(size for (size,) in sizes[:k]) + d for k in range(60) for d in (-1, 0, 1)})
        for bound in bounds:
            if bound < 1:
                continue
            cut = conn.execute(*latest_sql(DIALECT, "o", "c", MessageFilter(), 60, bound)).fetchall()
            assert 1 <= len(cut) <= 60
            unbounded = conn.execute(*latest_sql(DIALECT, "o", "c", MessageFilter(), 60, None))
            read = within(no_more_than(unbounded, len(cut)), bound)
            assert [row[9] for row in read] == [row[9] for row in cut], bound
            assert read == cut


def no_more_than(rows: Iterable[Any], count: int) -> Iterator[Any]:
    """`rows`, failing the test when a row past the first `count` is asked for: it would be read for nothing."""
    for index, row in enumerate(rows):
        assert index < count, f"row {index + 1} was read, past the {count} kept"
        yield row


def newest_rows(text: str) -> str:
    """The plan of the read's inner statement (`s`: the newest rows' keys and sizes), without the outer join
    that reads the columns of the few rows it keeps."""
    lines = text.splitlines()
    return "\n".join(lines[lines.index("CO-ROUTINE s") + 1 : lines.index("SCAN s")])


@pytest.mark.parametrize("after", [False, True])
async def test_list_page_is_a_keyset_index_range(filled: str, after: bool) -> None:
    position = (10**15, 10**9) if after else None
    sql, params = latest_sql(DIALECT, "o", "c0", MessageFilter(), 51, 4 * 2**20, position)
    text = plan(filled, sql, params)
    assert_index_only(newest_rows(text), "messages_contact")
    unbounded = plan(filled, *latest_sql(DIALECT, "o", "c0", MessageFilter(), 51, None, position))
    assert_index_only(unbounded, "messages_contact")  # the same, cut as it is read (queries.within)
    if after:
        for read in (text, unbounded):
            assert "created_us<?" in read.replace(" ", "") or "(created_us,rowid)<(?,?)" in read.replace(" ", ""), read


@pytest.mark.parametrize("after", [False, True])
async def test_the_size_bounded_read_touches_only_the_newest_rows_and_their_primary_keys(
    filled: str, after: bool
) -> None:
    position = (10**15, 10**9) if after else None
    sql, params = latest_sql(DIALECT, "o", "c0", MessageFilter(), 51, 4 * 2**20, position)
    text = plan(filled, sql, params)
    assert "SEARCH m USING INDEX messages_contact (contact_pk=?" in text, text
    assert "SEARCH m USING INTEGER PRIMARY KEY (rowid=?)" in text, text
    assert "SCAN m" not in text and "SCAN messages" not in text, text


async def test_delete_and_dedup_are_unique_index_look_ups(filled: str) -> None:
    by_id = plan(filled, "SELECT seq FROM messages WHERE id = ? AND org_id = 1", ["x"])
    assert "USING INDEX sqlite_autoindex_messages_1 (id=?)" in by_id, by_id
    by_provider = plan(
        filled,
        "SELECT seq FROM messages WHERE org_id = ? AND channel = ? AND provider_message_id = ?"
        " AND provider_message_id IS NOT NULL",
        [1, "sms", "p"],
    )
    assert "messages_provider" in by_provider, by_provider


def _open_fresh(path: str, ready: object) -> None:
    import asyncio

    async def main() -> None:
        ready.wait()  # type: ignore[attr-defined]
        async with open_store(path) as store:
            await store.append_message("o", NewMessage(contact_id="c", channel="sms", role="user", content="hi"))

    asyncio.run(main())


@pytest.mark.process
def test_two_processes_opening_a_fresh_file_both_get_the_full_schema(tmp_path: Path) -> None:
    path = str(tmp_path / "race.db")
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    workers = [context.Process(target=_open_fresh, args=(path, ready)) for _ in range(2)]
    for worker in workers:
        worker.start()
    ready.set()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    with sqlite3.connect(path) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
        assert versions == [m.version for m in MIGRATIONS]
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 2
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
