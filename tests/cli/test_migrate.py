"""`chatdock migrate`: an operator upgrades the schema on purpose (before starting replicas of a new version, as
the role that owns the tables), or asks what is due (`--check`, for a deploy's gate); on PostgreSQL a migration
waiting for a lock lets the other sessions through rather than holding up every query behind it."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from chatdock.storage import NewMessage, Unavailable, open_store
from chatdock.storage.postgres import schema as postgres_schema
from chatdock.storage.sqlite import schema as sqlite_schema
from tests.storage.raw import run_sql
from tests.transports import chatdock_command, run_cli, unwritable

pytestmark = pytest.mark.process  # runs the chatdock command


def engine(db: str) -> object:
    return postgres_schema if db.startswith("postgres") else sqlite_schema


# the table PostgreSQL's newest migration alters (a key may be read-only): the lock it waits for
ALTERED = "api_keys"


@asynccontextmanager
async def one_migration_behind(db: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[int, str]]:
    """The database `db` names, made with a message by this code without its last migration; that migration."""
    module = engine(db)
    last = module.MIGRATIONS[-1]  # type: ignore[attr-defined]
    with monkeypatch.context() as patched:
        patched.setattr(module, "MIGRATIONS", module.MIGRATIONS[:-1])  # type: ignore[attr-defined]
        async with open_store(db) as store:
            await store.append_message(
                "acme", NewMessage(contact_id="+31600", channel="sms", role="user", content="hi")
            )
    yield last.version, last.name


async def test_migrate_check_reads_a_copy_on_read_only_media(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup on read-only media (a file and folder chatdock may not write): `--check` "changes nothing", yet it
    was refused as a read-only database (an operator's review); it reads it as it is, as `chatdock check` does."""
    folder = tmp_path / "media"
    folder.mkdir()
    db = str(folder / "copy.db")
    async with one_migration_behind(db, monkeypatch) as (last, name):
        with unwritable(folder), unwritable(Path(db)):
            checked = run_cli("migrate", "--check", "--db", db)
        assert (checked.returncode, checked.stdout) == (
            1,
            f"{db}: at schema version {last - 1}; due: {last} ({name}). `chatdock migrate` applies them, "
            "one-way (back up first: docs/operations.md, Upgrading)\n",
        ), checked.stderr
        assert sorted(path.name for path in folder.iterdir()) == ["copy.db"]


async def test_migrate_says_what_is_due_applies_it_and_refuses_a_newer_schema(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with one_migration_behind(db, monkeypatch) as (last, name):
        place = db  # as the command names it (a PostgreSQL URL would lose its password; these have none)
        for _ in range(2):  # --check changes nothing
            checked = run_cli("migrate", "--check", "--db", db)
            assert (checked.returncode, checked.stdout) == (
                1,
                f"{place}: at schema version {last - 1}; due: {last} ({name}). `chatdock migrate` applies them, "
                "one-way (back up first: docs/operations.md, Upgrading)\n",
            ), checked.stderr
            assert "upgrad" not in checked.stderr
        if not db.startswith("postgres"):  # it leaves nothing beside the file: no -wal nor -shm of a reader
            assert sorted(path.name for path in Path(db).parent.iterdir()) == [Path(db).name]
        migrated = run_cli("migrate", "--db", db)
        assert (migrated.returncode, migrated.stdout) == (
            0,
            f"{place}: upgraded from schema version {last - 1} to {last}; applied {last} ({name})\n",
        ), migrated.stderr
        assert f"upgrading the database from schema version {last - 1} to {last}" in migrated.stderr
        for command in (["migrate"], ["migrate", "--check"]):
            again = run_cli(*command, "--db", db)
            assert (again.returncode, again.stdout) == (
                0,
                f"{place}: at schema version {last}, this chatdock's; nothing is due\n",
            ), again.stderr
        async with open_store(db) as store:  # what was there is there
            assert [m.content for m in (await store.get_context("acme", "+31600")).messages] == ["hi"]
        await run_sql(db, ("INSERT INTO schema_migrations VALUES ($1, 'of a newer chatdock', 0)", (last + 1,)))
        for command in (["migrate"], ["migrate", "--check"]):
            newer = run_cli(*command, "--db", db)
            assert newer.returncode == 2 and newer.stdout == "", newer
            assert newer.stderr == (
                f"chatdock: {place} was migrated by a newer chatdock (schema version {last + 1}; this one knows up "
                f"to {last}); run that version of chatdock, or a newer one\n"
            )


def test_migrate_refuses_a_database_that_is_not_there_and_reads_any_file_name(tmp_path: Path) -> None:
    missing = f"{tmp_path}/nothing.db"
    refused = run_cli("migrate", "--db", missing)
    assert refused.returncode == 2 and refused.stderr == (
        f"chatdock: there is no database at {missing}: check --db (serve, import and keys create make one)\n"
    )
    odd = f"{tmp_path}/a #1?%.db"  # read through a URI: each of these would end the path or escape it
    assert run_cli("keys", "create", "--db", odd, "--org", "acme").returncode == 0
    checked = run_cli("migrate", "--check", "--db", odd)
    assert (checked.returncode, checked.stdout.endswith("this chatdock's; nothing is due\n")) == (0, True), checked
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith("a #1?%")) == []


def as_role(url: str, role: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}", path=f"/{database}"))


async def test_least_privilege_as_the_docs_set_it_up_the_owner_migrates_and_the_app_serves(
    postgres_server: str,
) -> None:
    """docs/postgresql.md's roles, as written: a replica running as the app role finds migrations due and says to
    run `chatdock migrate` as the owner (it said only "permission denied for schema chatdock"); the owner's
    migrate applies them; then the app role serves."""
    admin = await asyncpg.connect(postgres_server)
    suffix = f"{time.monotonic_ns() % 10**9}"
    owner, app, database = f"owner_{suffix}", f"app_{suffix}", f"chatdock_{suffix}"
    try:
        await admin.execute(f"CREATE ROLE {owner} LOGIN")
        await admin.execute(f"CREATE ROLE {app} LOGIN")
        await admin.execute(f"CREATE DATABASE {database} OWNER {owner}")
        setup = await asyncpg.connect(as_role(postgres_server, "postgres", database))
        try:
            for statement in (
                f"CREATE SCHEMA chatdock AUTHORIZATION {owner}",
                f"ALTER ROLE {owner} IN DATABASE {database} SET search_path = chatdock",
                f"ALTER ROLE {app} IN DATABASE {database} SET search_path = chatdock",
                f"GRANT USAGE ON SCHEMA chatdock TO {app}",
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA chatdock "
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
            ):
                await setup.execute(statement)
        finally:
            await setup.close()
        as_owner, as_app = as_role(postgres_server, owner, database), as_role(postgres_server, app, database)
        newest = postgres_schema.MIGRATIONS[-1].version

        checked = run_cli("migrate", "--check", "--db", as_app)
        assert checked.returncode == 1 and "at schema version 0; due: 1 (" in checked.stdout, checked
        refused = run_cli("keys", "create", "--db", as_app, "--org", "acme")
        assert refused.returncode == 2, refused
        assert f"migrations {', '.join(str(n) for n in range(1, newest + 1))} are due, and this role may not " in (
            refused.stderr
        )
        assert "run `chatdock migrate` once as the role that owns chatdock's tables" in refused.stderr

        migrated = run_cli("migrate", "--db", as_owner)
        assert migrated.returncode == 0, migrated.stderr
        assert f"upgraded from schema version 0 to {newest}; applied 1 (" in migrated.stdout, migrated.stdout
        created = run_cli("keys", "create", "--db", as_app, "--org", "acme")
        assert created.returncode == 0, created.stderr
        assert run_cli("migrate", "--check", "--db", as_app).returncode == 0
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {owner}")
        await admin.execute(f"DROP ROLE IF EXISTS {app}")
        await admin.close()


async def test_a_migration_waiting_for_a_lock_lets_the_writes_behind_it_through(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A session in a long transaction holds a lock the migration needs (on the table it alters): the
    migration's statement waited in the lock's queue, and every write of every replica queued behind it, for as
    long as that transaction lasted. It lets go after a moment, says who is in the way, and tries again."""
    async with one_migration_behind(postgres_url, monkeypatch) as (last, _):
        holder = await asyncpg.connect(postgres_url)
        writer = await asyncpg.connect(postgres_url)
        try:
            holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
            await holder.execute(f"BEGIN; LOCK TABLE {ALTERED} IN ROW EXCLUSIVE MODE")  # then idle in transaction
            log = tmp_path / "migrate.log"
            with log.open("w") as written:
                migrating = subprocess.Popen(
                    [*chatdock_command(), "migrate", "--db", postgres_url],
                    stdout=subprocess.PIPE,
                    stderr=written,
                    text=True,
                )
            try:
                await asyncio.sleep(0.5)  # its statement is waiting now
                async with writer.transaction():  # a replica's write: through, while the holder still holds
                    await writer.execute(f"LOCK TABLE {ALTERED} IN ROW EXCLUSIVE MODE", timeout=15)
                deadline = time.monotonic() + 15
                while "waits for a lock" not in log.read_text():  # it said who is in the way
                    assert migrating.poll() is None and time.monotonic() < deadline, log.read_text()
                    await asyncio.sleep(0.05)
                await holder.execute("COMMIT")
                out, _ = migrating.communicate(timeout=60)
            finally:
                if migrating.poll() is None:
                    migrating.kill()
                    migrating.communicate()
            err = log.read_text()
            assert migrating.returncode == 0, err
            applied = f"applied {last} ({postgres_schema.MIGRATIONS[-1].name})"
            assert out.endswith(f"upgraded from schema version {last - 1} to {last}; {applied}\n"), out
            assert f"migration {last} waits for a lock (in the way: pid {holder_pid} (" in err, err
            assert "idle in transaction for " in err, err
        finally:
            await holder.close()
            await writer.close()


async def test_a_migration_that_waits_past_its_patience_gives_up_naming_who_is_in_the_way(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with one_migration_behind(postgres_url, monkeypatch) as (last, name):
        holder = await asyncpg.connect(postgres_url)
        conn = await asyncpg.connect(postgres_url)
        try:
            holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
            await holder.execute(
                f"SET application_name = 'a report'; BEGIN; LOCK TABLE {ALTERED} IN ROW EXCLUSIVE MODE"
            )
            with pytest.raises(Unavailable) as gave_up:
                await postgres_schema.migrate(conn, "the test's database", patience=1.0)
            text = str(gave_up.value)
            assert text.startswith(f"the test's database: migration {last} ({name}) gave up after "), text
            assert f"(in the way: pid {holder_pid} (a report, idle in transaction for " in text, text
            assert text.endswith(
                "nothing of it was applied. End that transaction (or wait for it to end), then start chatdock again"
            )
            assert last not in await postgres_schema.applied_in(conn)
            await holder.execute("COMMIT")
            assert await postgres_schema.migrate(conn, "the test's database") == [last]
        finally:
            await holder.close()
            await conn.close()


async def test_a_replica_behind_another_s_migration_waits_saying_so_then_gives_up_naming_it(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another session holds chatdock's migration lock (a replica migrating, or one stuck at it): a replica with
    migrations due says that it waits and who holds the lock, and after its patience gives up naming that session
    (it waited without a word and without end); once the lock is free it migrates."""
    async with one_migration_behind(postgres_url, monkeypatch) as (last, _):
        holder = await asyncpg.connect(postgres_url, server_settings={"application_name": "another replica"})
        conn = await asyncpg.connect(postgres_url)
        try:
            holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
            await holder.execute(f"SELECT pg_advisory_lock({postgres_schema.MIGRATION_LOCK})")
            with caplog.at_level(logging.INFO, "chatdock"), pytest.raises(Unavailable) as gave_up:
                await postgres_schema.migrate(conn, "the test's database", patience=1.5)
            text = str(gave_up.value)
            assert text.startswith("the test's database: another session held chatdock's migration lock for the "), text
            assert f"(holding it: pid {holder_pid} (another replica, idle for " in text, text
            [waiting] = [record for record in caplog.records if "this one waits for it" in record.getMessage()]
            # the routine wait of replicas started together: INFO (a WARNING at each concurrent start was noise)
            assert waiting.getMessage().endswith("this one waits for it (0 s of 2)") and waiting.levelname == "INFO"
            assert f"holding the migration lock: pid {holder_pid} (another replica" in caplog.text, caplog.text
            await holder.execute(f"SELECT pg_advisory_unlock({postgres_schema.MIGRATION_LOCK})")
            assert await postgres_schema.migrate(conn, "the test's database") == [last]
        finally:
            await holder.close()
            await conn.close()


async def test_chatdock_s_sessions_are_named_in_pg_stat_activity(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DBA (and a migration naming who is in its way) sees which sessions are chatdock's: its pool's
    `application_name` is "chatdock" (it was empty); a URL's own application_name is kept, and so is PGAPPNAME
    (which asyncpg does not read)."""
    watcher = await asyncpg.connect(postgres_url)
    names = "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
    try:
        async with open_store(postgres_url) as store:
            await store.get_context("acme", "+31600000000")
            assert "chatdock" in {row[0] for row in await watcher.fetch(names)}
        async with open_store(postgres_url + "?application_name=billing-bot") as store:
            await store.get_context("acme", "+31600000000")
            found = {row[0] for row in await watcher.fetch(names)}
            assert "billing-bot" in found and "chatdock" not in found, found
        monkeypatch.setenv("PGAPPNAME", "reporting")
        async with open_store(postgres_url) as store:
            await store.get_context("acme", "+31600000000")
            found = {row[0] for row in await watcher.fetch(names)}
            assert "reporting" in found and "chatdock" not in found, found
    finally:
        await watcher.close()


async def test_two_migrate_commands_at_once_each_say_what_they_did(postgres_url: str) -> None:
    """Two `chatdock migrate` at once (two init steps of a rolling deploy), both waiting on the migration lock:
    both said they had applied every migration, though one applied them and the other nothing (an SRE's
    review). The one that waited says another process applied them."""
    holder = await asyncpg.connect(postgres_url)
    try:
        await holder.execute(f"SELECT pg_advisory_lock({postgres_schema.MIGRATION_LOCK})")
        commands = [
            subprocess.Popen(
                [*chatdock_command(), "migrate", "--db", postgres_url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            await asyncio.sleep(3)  # both have read the schema (all due) and wait for the lock
            await holder.execute(f"SELECT pg_advisory_unlock({postgres_schema.MIGRATION_LOCK})")
            said = [command.communicate(timeout=60)[0] for command in commands]
        finally:
            for command in commands:
                if command.poll() is None:
                    command.kill()
                    command.communicate()
    finally:
        await holder.close()
    assert [command.returncode for command in commands] == [0, 0]
    newest = postgres_schema.MIGRATIONS[-1].version
    upgraded = [line for line in said if f"upgraded from schema version 0 to {newest}; applied 1 (" in line]
    waited = [
        line
        for line in said
        if line.endswith(f"at schema version {newest}: another process applied what was due; nothing left\n")
    ]
    assert (len(upgraded), len(waited)) == (1, 1), said


async def test_a_stop_signal_while_waiting_to_migrate_ends_the_start(postgres_url: str) -> None:
    """SIGTERM to a server still starting (waiting for another replica's migration lock) ends it at once, saying
    so: as a container's PID 1 the signal was dropped (no handler took it), the start went on and served, and the
    pod was killed at the end of its grace period (an SRE's review)."""
    holder = await asyncpg.connect(postgres_url)
    try:
        await holder.execute(f"SELECT pg_advisory_lock({postgres_schema.MIGRATION_LOCK})")
        starting = subprocess.Popen(
            [*chatdock_command(), "serve", "--http", "--port", "0", "--db", postgres_url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            await asyncio.sleep(2)  # it waits for the lock
            assert starting.poll() is None
            starting.terminate()
            _, err = starting.communicate(timeout=10)
        finally:
            if starting.poll() is None:
                starting.kill()
                starting.communicate()
    finally:
        await holder.close()
    assert starting.returncode == 0, err
    assert err.strip().endswith("stopped before serving: SIGTERM came while the store was opening"), err
