"""SQLite's schema, as numbered, named migrations recorded in the database (the format: storage/sql/migrations.py)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable

from ..cursor import CURSOR_SECRET
from ..errors import InvalidInput
from ..sql.migrations import (
    APPLIED,
    SCHEMA_TABLE,
    Migration,
    announce_upgrade,
    announce_upgraded,
    apply_migration,
    clean_identifiers,
    logger,
    new_secret,
    refuse_newer,
    schema_version,
)
from ..sql.ops import Ops, count, one, rows, value
from ..sql.tables import Words, tables
from ..validation import normal_identifier, refused_character
from . import driver
from .indexing import owner

INDEX_BATCH = 50_000
_INDEXED = "NOT EXISTS (SELECT 1 FROM search_pending WHERE seq = old.seq)"  # in the search index (indexing.py)


def _index_messages(owner_of: str, noted_aside: bool, doing: str) -> Callable[[], Ops[None]]:
    """A migration's step: index the messages (their owner column `owner_of`, over `m`), a batch at a time,
    logging `doing` with how far it got; with `noted_aside`, not those still noted in `search_pending` (their
    indexing comes)."""
    aside = " AND NOT EXISTS (SELECT 1 FROM search_pending p WHERE p.seq = m.seq)" if noted_aside else ""

    def step() -> Ops[None]:
        total = yield value("SELECT count(*) FROM messages")
        last, done = 0, 0
        while True:
            found = yield one(
                "SELECT max(seq), count(*) FROM (SELECT seq FROM messages WHERE seq > ? ORDER BY seq LIMIT ?)",
                last,
                INDEX_BATCH,
            )
            if not found[1]:
                break
            yield count(
                f"INSERT INTO messages_fts (rowid, content, owner) SELECT m.seq, m.content, {owner_of} "
                f"FROM messages m WHERE m.seq > ? AND m.seq <= ?{aside}",
                last,
                found[0],
            )
            last, done = found[0], done + found[1]
            if total > INDEX_BATCH:
                logger.warning("%s: %s of %s messages", doing, f"{done:,}", f"{total:,}")

    return step


def _normalize_identifiers() -> Ops[None]:
    """Store contact and agent ids in NFC. Two contacts whose ids become one are both left as they are and
    logged (the application decides whether they are one person), never merged here."""
    for table in ("messages", "chats"):
        for (agent,) in (yield rows(f"SELECT DISTINCT agent_id FROM {table} WHERE agent_id IS NOT NULL")):
            if normal_identifier(agent) != agent:
                yield count(f"UPDATE {table} SET agent_id = ? WHERE agent_id = ?", normal_identifier(agent), agent)
    contacts = yield rows("SELECT id, org_id, external_id FROM contacts")
    taken = {(org, external) for _, org, external in contacts}
    for key, org, external in contacts:
        normal = normal_identifier(external)
        if refused_character(normal) is not None:
            logger.warning(
                "contact %r holds characters no longer accepted in ids; it stays, reachable through export", external
            )
        if normal == external:
            continue
        if (org, normal) in taken:
            logger.warning(
                "contacts %r and %r are the same id once normalized (NFC); both are kept as they are: link them if "
                "they are one person",
                external,
                normal,
            )
            continue
        yield count("UPDATE contacts SET external_id = ? WHERE id = ?", normal, key)
        taken.discard((org, external))
        taken.add((org, normal))


# SQLite's words for the shared tables (sql/tables.py): an INTEGER PRIMARY KEY is the row's own id
TABLES = tables(
    Words(
        key="INTEGER PRIMARY KEY",
        integer="INTEGER",
        text="TEXT",
        keyed_table=" WITHOUT ROWID",
        chat_columns="",
        message_columns="",
        index_order="",  # the rowid (seq) ends every index already
    )
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema",
        tuple(
            TABLES[name]
            for name in (
                "orgs",
                "contacts",
                "contacts_recent",
                "channels",
                "chats",
                "chats_contact",
                "chat_channels",
                "chat_channels_channel",
                "messages",
                "messages_contact",
                "messages_agent",
                "messages_chat",
                "messages_provider",
                "api_keys",
                "api_keys_live_name",
            )
        ),
    ),
    Migration(
        2,
        "health probe row",
        ("CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), checked_us INTEGER NOT NULL)",),
    ),
    Migration(3, "identifiers in NFC", (), _normalize_identifiers),
    Migration(
        4,
        "change feed",
        (
            """CREATE TABLE changes (
                seq INTEGER PRIMARY KEY,
                org TEXT NOT NULL,
                contact_id TEXT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('updated', 'appeared', 'forgotten')),
                origin TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        5,
        "identifiers and aliases",
        (
            TABLES["identifiers"],
            TABLES["identifiers_contact"],
            """INSERT INTO identifiers (org_id, identifier, contact_pk, created_us)
                SELECT org_id, external_id, id, created_us FROM contacts""",
            # the other identifiers of the changed contact, so listeners of an alias's URIs hear too
            "ALTER TABLE changes ADD COLUMN aliases TEXT",
        ),
    ),
    Migration(
        6,
        "full-text search",
        (
            # each message's text, and its contact as one token (owner: k<contact key>), so that a search of
            # one contact intersects two lists of the index instead of ranking the whole organization's hits
            "CREATE VIEW messages_search AS SELECT seq, content, 'k' || contact_pk AS owner FROM messages",
            """CREATE VIRTUAL TABLE messages_fts USING fts5(
                content, owner, content='messages_search', content_rowid='seq',
                tokenize='unicode61 remove_diacritics 2'
            )""",
            # kept in the same transaction as the message itself; a merge moves messages to another contact
            """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
                INSERT INTO messages_fts (rowid, content, owner) VALUES (new.seq, new.content, 'k' || new.contact_pk);
            END""",
            """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
                INSERT INTO messages_fts (messages_fts, rowid, content, owner)
                    VALUES ('delete', old.seq, old.content, 'k' || old.contact_pk);
            END""",
            """CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, contact_pk ON messages BEGIN
                INSERT INTO messages_fts (messages_fts, rowid, content, owner)
                    VALUES ('delete', old.seq, old.content, 'k' || old.contact_pk);
                INSERT INTO messages_fts (rowid, content, owner) VALUES (new.seq, new.content, 'k' || new.contact_pk);
            END""",
        ),
        _index_messages("'k' || m.contact_pk", False, "building the search index"),
    ),
    Migration(7, "identifiers without characters a person cannot see", (), clean_identifiers()),
    Migration(
        8,
        "search index in batches",
        (
            # an append notes its message; indexing.py indexes the noted ones together
            "CREATE TABLE search_pending (seq INTEGER PRIMARY KEY)",
            "DROP TRIGGER messages_fts_insert",
            "DROP TRIGGER messages_fts_delete",
            "DROP TRIGGER messages_fts_update",
            """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
                INSERT INTO search_pending (seq) VALUES (new.seq);
            END""",
            # a message still noted has nothing in the index to take out
            f"""CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
                INSERT INTO messages_fts (messages_fts, rowid, content, owner)
                    SELECT 'delete', old.seq, old.content, 'k' || old.contact_pk WHERE {_INDEXED};
                DELETE FROM search_pending WHERE seq = old.seq;
            END""",
            f"""CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, contact_pk ON messages BEGIN
                INSERT INTO messages_fts (messages_fts, rowid, content, owner)
                    SELECT 'delete', old.seq, old.content, 'k' || old.contact_pk WHERE {_INDEXED};
                INSERT INTO messages_fts (rowid, content, owner)
                    SELECT new.seq, new.content, 'k' || new.contact_pk WHERE {_INDEXED};
            END""",
        ),
    ),
    Migration(
        9,
        "each contact counts the changes of its messages",
        ("ALTER TABLE contacts ADD COLUMN version INTEGER NOT NULL DEFAULT 0",),
    ),
    Migration(
        10,
        "the first answers of links made under an Idempotency-Key",
        (TABLES["link_answers"], TABLES["link_answers_contact"]),
    ),
    Migration(
        11,
        "the channel ids a merge retired, and what they became",
        (TABLES["retired_channels"], TABLES["retired_channels_channel"]),
    ),
    Migration(
        12,
        "a secret of the database's own, which keeps list cursors from showing other organizations' writes",
        (TABLES["secrets"],),
        new_secret(CURSOR_SECRET),
    ),
    Migration(
        13,
        "a key's name is unique within its organization",
        ("DROP INDEX api_keys_live_name", TABLES["api_keys_org_live_name"]),
    ),
    Migration(
        14,
        "the search index knows each message's organization",
        (
            # the index is made again, its owner column now "k<contact key> o<org key>" (indexing.owner): an
            # organization's search had FTS5 walk every organization's matches, newest first, and keep its own
            # (a small organization's search for a word common in a neighbour's million messages: 0.3 s)
            "DROP TRIGGER messages_fts_delete",
            "DROP TRIGGER messages_fts_update",
            "DROP TABLE messages_fts",
            "DROP VIEW messages_search",
            f"CREATE VIEW messages_search AS SELECT m.seq, m.content, {owner('m')} AS owner FROM messages m",
            """CREATE VIRTUAL TABLE messages_fts USING fts5(
                content, owner, content='messages_search', content_rowid='seq',
                tokenize='unicode61 remove_diacritics 2'
            )""",
            # as migration 8's, with the new owner column
            f"""CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
                INSERT INTO messages_fts (messages_fts, rowid, content, owner)
                    SELECT 'delete', old.seq, old.content, {owner("old")} WHERE {_INDEXED};
                DELETE FROM search_pending WHERE seq = old.seq;
            END""",
            f"""CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, contact_pk ON messages BEGIN
                INSERT INTO messages_fts (messages_fts, rowid, content, owner)
                    SELECT 'delete', old.seq, old.content, {owner("old")} WHERE {_INDEXED};
                INSERT INTO messages_fts (rowid, content, owner)
                    SELECT new.seq, new.content, {owner("new")} WHERE {_INDEXED};
            END""",
        ),
        # about 5 seconds a million messages
        _index_messages(owner("m"), True, "indexing messages with their organization"),
    ),
    Migration(15, "a key may be read-only", (TABLES["api_keys.read_only"],)),
)


def applied_versions(conn: sqlite3.Connection) -> set[int]:
    return {row[0] for row in conn.execute(APPLIED)}


NEWEST = max(migration.version for migration in MIGRATIONS)


def file_version(conn: sqlite3.Connection) -> int:
    """The schema version of the file `conn` reads (0: no chatdock schema yet), read only."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone():
        return schema_version(applied_versions(conn))
    return 0


def applied_in(path: str) -> set[int]:
    """The migrations the file `path` has, read only (none when it has no chatdock schema yet). A file without a
    -wal beside it, which no process has open, is read as it is: nothing is made beside it (a reader's -wal and
    -shm stayed after `chatdock migrate --check`) and a folder it may not write is no obstacle (a backup on
    read-only media was refused as read-only)."""
    conn = driver.read_only(path, unchanging=not os.path.exists(path + "-wal"))
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone():
            return applied_versions(conn)
        return set()
    finally:
        conn.close()


def refuse_foreign(conn: sqlite3.Connection) -> None:
    """A SQLite file of another program (tables, none of them chatdock's record of its schema) is left as it
    is: chatdock's tables are not added beside the other program's."""
    tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    if tables and "schema_migrations" not in tables:
        path = conn.execute("PRAGMA database_list").fetchone()[2]
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise InvalidInput(
            f"{path} is a SQLite database of another program (its tables: {shown}), not chatdock's; chatdock "
            "keeps its history in a file of its own: choose another --db"
        )


def migrate(conn: sqlite3.Connection, place: str) -> list[int]:
    """Apply every migration not yet recorded; return the versions this call applied. `place` names the file
    in the lines that say so.

    Each is applied in one `BEGIN IMMEDIATE` transaction that first re-reads what is applied, so two processes
    opening a fresh file at the same moment take turns: the second finds the work done. `conn` must be in
    autocommit mode (`isolation_level=None`) with a busy timeout set.
    """
    refuse_foreign(conn)
    conn.execute(SCHEMA_TABLE)
    refuse_newer(applied_versions(conn), MIGRATIONS)
    applied: list[int] = []
    found: set[int] | None = None  # what was applied when this process came to apply its first migration
    for migration in MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = applied_versions(conn)  # under the lock: another process may have applied it meanwhile
            if migration.version not in done:
                if found is None:
                    found = done
                    announce_upgrade(place, done, MIGRATIONS)
                driver.run(conn, apply_migration(migration))
                applied.append(migration.version)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # (SQLite rolls back by itself on a full disk: a ROLLBACK would then fail, and
                conn.execute("ROLLBACK")  # its error hide the disk's)
            raise
    announce_upgraded(place, found or set(), applied, applied_versions(conn))
    return applied
