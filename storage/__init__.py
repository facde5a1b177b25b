"""chatdock's store: `open_store(url)` gives a `Store`, the contract's rules over a storage backend.

storage/
  store.py        Store: checks, normalization, the channel choice, transcript fitting, keys
  backend.py      Backend: the narrow seam an engine implements (records in, records out)
  records.py      messages and chats checked in full, as a backend receives them
  audit.py        who took data away (a delete, a forget, a merge): one log line each, never a contact's id
  telemetry.py    what the store tells an operator (counts, spans): the seam metrics and traces plug into
  tracing.py      the store's spans and its SQL's (OpenTelemetry's API), when traces are on
  sqlite/         the SQLite backend (the embedded default)
  postgres/       the PostgreSQL backend (replicas sharing one database)
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, NamedTuple

from .errors import UNREADABLE_URL, ChatdockError, Conflict, InvalidInput, NotFound, Unavailable
from .models import (
    ApiKeyInfo,
    AppendedMessage,
    ChannelRef,
    Chat,
    ChatList,
    ChatStatus,
    ContactInfo,
    ContactPage,
    Context,
    DeletedMessage,
    ForgetResult,
    LinkResult,
    Message,
    MessagePage,
    NewApiKey,
    NewMessage,
    Part,
    Role,
    StoredMessage,
)
from .sqlite import Durability, SQLiteBackend

if TYPE_CHECKING:
    from .postgres import PostgresBackend
from .sql.migrations import Migration, schema_version
from .sqlite import schema as sqlite_schema
from .sqlite.backend import integrity_check
from .sqlite.failures import translate as translate_sqlite
from .store import Store
from .telemetry import Telemetry
from .transcript import format_transcript

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


def is_new_file(url: str) -> bool:
    """Whether `url` names a SQLite file that is not there yet (opening it makes a new database)."""
    return not is_postgres(url) and url != ":memory:" and not os.path.lexists(os.path.expanduser(url))


def refuse_uri(url: str) -> None:
    """A SQLite `file:` URI is refused: chatdock opens its file with URIs of its own (read-only readers, ...), and
    one given would be read as a file name by some connections and as a URI by others (two databases)."""
    if url.startswith("file:"):
        raise InvalidInput(
            f"--db takes a file's path, ':memory:' or a postgresql:// URL, not a SQLite URI ({url}): give the path "
            "the URI names (file:/data/chatdock.db is /data/chatdock.db)"
        )
    # what a desktop client's configuration passes as written, each of which made a new, empty database where
    # it did not mean to (a file named with spaces, a folder named `sqlite:` or `$HOME`): refused, saying why
    if not url:  # a variable set to nothing ("there is no database at :")
        raise InvalidInput("--db (or CHATDOCK_DB) is empty: give a file's path, ':memory:' or a postgresql:// URL")
    if url != url.strip():
        raise InvalidInput(f"--db (or CHATDOCK_DB) has white space at an end ({url!r}): give the path without it")
    if url.startswith(("sqlite:", "sqlite3:")):
        raise InvalidInput(
            f"--db (or CHATDOCK_DB) takes a file's path, not a SQLAlchemy URL ({url}): give the path it names "
            "(sqlite:////data/chatdock.db is /data/chatdock.db)"
        )
    if is_postgres(url):
        try:  # each host's port (a URL may name several: host1:5432,host2:5432), and a broken [host]
            for host in urllib.parse.urlsplit(url).netloc.rpartition("@")[2].split(","):
                urllib.parse.urlsplit(f"//{host}").port  # noqa: B018 (read for its check: past 65535, not a number)
        except ValueError:  # neither the URL nor the parser's words, which quote the "port": a password's start
            raise InvalidInput(
                f"{UNREADABLE_URL}: a host's port is not a number from 0 to 65535, or a [host] is not closed (a "
                "password's / ? # @ must be percent-encoded: %2F %3F %23 %40); give one like "
                "postgresql://user@host:5432/database"
            ) from None
    if re.match(r"(\$\{?[A-Za-z_]|%[A-Za-z_]+%)", url):
        raise InvalidInput(
            f"--db (or CHATDOCK_DB) starts with a variable nothing expanded ({url}: an MCP client passes its "
            "configuration as written): give the whole path (~ is expanded, as by a shell)"
        )


def _no_database(url: str) -> InvalidInput:
    """A command that only reads or upgrades, given a SQLite file that is not there (a mistyped path)."""
    return InvalidInput(f"there is no database at {url}: check --db (serve, import and keys create make one)")


@asynccontextmanager
async def open_store(
    url: str,
    durability: Durability = "normal",
    pool_size: int | None = None,
    timeout: float | None = None,
    telemetry: Telemetry | None = None,
    create: bool = True,
) -> AsyncIterator[Store]:
    """The store `url` names: a SQLite file path, `:memory:` for a throwaway one, or a `postgresql://` URL
    (`pool_size` connections at most, `timeout` seconds for each connection and statement); it tells
    `telemetry` of its work (telemetry.py). Without `create`, a SQLite file that is not there is an error,
    not a new database (a command that only reads, given a mistyped path)."""
    telemetry = telemetry or Telemetry()
    refuse_uri(url)
    if not create and is_new_file(url):
        raise _no_database(url)
    backend: SQLiteBackend | PostgresBackend
    if is_postgres(url):
        from .postgres import DEFAULT_POOL_SIZE, DEFAULT_TIMEOUT, PostgresBackend  # asyncpg only when used

        backend = PostgresBackend(url, pool_size or DEFAULT_POOL_SIZE, timeout or DEFAULT_TIMEOUT, telemetry)
    else:
        backend = SQLiteBackend(url, durability, telemetry=telemetry)
    try:
        await backend.start()
    except BaseException:
        await backend.close()
        raise
    store = Store(backend, telemetry)
    try:
        yield store
    finally:
        await store.close()


class Checked(NamedTuple):
    """What `check_store` found: the damage (empty when there is none); a sound file's schema version, and the
    newest this chatdock knows (it upgrades an older file when it opens it, and refuses a newer one)."""

    problems: list[str]
    version: int
    newest: int


async def check_store(url: str) -> Checked:
    """A full check of the database `url` names, without opening it for writing: what is damaged, if anything,
    and which schema version it has."""
    if is_postgres(url):
        raise InvalidInput(
            "chatdock check reads a SQLite file; for PostgreSQL use the server's own tools (amcheck, pg_amcheck)"
        )
    if url == ":memory:":
        raise InvalidInput("chatdock check reads a SQLite file; pass its path with --db")
    refuse_uri(url)
    problems, version = await asyncio.to_thread(integrity_check, url)
    return Checked(problems, version, sqlite_schema.NEWEST)


class Schema(NamedTuple):
    """A database's schema as this chatdock sees it (`read_schema`)."""

    version: int  # the last migration it has without a gap from the first (0: no chatdock schema yet)
    due: list[tuple[int, str]]  # the migrations it lacks, number and name, oldest first
    newest: int  # the newest migration this chatdock knows; a database past it was migrated by a newer one
    applied: int  # the newest migration it has


async def read_schema(url: str, timeout: float | None = None) -> Schema:
    """The schema of the database `url` names, read without changing anything (no lock, no migration)."""
    refuse_uri(url)
    if url == ":memory:":
        raise InvalidInput("a database in memory has no schema to read: pass a file's path or a postgresql:// URL")
    if is_new_file(url):
        raise _no_database(url)
    migrations: tuple[Migration, ...]
    if is_postgres(url):
        import asyncpg

        from .postgres import DEFAULT_TIMEOUT
        from .postgres import schema as postgres_schema
        from .postgres.driver import named
        from .postgres.failures import FAILURES, translate

        try:
            conn = await asyncpg.connect(
                url, timeout=timeout or DEFAULT_TIMEOUT, server_settings=named(url, "chatdock migrate")
            )
        except FAILURES as exc:
            text = translate(exc, url, starting=True)
            raise exc if text is None else Unavailable(text) from exc
        try:
            done = await postgres_schema.applied_in(conn)
        finally:
            await conn.close()
        migrations = postgres_schema.MIGRATIONS
    else:
        try:
            done = await asyncio.to_thread(sqlite_schema.applied_in, url)
        except sqlite3.Error as exc:
            raise translate_sqlite(exc, url) or exc from exc
        migrations = sqlite_schema.MIGRATIONS
    due = [(migration.version, migration.name) for migration in migrations if migration.version not in done]
    newest = max(migration.version for migration in migrations)
    return Schema(schema_version(done), due, newest, max(done, default=0))


__all__ = [
    "ApiKeyInfo",
    "AppendedMessage",
    "ChannelRef",
    "Chat",
    "ChatList",
    "ChatStatus",
    "ChatdockError",
    "Checked",
    "Conflict",
    "ContactInfo",
    "ContactPage",
    "Context",
    "DeletedMessage",
    "Durability",
    "ForgetResult",
    "InvalidInput",
    "LinkResult",
    "Message",
    "MessagePage",
    "NewApiKey",
    "NewMessage",
    "NotFound",
    "Part",
    "Role",
    "Schema",
    "Store",
    "StoredMessage",
    "Telemetry",
    "Unavailable",
    "check_store",
    "format_transcript",
    "is_new_file",
    "is_postgres",
    "open_store",
    "read_schema",
]
