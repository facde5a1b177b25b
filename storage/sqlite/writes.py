"""What runs on the writer thread, inside the caller's savepoint (see writer.py): each function takes the
writing connection and records that are already checked (storage/records.py)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .. import changes, rows
from ..changes import Change, ChangeKind
from ..errors import ChatdockError, chat_id_taken, chat_not_found, message_id_taken, own_identifier
from ..ids import uuid7
from ..models import AppendedMessage, Chat, ContactInfo, LinkResult, Message, appended, channel_kind
from ..records import AliasRecord, ChatRecord, MessageRecord
from .queries import CHAT_SELECT, CONTACT, MESSAGE_WITH_CONTACT, ORG
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


def contact_pk(conn: sqlite3.Connection, org_key: int, identifier: str, now_us: int) -> tuple[int, bool, str]:
    """The key of the contact `identifier` names (its contact_id or an alias), created on first use; whether it
    was created now; and the contact's own contact_id."""
    row = conn.execute(
        "SELECT i.contact_pk, c.external_id FROM identifiers i JOIN contacts c ON c.id = i.contact_pk "
        "WHERE i.org_id = ? AND i.identifier = ?",
        (org_key, identifier),
    ).fetchone()
    if row is not None:
        return int(row[0]), False, str(row[1])
    cursor = conn.execute(
        "INSERT INTO contacts (org_id, external_id, created_us, last_active_us) VALUES (?, ?, ?, ?)",
        (org_key, identifier, now_us, now_us),
    )
    key = int(cursor.lastrowid or 0)
    conn.execute(
        "INSERT INTO identifiers (org_id, identifier, contact_pk, created_us) VALUES (?, ?, ?, ?)",
        (org_key, identifier, key, now_us),
    )
    return key, True, identifier


def aliases_of(conn: sqlite3.Connection, contact_key: int, contact_id: str) -> list[str]:
    """A contact's identifiers other than its own contact_id, oldest first."""
    found = conn.execute(
        "SELECT identifier FROM identifiers WHERE contact_pk = ? ORDER BY created_us, identifier", (contact_key,)
    )
    return [row[0] for row in found if row[0] != contact_id]


class ChangeLog(changes.ChangeLog):
    """Each change goes into the feed (the `changes` table) inside the write job's transaction."""

    __slots__ = ()

    def record(
        self,
        conn: sqlite3.Connection,
        org: str,
        contact_id: str,
        kind: ChangeKind = "updated",
        aliases: Sequence[str] = (),
    ) -> None:
        if not self.first(org, contact_id, kind):
            return
        cursor = conn.execute(
            "INSERT INTO changes (org, contact_id, kind, origin, aliases) VALUES (?, ?, ?, ?, ?)",
            (org, contact_id, kind, self.origin, json.dumps(list(aliases)) if aliases else None),
        )
        seq = int(cursor.lastrowid or 0)
        if seq % PRUNE_EVERY == 0:
            conn.execute("DELETE FROM changes WHERE seq <= ?", (seq - KEEP_CHANGES,))
        self.changes.append(Change(org, contact_id, kind, tuple(aliases)))


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
    contact_key, appeared, contact_id = contact_pk(conn, org_key, m.contact_id, created_us)
    if contact_id != m.contact_id:  # an alias: the message belongs to, and is named by, its contact
        m = m.model_copy(update={"contact_id": contact_id})
    channel = channel_id(conn, contact_key, m.channel)
    if m.chat_id is not None:
        owner = conn.execute("SELECT contact_pk FROM chats WHERE id = ? AND org_id = ?", (m.chat_id, org_key))
        found = owner.fetchone()
        if found is None or found[0] != contact_key:
            raise chat_not_found(m.chat_id, record.message.contact_id)
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
        raise Undo(appended(existing, True))
    conn.execute("UPDATE contacts SET last_active_us = max(last_active_us, ?) WHERE id = ?", (created_us, contact_key))
    aliases = () if appeared else aliases_of(conn, contact_key, contact_id)
    log.record(conn, org, contact_id, "appeared" if appeared else "updated", aliases)
    return appended(m, False)


def insert_chat(conn: sqlite3.Connection, org: str, record: ChatRecord, log: ChangeLog) -> bool:
    """Store one chat with its channels; False when it is already there (same id, same contact)."""
    created_us = rows.to_us(record.created_at)
    org_key = org_pk(conn, org, created_us)
    contact_key, appeared, contact_id = contact_pk(conn, org_key, record.contact_id, created_us)
    if appeared:
        log.record(conn, org, contact_id, "appeared")
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


def contact_info(conn: sqlite3.Connection, contact_key: int) -> ContactInfo:
    row = conn.execute(
        "SELECT external_id, created_us, last_active_us, "
        "(SELECT count(*) FROM messages WHERE contact_pk = c.id), "
        "(SELECT count(*) FROM chats WHERE contact_pk = c.id), "
        "(SELECT min(created_us) FROM messages WHERE contact_pk = c.id) FROM contacts c WHERE id = ?",
        (contact_key,),
    ).fetchone()
    contact_id, created_us, last_active_us, messages, chats, first_message_us = row
    channels = [
        r[0] for r in conn.execute("SELECT name FROM channels WHERE contact_pk = ? ORDER BY name", (contact_key,))
    ]
    return ContactInfo(
        contact_id=contact_id,
        aliases=aliases_of(conn, contact_key, contact_id),
        channels=channels,
        message_count=messages,
        chat_count=chats,
        first_seen_at=rows.from_us(min(created_us, first_message_us or created_us)),
        last_active_at=rows.from_us(last_active_us),
    )


def link(
    conn: sqlite3.Connection, org: str, contact_id: str, identifier: str, now_us: int, log: ChangeLog
) -> LinkResult:
    """Make `identifier` name the contact of `contact_id`; if it names another contact, merge that one into it."""
    org_key = org_pk(conn, org, now_us)
    keeper, created, keeper_id = contact_pk(conn, org_key, contact_id, now_us)
    found = conn.execute(
        "SELECT contact_pk FROM identifiers WHERE org_id = ? AND identifier = ?", (org_key, identifier)
    ).fetchone()
    messages = chats = 0
    if found is None:
        conn.execute(
            "INSERT INTO identifiers (org_id, identifier, contact_pk, created_us) VALUES (?, ?, ?, ?)",
            (org_key, identifier, keeper, now_us),
        )
    elif found[0] != keeper:
        messages, chats = _merge(conn, org, keeper, int(found[0]), log)
    if created or found is None or found[0] != keeper:
        log.record(conn, org, keeper_id, "appeared" if created else "updated", aliases_of(conn, keeper, keeper_id))
    return LinkResult(**contact_info(conn, keeper).model_dump(), merged_messages=messages, merged_chats=chats)


def _merge(conn: sqlite3.Connection, org: str, keeper: int, merged: int, log: ChangeLog) -> tuple[int, int]:
    """Move everything of contact `merged` into `keeper`, in the caller's transaction; (messages, chats) moved."""
    merged_id = conn.execute("SELECT external_id FROM contacts WHERE id = ?", (merged,)).fetchone()[0]
    log.record(conn, org, merged_id, "forgotten", aliases_of(conn, merged, merged_id))
    for channel, name in conn.execute("SELECT id, name FROM channels WHERE contact_pk = ?", (merged,)).fetchall():
        same = conn.execute("SELECT id FROM channels WHERE contact_pk = ? AND name = ?", (keeper, name)).fetchone()
        if same is None:
            conn.execute("UPDATE channels SET contact_pk = ? WHERE id = ?", (keeper, channel))
            continue
        # two channels of one name become one: the chats that used either now use the keeper's
        conn.execute(
            "INSERT INTO chat_channels (chat_id, channel_id, attached_us) SELECT chat_id, ?, attached_us "
            "FROM chat_channels WHERE channel_id = ? ON CONFLICT DO NOTHING",
            (same[0], channel),
        )
        conn.execute("DELETE FROM channels WHERE id = ?", (channel,))
    messages = conn.execute("UPDATE messages SET contact_pk = ? WHERE contact_pk = ?", (keeper, merged)).rowcount
    chats = conn.execute("UPDATE chats SET contact_pk = ? WHERE contact_pk = ?", (keeper, merged)).rowcount
    conn.execute("UPDATE identifiers SET contact_pk = ? WHERE contact_pk = ?", (keeper, merged))
    conn.execute(
        "UPDATE contacts SET last_active_us = max(last_active_us, (SELECT last_active_us FROM contacts WHERE id = ?)),"
        " created_us = min(created_us, (SELECT created_us FROM contacts WHERE id = ?)) WHERE id = ?",
        (merged, merged, keeper),
    )
    conn.execute("DELETE FROM contacts WHERE id = ?", (merged,))
    return messages, chats


def unlink(conn: sqlite3.Connection, org: str, identifier: str, log: ChangeLog) -> ContactInfo | None:
    """Detach an alias from its contact; None when no contact of the organization has it."""
    found = conn.execute(
        f"SELECT i.contact_pk, c.external_id FROM identifiers i JOIN contacts c ON c.id = i.contact_pk "
        f"WHERE i.org_id = {ORG} AND i.identifier = ?",
        (org, identifier),
    ).fetchone()
    if found is None:
        return None
    contact_key, contact_id = found
    if contact_id == identifier:
        raise own_identifier(identifier)
    conn.execute("DELETE FROM identifiers WHERE contact_pk = ? AND identifier = ?", (contact_key, identifier))
    log.record(conn, org, contact_id, "updated", [*aliases_of(conn, contact_key, contact_id), identifier])
    return contact_info(conn, contact_key)


def import_alias(conn: sqlite3.Connection, org: str, record: AliasRecord, log: ChangeLog) -> bool:
    """Link an imported alias as it was (its own time kept); False when it already names that contact."""
    created_us = rows.to_us(record.created_at)
    org_key = org_pk(conn, org, created_us)
    keeper, _, _ = contact_pk(conn, org_key, record.contact_id, created_us)
    found = conn.execute(
        "SELECT contact_pk FROM identifiers WHERE org_id = ? AND identifier = ?", (org_key, record.identifier)
    ).fetchone()
    if found is not None and found[0] == keeper:
        return False
    link(conn, org, record.contact_id, record.identifier, created_us, log)
    return True
