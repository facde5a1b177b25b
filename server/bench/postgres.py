"""`chatdock bench --db postgresql://...`: the floors and the engine's own figures on PostgreSQL.

The bench never writes into the database the URL names: it creates a database of its own on that server
(`chatdock_bench_<random>`, so the URL's user needs CREATEDB) and drops it at the end. Its floors are the raw
driver (asyncpg) on the same server in the same run: one insert and one commit, and the last-50 read.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from chatdock.server.bench.rows import appends, timed
from chatdock.storage import Unavailable, open_store
from chatdock.storage.postgres.failures import FAILURES, translate, where

INSERT_SQL = (
    "INSERT INTO messages (id, org_id, contact_pk, channel, role, content, created_us)"
    " VALUES ($1, $2, $3, 'sms', 'user', $4, $5)"
)
CONTEXT_SQL = (
    "SELECT id, agent_id, chat_id, channel, role, content, parts, metadata, created_us, seq FROM messages "
    "WHERE contact_pk = $1 ORDER BY created_us DESC, seq DESC LIMIT 50"
)


def database_url(url: str, database: str) -> str:
    """`url` (a server's URL) naming the database `database` instead, its options kept."""
    head, _, tail = url.partition("?")
    base = head.rsplit("/", 1)[0] if head.count("/") > 2 else head
    return f"{base}/{database}" + (f"?{tail}" if tail else "")


@asynccontextmanager
async def throwaway_database(url: str, prefix: str = "chatdock_bench_") -> AsyncIterator[str]:
    """A new database on the server `url` names (`prefix` and a random part), dropped afterwards; its URL."""
    name = prefix + secrets.token_hex(4)
    try:
        admin = await asyncpg.connect(url, timeout=10)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    except FAILURES as exc:  # no server there, no such database, a login refused, ...: one line, not a traceback
        said = translate(exc, url, starting=True)
        raise Unavailable(f"cannot make the bench's database: {said or f'{where(url)}: {exc}'}") from None
    try:
        yield database_url(url, name)
    finally:
        admin = await asyncpg.connect(url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def describe(url: str) -> str:
    """The server as the docs name it: its version and the memory it keeps pages in (shared_buffers), which
    decides how much of a large database a read finds without asking the operating system."""
    conn = await asyncpg.connect(url)
    try:
        version = await conn.fetchval("SHOW server_version")
        buffers = await conn.fetchval("SHOW shared_buffers")
    finally:
        await conn.close()
    return f"PostgreSQL {str(version).split()[0]}, shared_buffers {buffers}"


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def raw_floor(url: str, inserts: int, reads: int) -> tuple[float, float]:
    """Raw asyncpg on the bench database: one message per insert and commit (messages/s), and the last-50 read
    (p99 ms), with prepared statements, as a careful hand-written client would."""
    conn = await asyncpg.connect(url)
    try:
        first = await conn.fetchrow("SELECT org_id, id FROM contacts ORDER BY id LIMIT 1")
        assert first is not None, "the bench fills the database first"
        org_pk, contact_pk = first
        insert = await conn.prepare(INSERT_SQL)
        start = time.perf_counter()
        for index in range(inserts):
            async with conn.transaction():
                await insert.fetch(secrets.token_hex(16), org_pk, contact_pk, f"raw {index}", time.time_ns() // 1000)
        rate = inserts / (time.perf_counter() - start)
        pks = [row[0] for row in await conn.fetch("SELECT id FROM contacts")]
        read = await conn.prepare(CONTEXT_SQL)
        samples = []
        for _ in range(reads):
            began = time.perf_counter()
            await read.fetch(random.choice(pks))
            samples.append((time.perf_counter() - began) * 1000)
        return rate, _p99(samples)
    finally:
        await conn.close()


async def index_share(url: str) -> float:
    """The search index's part of the database (the GIN index's bytes over the database's)."""
    conn = await asyncpg.connect(url)
    try:
        index = await conn.fetchval("SELECT pg_relation_size('messages_words')")
        size = await conn.fetchval("SELECT pg_database_size(current_database())")
        return float(index) / float(size)
    finally:
        await conn.close()


async def appends_with_and_without_index(url: str, count: int) -> tuple[float, float]:
    """One caller's appends/s on two fresh databases of the server, one without the search index."""

    rates = []
    for drop in (False, True):
        async with throwaway_database(url) as fresh:
            async with open_store(fresh):
                pass
            if drop:
                conn = await asyncpg.connect(fresh)
                try:
                    await conn.execute("DROP INDEX messages_words")
                finally:
                    await conn.close()
            async with open_store(fresh) as store:
                rate, _ = await timed(appends(store, count * 2, "index" if drop else "no index"), 1)
            rates.append(rate)
    return rates[0], rates[1]
