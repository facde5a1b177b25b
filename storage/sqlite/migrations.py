"""The schema, as numbered, named migrations recorded in the database.

Each migration is applied in one `BEGIN IMMEDIATE` transaction that first
re-reads what is applied, so two processes opening a fresh file at the same
moment take turns: the second finds the work done and applies nothing twice.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..validation import (
    StoredIdentifier,
    cleaned_agent,
    cleaned_identifier,
    normal_identifier,
    plan_identifier_fixes,
    refused_character,
    visible,
)

logger = logging.getLogger("chatdock.storage")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    apply: Callable[[sqlite3.Connection], None] | None = None  # work SQL alone cannot do, after the statements


INDEX_BATCH = 50_000


def _index_history(conn: sqlite3.Connection) -> None:
    """Index the messages stored before search existed, a batch at a time, saying how far it got."""
    total = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    last, done = 0, 0
    while True:
        found = conn.execute(
            "SELECT max(seq), count(*) FROM (SELECT seq FROM messages WHERE seq > ? ORDER BY seq LIMIT ?)",
            (last, INDEX_BATCH),
        ).fetchone()
        if not found[1]:
            break
        conn.execute(
            "INSERT INTO messages_fts (rowid, content, owner) SELECT seq, content, 'k' || contact_pk FROM messages "
            "WHERE seq > ? AND seq <= ?",
            (last, found[0]),
        )
        last, done = found[0], done + found[1]
        if total > INDEX_BATCH:
            logger.warning("building the search index: %s of %s messages", f"{done:,}", f"{total:,}")


def _normalize_identifiers(conn: sqlite3.Connection) -> None:
    """Store contact and agent ids in NFC. Two contacts whose ids become one are both left as they are and
    logged (the application decides whether they are one person), never merged here."""
    conn.create_function("nfc", 1, lambda text: None if text is None else normal_identifier(text), deterministic=True)
    for table in ("messages", "chats"):
        conn.execute(f"UPDATE {table} SET agent_id = nfc(agent_id) WHERE agent_id IS NOT nfc(agent_id)")
    contacts = conn.execute("SELECT id, org_id, external_id FROM contacts").fetchall()
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
        conn.execute("UPDATE contacts SET external_id = ? WHERE id = ?", (normal, key))
        taken.discard((org, external))
        taken.add((org, normal))


def _clean_identifiers(conn: sqlite3.Connection) -> None:
    """Take out of stored ids the characters a person cannot see (validation.cleaned_identifier), now refused.
    A look-alike of an id that names another contact is left as it is and logged (the application decides
    whether they are one person), never merged here; see validation.IdentifierFix for every case."""
    conn.create_function("unclean", 1, lambda text: cleaned_identifier(text) != text, deterministic=True)
    unclean = [
        StoredIdentifier(*row)
        for row in conn.execute(
            "SELECT i.org_id, o.name, i.identifier, i.contact_pk, c.external_id, i.created_us FROM identifiers i "
            "JOIN contacts c ON c.id = i.contact_pk JOIN orgs o ON o.id = i.org_id WHERE unclean(i.identifier)"
        )
    ]
    owners: dict[tuple[int, str], int] = {}
    for stored in unclean:
        clean = cleaned_identifier(stored.identifier)
        found = conn.execute(
            "SELECT contact_pk FROM identifiers WHERE org_id = ? AND identifier = ?", (stored.org_key, clean)
        ).fetchone()
        if found is not None:
            owners[(stored.org_key, clean)] = found[0]
    for fix in plan_identifier_fixes(unclean, owners):
        stored = fix.stored
        if fix.action == "rename":
            conn.execute(
                "UPDATE identifiers SET identifier = ? WHERE org_id = ? AND identifier = ?",
                (fix.clean, stored.org_key, stored.identifier),
            )
        elif fix.action == "drop":
            conn.execute(
                "DELETE FROM identifiers WHERE org_id = ? AND identifier = ?", (stored.org_key, stored.identifier)
            )
        if fix.action in ("rename", "drop") and stored.own:
            conn.execute("UPDATE contacts SET external_id = ? WHERE id = ?", (fix.clean, stored.contact_key))
        logger.log(logging.WARNING if fix.warning else logging.INFO, "%s", fix.describe())
    for table in ("messages", "chats"):
        for (agent,) in conn.execute(f"SELECT DISTINCT agent_id FROM {table} WHERE agent_id IS NOT NULL").fetchall():
            clean = cleaned_agent(agent)
            if clean != agent:
                changed = conn.execute(f"UPDATE {table} SET agent_id = ? WHERE agent_id = ?", (clean, agent)).rowcount
                logger.info("agent id %s of %s %s is now %s", visible(agent), changed, table, visible(clean))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema",
        (
            """CREATE TABLE orgs (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                created_us INTEGER NOT NULL
            )""",
            """CREATE TABLE contacts (
                id INTEGER PRIMARY KEY,
                org_id INTEGER NOT NULL REFERENCES orgs(id),
                external_id TEXT NOT NULL,
                created_us INTEGER NOT NULL,
                last_active_us INTEGER NOT NULL,
                UNIQUE (org_id, external_id)
            )""",
            "CREATE INDEX contacts_recent ON contacts(org_id, last_active_us)",
            """CREATE TABLE channels (
                id TEXT PRIMARY KEY,
                contact_pk INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
                name TEXT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('custom', 'provider')),
                UNIQUE (contact_pk, name)
            )""",
            """CREATE TABLE chats (
                id TEXT PRIMARY KEY,
                org_id INTEGER NOT NULL REFERENCES orgs(id),
                contact_pk INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
                agent_id TEXT,
                status TEXT NOT NULL CHECK (status IN ('RUNNING', 'COMPLETED', 'FAILED', 'CANCELED')),
                created_us INTEGER NOT NULL,
                updated_us INTEGER NOT NULL
            )""",
            "CREATE INDEX chats_contact ON chats(contact_pk, created_us)",
            """CREATE TABLE chat_channels (
                chat_id TEXT NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
                channel_id TEXT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
                attached_us INTEGER NOT NULL,
                PRIMARY KEY (chat_id, channel_id)
            ) WITHOUT ROWID""",
            "CREATE INDEX chat_channels_channel ON chat_channels(channel_id)",
            """CREATE TABLE messages (
                seq INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                org_id INTEGER NOT NULL REFERENCES orgs(id),
                contact_pk INTEGER NOT NULL REFERENCES contacts(id),
                agent_id TEXT,
                chat_id TEXT REFERENCES chats(id),
                channel TEXT NOT NULL,
                role TEXT NOT NULL,
                content TEXT NOT NULL,
                parts TEXT,
                metadata TEXT,
                provider_message_id TEXT,
                created_us INTEGER NOT NULL
            )""",
            "CREATE INDEX messages_contact ON messages(contact_pk, created_us)",
            "CREATE INDEX messages_agent ON messages(contact_pk, agent_id, created_us) WHERE agent_id IS NOT NULL",
            "CREATE INDEX messages_chat ON messages(chat_id, created_us) WHERE chat_id IS NOT NULL",
            """CREATE UNIQUE INDEX messages_provider ON messages(org_id, channel, provider_message_id)
                WHERE provider_message_id IS NOT NULL""",
            """CREATE TABLE api_keys (
                id INTEGER PRIMARY KEY,
                prefix TEXT NOT NULL UNIQUE,
                name TEXT,
                org_id INTEGER NOT NULL REFERENCES orgs(id),
                hash TEXT NOT NULL,
                created_us INTEGER NOT NULL,
                last_used_us INTEGER,
                revoked_us INTEGER
            )""",
            "CREATE UNIQUE INDEX api_keys_live_name ON api_keys(name) WHERE name IS NOT NULL AND revoked_us IS NULL",
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
            # Every identifier of a contact, its own contact_id included: what a caller's id resolves through.
            """CREATE TABLE identifiers (
                org_id INTEGER NOT NULL REFERENCES orgs(id),
                identifier TEXT NOT NULL,
                contact_pk INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
                created_us INTEGER NOT NULL,
                PRIMARY KEY (org_id, identifier)
            ) WITHOUT ROWID""",
            "CREATE INDEX identifiers_contact ON identifiers(contact_pk, created_us)",
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
        _index_history,
    ),
    Migration(7, "identifiers without characters a person cannot see", (), _clean_identifiers),
)


def applied_versions(conn: sqlite3.Connection) -> set[int]:
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply every migration not yet recorded; return the versions this call applied.

    `conn` must be in autocommit mode (`isolation_level=None`) with a busy timeout set.
    """
    conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_us INTEGER NOT NULL
        )"""
    )
    applied: list[int] = []
    for migration in MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if migration.version not in applied_versions(conn):
                for statement in migration.statements:
                    conn.execute(statement)
                if migration.apply is not None:
                    migration.apply(conn)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_us) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time_ns() // 1000),
                )
                applied.append(migration.version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return applied
