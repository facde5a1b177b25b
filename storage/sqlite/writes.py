"""What runs on the writer thread, inside the caller's savepoint (see writer.py): each function takes the
writing connection and records that are already checked (storage/records.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..changes import Change, ChangeKind
from ..errors import ChatdockError, chat_id_taken, chat_not_found, message_id_taken
from ..ids import uuid7
from ..models import AppendedMessage, Chat, Message, channel_kind
from ..records import ChatRecord, MessageRecord
from . import rows
from .queries import CHAT_SELECT, CONTACT, MESSAGE_WITH_CONTACT
from .writer import Undo

T = TypeVar("T")

KEEP_CHANGES = 10_000  # the feed keeps this many changes; a follower further behind re-reads everything
PRUNE_EVERY = 1_024


def org_pk(conn: sqlite3.Connection, org: str, now_us: int) -> int:
    """The organization's key, created on first use."""
    row = conn.execute("SELECT id FROM orgs WHERE name = ?", (org,)).fetchone()
    if row is not None:
        return int(row[0])
    cursor = conn.execute("INSERT INTO orgs (name, created_us) VALUES (?, ?)", (org, now_us))
    return int(cursor.lastrowid or 0)


def existing_contact_pk(conn: sqlite3.Connection, org: str, contact_id: str) -> int | None:
    row = conn.execute(f"SELECT {CONTACT}", (org, contact_id)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def contact_pk(conn: sqlite3.Connection, org_key: int, contact_id: str, now_us: int) -> tuple[int, bool]:
    """The contact's key, created on first use; and whether it was created now."""
    row = conn.execute("SELECT id FROM contacts WHERE org_id = ? AND external_id = ?", (org_key, contact_id)).fetchone()
    if row is not None:
        return int(row[0]), False
    cursor = conn.execute(
        "INSERT INTO contacts (org_id, external_id, created_us, last_active_us) VALUES (?, ?, ?, ?)",
        (org_key, contact_id, now_us, now_us),
    )
    return int(cursor.lastrowid or 0), True


class ChangeLog:
    """The changes one write job makes: each goes into the feed (`changes`) inside the job's transaction, and
    is announced to this process once the transaction commits. A contact is recorded once per job."""

    __slots__ = ("_seen", "changes", "origin")

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.changes: list[Change] = []
        self._seen: set[tuple[str, str]] = set()

    def record(self, conn: sqlite3.Connection, org: str, contact_id: str, kind: ChangeKind = "updated") -> None:
        if kind == "updated" and (org, contact_id) in self._seen:
            return
        self._seen.add((org, contact_id))
        cursor = conn.execute(
            "INSERT INTO changes (org, contact_id, kind, origin) VALUES (?, ?, ?, ?)",
            (org, contact_id, kind, self.origin),
        )
        seq = int(cursor.lastrowid or 0)
        if seq % PRUNE_EVERY == 0:
            conn.execute("DELETE FROM changes WHERE seq <= ?", (seq - KEEP_CHANGES,))
        self.changes.append(Change(org, contact_id, kind))


def channel_id(conn: sqlite3.Connection, contact_key: int, name: str, wanted: str | None = None) -> str:
    """The contact's channel of that name, created on first use (with the `wanted` id when it is still free)."""
    row = conn.execute("SELECT id FROM channels WHERE contact_pk = ? AND name = ?", (contact_key, name)).fetchone()
    if row is not None:
        return str(row[0])
    free = wanted is not None and conn.execute("SELECT 1 FROM channels WHERE id = ?", (wanted,)).fetchone() is None
    new_id = wanted if free and wanted is not None else uuid7()
    conn.execute(
        "INSERT INTO channels (id, contact_pk, name, kind) VALUES (?, ?, ?, ?)",
        (new_id, contact_key, name, channel_kind(name)),
    )
    return new_id


def attach(conn: sqlite3.Connection, chat_id: str, channel: str, now_us: int) -> None:
    conn.execute(
        "INSERT INTO chat_channels (chat_id, channel_id, attached_us) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (chat_id, channel, now_us),
    )


def chat_by_id(conn: sqlite3.Connection, chat_id: str) -> Chat:
    row = conn.execute(CHAT_SELECT + " WHERE ch.id = ?", (chat_id,)).fetchone()
    assert row is not None
    return rows.chat(row)


def find_message(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> Message | None:
    row = conn.execute(MESSAGE_WITH_CONTACT + where, params).fetchone()
    return None if row is None else rows.message(row, row[10])


def insert_message(
    conn: sqlite3.Connection, org: str, record: MessageRecord, now_us: int, log: ChangeLog, importing: bool = False
) -> AppendedMessage:
    """Store one message; an already stored one (same id, or channel and provider id) comes back instead.

    `importing` keeps history as it was: the chat's updated_at is not moved to now.
    """
    m = record.message
    created_us = rows.to_us(m.created_at)
    org_key = org_pk(conn, org, now_us)
    contact_key, appeared = contact_pk(conn, org_key, m.contact_id, created_us)
    channel = channel_id(conn, contact_key, m.channel)
    if m.chat_id is not None:
        owner = conn.execute("SELECT contact_pk FROM chats WHERE id = ? AND org_id = ?", (m.chat_id, org_key))
        found = owner.fetchone()
        if found is None or found[0] != contact_key:
            raise chat_not_found(m.chat_id, m.contact_id)
        attach(conn, m.chat_id, channel, created_us if importing else now_us)
        if not importing:
            conn.execute("UPDATE chats SET updated_us = ? WHERE id = ?", (now_us, m.chat_id))
    cursor = conn.execute(
        "INSERT INTO messages (id, org_id, contact_pk, agent_id, chat_id, channel, role, content, parts, metadata,"
        " provider_message_id, created_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (
            m.id,
            org_key,
            contact_key,
            m.agent_id,
            m.chat_id,
            m.channel,
            m.role,
            m.content,
            rows.parts_json(m.parts, record.plain),
            rows.metadata_json(m.metadata),
            record.provider_message_id,
            created_us,
        ),
    )
    if cursor.rowcount == 0:
        existing = None
        if record.provider_message_id is not None:
            existing = find_message(
                conn,
                "m.org_id = ? AND m.channel = ? AND m.provider_message_id = ?",
                (org_key, m.channel, record.provider_message_id),
            )
        if existing is None:
            existing = find_message(conn, "m.org_id = ? AND m.id = ?", (org_key, m.id))
        if existing is None:
            raise message_id_taken(m.id)
        raise Undo(AppendedMessage(**existing.model_dump(), deduplicated=True))
    conn.execute("UPDATE contacts SET last_active_us = max(last_active_us, ?) WHERE id = ?", (created_us, contact_key))
    log.record(conn, org, m.contact_id, "appeared" if appeared else "updated")
    return AppendedMessage(**m.model_dump(), deduplicated=False)


def insert_chat(conn: sqlite3.Connection, org: str, record: ChatRecord, log: ChangeLog) -> bool:
    """Store one chat with its channels; False when it is already there (same id, same contact)."""
    created_us = rows.to_us(record.created_at)
    org_key = org_pk(conn, org, created_us)
    contact_key, appeared = contact_pk(conn, org_key, record.contact_id, created_us)
    if appeared:
        log.record(conn, org, record.contact_id, "appeared")
    row = conn.execute("SELECT org_id, contact_pk FROM chats WHERE id = ?", (record.id,)).fetchone()
    if row is not None:
        if tuple(row) != (org_key, contact_key):
            raise chat_id_taken(record.id)
        return False
    conn.execute(
        "INSERT INTO chats (id, org_id, contact_pk, agent_id, status, created_us, updated_us)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (record.id, org_key, contact_key, record.agent_id, record.status, created_us, rows.to_us(record.updated_at)),
    )
    for offset, (wanted, name) in enumerate(record.channels):
        # attached one microsecond apart, so the channels keep their listed order
        attach(conn, record.id, channel_id(conn, contact_key, name, wanted), created_us + offset)
    return True


def one(conn: sqlite3.Connection, write: Callable[..., T], *args: Any) -> T:
    """One record of a batch in its own savepoint: an `Undo` rolls it back and returns its value, an error
    rolls it back and propagates, so the other records of the batch stay."""
    conn.execute("SAVEPOINT one")
    try:
        return write(conn, *args)
    except Undo as undo:
        conn.execute("ROLLBACK TO one")
        return undo.value  # type: ignore[return-value]
    except ChatdockError:
        conn.execute("ROLLBACK TO one")
        raise
    finally:
        conn.execute("RELEASE one")
