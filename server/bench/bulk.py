"""The bench's ordinary contacts and their messages, built at bulk speed.

The store appends about 3,300 messages a second, each checked and announced, so ten million would take most of
an hour. The bench's bulk of data needs none of that: it is written here through each driver's batch path
(sqlite3's executemany in large transactions, asyncpg's COPY), row for row what the store writes when it
appends them (an organization, its contacts with their own identifier and channels, the messages with their
search index, kept by the schema's own triggers and generated column). Message `index` belongs to contact
`index % contacts`, was sent `index` microseconds after the first, on WhatsApp when odd and by voice when even.
The few contacts the rows single out (a conversation, a person with aliases, a rare word) still go through the
store, after this (main.fill).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator

import asyncpg

from chatdock.storage.ids import uuid7
from chatdock.storage.models import channel_kind
from chatdock.storage.sqlite import driver
from chatdock.storage.sqlite.indexing import index_pending

ORG = "bench"
BATCH = 100_000  # rows per transaction (SQLite) or COPY (PostgreSQL)


def contact_id(contact: int) -> str:
    return f"+3160{contact:07d}"


def content(index: int, contact: int) -> str:
    return f"message {index} of contact {contact}: hello there"


def channel(index: int) -> str:
    return "whatsapp" if index % 2 else "voice"


def role(index: int) -> str:
    return "user" if index % 2 else "assistant"


def _last_index(contact: int, messages: int, contacts: int) -> int:
    """The index of the contact's newest message (every contact below `messages` has at least one)."""
    return contact + contacts * ((messages - 1 - contact) // contacts)


def _channels_of(contact: int, messages: int, contacts: int) -> list[str]:
    """The channels a contact's messages use: its first two messages show both parities there are."""
    return sorted({channel(index) for index in (contact, contact + contacts) if index < messages})


def _contact_rows(org_key: int, start_us: int, messages: int, contacts: int) -> list[tuple[int, str, int, int]]:
    """contacts (org_id, external_id, created_us, last_active_us), in contact order."""
    return [
        (org_key, contact_id(c), start_us + c, start_us + _last_index(c, messages, contacts)) for c in range(contacts)
    ]


def _identifier_rows(org_key: int, keys: list[int], start_us: int) -> list[tuple[int, str, int, int]]:
    """identifiers (org_id, identifier, contact_pk, created_us): each contact's own contact_id."""
    return [(org_key, contact_id(c), key, start_us + c) for c, key in enumerate(keys)]


def _channel_rows(keys: list[int], messages: int) -> list[tuple[str, int, str, str]]:
    """channels (id, contact_pk, name, kind): the ones each contact's messages use."""
    return [
        (uuid7(), key, name, channel_kind(name))
        for c, key in enumerate(keys)
        for name in _channels_of(c, messages, len(keys))
    ]


def _message_rows(
    org_key: int, keys: list[int], start_us: int, first: int, last: int, contacts: int
) -> Iterator[tuple[str, int, int, str, str, str, int]]:
    for index in range(first, last):
        contact = index % contacts
        yield (uuid7(), org_key, keys[contact], channel(index), role(index), content(index, contact), start_us + index)


def build_sqlite(path: str, messages: int, contacts: int, progress: Callable[[int], None]) -> None:
    """The bulk into the SQLite file at `path`, whose schema the store has made (one transaction per batch)."""
    contacts = min(contacts, messages)
    start_us = time.time_ns() // 1000 - messages - 1
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # a throwaway file: a crash only loses the bench's data
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB of pages while the indexes grow
        conn.execute("BEGIN")
        conn.execute("INSERT INTO orgs (name, created_us) VALUES (?, ?) ON CONFLICT DO NOTHING", (ORG, start_us))
        org_key = int(conn.execute("SELECT id FROM orgs WHERE name = ?", (ORG,)).fetchone()[0])
        conn.executemany(
            "INSERT INTO contacts (org_id, external_id, created_us, last_active_us) VALUES (?, ?, ?, ?)",
            _contact_rows(org_key, start_us, messages, contacts),
        )
        found = conn.execute("SELECT external_id, id FROM contacts WHERE org_id = ?", (org_key,))
        by_id = dict(found.fetchall())
        keys = [int(by_id[contact_id(c)]) for c in range(contacts)]
        conn.executemany(
            "INSERT INTO identifiers (org_id, identifier, contact_pk, created_us) VALUES (?, ?, ?, ?)",
            _identifier_rows(org_key, keys, start_us),
        )
        conn.executemany(
            "INSERT INTO channels (id, contact_pk, name, kind) VALUES (?, ?, ?, ?)", _channel_rows(keys, messages)
        )
        conn.execute("COMMIT")
        for first in range(0, messages, BATCH):
            last = min(messages, first + BATCH)
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO messages (id, org_id, contact_pk, channel, role, content, created_us)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                _message_rows(org_key, keys, start_us, first, last, contacts),
            )
            driver.run(conn, index_pending(BATCH))  # searchable at once, as the store leaves its appends
            conn.execute("COMMIT")
            progress(last)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


async def build_postgres(url: str, messages: int, contacts: int, progress: Callable[[int], None]) -> None:
    """The bulk into the PostgreSQL database at `url`, whose schema the store has made (COPY per batch)."""
    contacts = min(contacts, messages)
    start_us = time.time_ns() // 1000 - messages - 1
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET synchronous_commit = off")
        org_key = await conn.fetchval(
            "INSERT INTO orgs (name, created_us) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name"
            " RETURNING id",
            ORG,
            start_us,
        )
        await conn.copy_records_to_table(
            "contacts",
            records=_contact_rows(org_key, start_us, messages, contacts),
            columns=["org_id", "external_id", "created_us", "last_active_us"],
        )
        found = await conn.fetch("SELECT external_id, id FROM contacts WHERE org_id = $1", org_key)
        by_id = {row[0]: row[1] for row in found}
        keys = [int(by_id[contact_id(c)]) for c in range(contacts)]
        await conn.copy_records_to_table(
            "identifiers",
            records=_identifier_rows(org_key, keys, start_us),
            columns=["org_id", "identifier", "contact_pk", "created_us"],
        )
        await conn.copy_records_to_table(
            "channels",
            records=_channel_rows(keys, messages),
            columns=["id", "contact_pk", "name", "kind"],
        )
        for first in range(0, messages, BATCH):
            last = min(messages, first + BATCH)
            await conn.copy_records_to_table(
                "messages",
                records=list(_message_rows(org_key, keys, start_us, first, last, contacts)),
                columns=["id", "org_id", "contact_pk", "channel", "role", "content", "created_us"],
            )
            progress(last)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
