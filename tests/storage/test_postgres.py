"""What only the PostgreSQL backend has: migrations that replicas start together, its start-up errors, the
append batches under concurrency, and the change feed between two stores (the rest of the contract runs on
both engines through the `store` and `db` fixtures)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from chatdock.server.bench.postgres import database_url
from chatdock.storage import NewMessage, Unavailable, open_store
from chatdock.storage.postgres.schema import MIGRATIONS
from tests.transports import free_port, run_cli


def say(contact: str, content: str, provider_id: str | None = None) -> NewMessage:
    metadata = {} if provider_id is None else {"provider_message_id": provider_id}
    return NewMessage(contact_id=contact, channel="whatsapp", role="user", content=content, metadata=metadata)


async def test_replicas_starting_together_apply_each_migration_once(postgres_url: str) -> None:
    async def start() -> int:
        async with open_store(postgres_url) as store:
            return len((await store.append_message("acme", say("+31600000001", "hi"))).id)

    assert await asyncio.gather(*(start() for _ in range(6))) == [36] * 6
    conn = await asyncpg.connect(postgres_url)
    try:
        versions = [row[0] for row in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [migration.version for migration in MIGRATIONS]
        assert await conn.fetchval("SELECT count(*) FROM messages") == 6
    finally:
        await conn.close()


async def test_concurrent_appends_and_webhook_copies_through_the_batches(postgres_url: str) -> None:
    async with open_store(postgres_url) as store:
        appended = await asyncio.gather(
            *(store.append_message("acme", say(f"+3160000{i % 7:04d}", f"m{i}")) for i in range(300)),
            *(store.append_message("acme", say("+31600009999", "the webhook", "wamid.1")) for _ in range(40)),
        )
        assert len({m.id for m in appended[:300]}) == 300
        copies = appended[300:]
        assert len({m.id for m in copies}) == 1 and [m.deduplicated for m in copies].count(False) == 1
        bad = say("+31600000001", "into a chat of another contact").model_copy(
            update={"chat_id": (await store.open_chat("acme", "+31600000002", "voice")).id}
        )
        mixed = await asyncio.gather(
            store.append_message("acme", bad),
            store.append_message("acme", say("+31600000001", "fine")),
            return_exceptions=True,
        )
        assert "not found for contact +31600000001" in str(mixed[0]) and not isinstance(mixed[1], Exception)
        assert len((await store.get_context("acme", "+31600000001", limit=100)).messages) == 44  # 43 + "fine"


@pytest.mark.process
def test_start_up_failures_are_one_clear_line(postgres_server: str) -> None:
    port = free_port()
    cases = [
        (f"postgresql://postgres@127.0.0.1:{port}/chatdock", "cannot reach PostgreSQL at 127.0.0.1:"),
        (database_url(postgres_server, "no_such_database"), "has no such database"),
        ("postgresql://postgres@127.0.0.1:notaport/x", "cannot read the PostgreSQL URL in --db"),
    ]
    for url, expected in cases:
        result = run_cli("keys", "list", "--db", url, "--db-timeout", "3")
        assert result.returncode == 2, result
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr and "reconnects by itself" not in result.stderr
    checked = run_cli("check", "--db", postgres_server)
    assert checked.returncode == 2 and "pg_amcheck" in checked.stderr


async def test_a_closed_store_says_so() -> None:
    from chatdock.storage.postgres import PostgresBackend

    backend = PostgresBackend("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(Unavailable, match="is closed"):
        await backend.ping()
