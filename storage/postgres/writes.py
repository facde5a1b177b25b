"""The writes other than appends (chats, identity, forget), each inside the caller's transaction on one
connection. Appends are one statement (`chatdock_append`, schema.py), so many share a round trip and a commit.

Rows another transaction may create at the same moment (an organization, a contact, a channel) are created
with ON CONFLICT DO NOTHING and read again: never a look-up-then-insert race.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .. import changes, rows
from ..changes import Change, ChangeKind
from ..errors import chat_id_taken, own_identifier
from ..ids import uuid7
from ..models import Chat, ContactInfo, LinkResult, channel_kind
from ..records import AliasRecord, ChatRecord
from .queries import CHAT_SELECT, ORG
from .schema import CHANNEL, MAX_PAYLOAD

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


async def org_pk(conn: Connection, org: str, now_us: int) -> int:
    """The organization's key, created on first use."""
    key = await conn.fetchval("SELECT id FROM orgs WHERE name = $1", org)
    if key is None:
        await conn.execute(
            "INSERT INTO orgs (name, created_us) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", org, now_us
        )
        key = await conn.fetchval("SELECT id FROM orgs WHERE name = $1", org)
    return int(key)


async def existing_contact_pk(conn: Connection, org: str, identifier: str) -> int | None:
    key = await conn.fetchval(
        f"SELECT contact_pk FROM identifiers WHERE org_id = {ORG} AND identifier = $2", org, identifier
    )
    return None if key is None else int(key)


async def contact_pk(conn: Connection, org_key: int, identifier: str, now_us: int) -> tuple[int, bool, str]:
    """The key of the contact `identifier` names, created on first use; whether it was created now; and the
    contact's own contact_id."""
    select = "SELECT * FROM chatdock_resolve($1, $2)"  # share-locked: no merge deletes it under this write
    row = await conn.fetchrow(select, org_key, identifier)
    if row is not None and row[0] is not None:
        return int(row[0]), False, str(row[1])
    key = await conn.fetchval(
        "INSERT INTO contacts (org_id, external_id, created_us, last_active_us) VALUES ($1, $2, $3, $3) "
        "ON CONFLICT (org_id, external_id) DO NOTHING RETURNING id",
        org_key,
        identifier,
        now_us,
    )
    if key is None:  # created by another transaction meanwhile
        row = await conn.fetchrow(select, org_key, identifier)
        assert row is not None and row[0] is not None
        return int(row[0]), False, str(row[1])
    await conn.execute(
        "INSERT INTO identifiers (org_id, identifier, contact_pk, created_us) VALUES ($1, $2, $3, $4)",
        org_key,
        identifier,
        key,
        now_us,
    )
    return int(key), True, identifier


async def aliases_of(conn: Connection, contact_key: int, contact_id: str) -> list[str]:
    """A contact's identifiers other than its own contact_id, oldest first."""
    found = await conn.fetch(
        "SELECT identifier FROM identifiers WHERE contact_pk = $1 ORDER BY created_us, identifier", contact_key
    )
    return [row[0] for row in found if row[0] != contact_id]


def payload(change: Change, origin: str) -> str:
    """A change as the feed's NOTIFY payload: who, never what; without the aliases when they would not fit
    (`x`: a follower then tells every listener of that organization to read again)."""
    text = json.dumps({"o": change.org, "c": change.contact_id, "k": change.kind, "a": change.aliases, "p": origin})
    if len(text.encode()) > MAX_PAYLOAD:
        text = json.dumps({"o": change.org, "c": change.contact_id, "k": change.kind, "x": True, "p": origin})
    return text


class ChangeLog(changes.ChangeLog):
    """Each change is sent (NOTIFY) inside the write's transaction, so the other replicas hear it at commit."""

    __slots__ = ()

    async def record(
        self,
        conn: Connection,
        org: str,
        contact_id: str,
        kind: ChangeKind = "updated",
        aliases: Sequence[str] = (),
    ) -> None:
        if not self.first(org, contact_id, kind):
            return
        change = Change(org, contact_id, kind, tuple(aliases))
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload(change, self.origin))
        self.changes.append(change)


async def channel_id(conn: Connection, contact_key: int, name: str, wanted: str | None = None) -> str:
    """The contact's channel of that name, created on first use (with the `wanted` id when it is still free)."""
    select = "SELECT id FROM channels WHERE contact_pk = $1 AND name = $2"
    found = await conn.fetchval(select, contact_key, name)
    if found is not None:
        return str(found)
    free = wanted is not None and await conn.fetchval("SELECT 1 FROM channels WHERE id = $1", wanted) is None
    await conn.execute(
        "INSERT INTO channels (id, contact_pk, name, kind) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        wanted if free and wanted is not None else uuid7(),
        contact_key,
        name,
        channel_kind(name),
    )
    return str(await conn.fetchval(select, contact_key, name))


async def attach(conn: Connection, chat_id: str, channel: str, at_us: int) -> None:
    await conn.execute(
        "INSERT INTO chat_channels (chat_id, channel_id, attached_us) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        chat_id,
        channel,
        at_us,
    )


async def chat_by_id(conn: Connection, chat_id: str) -> Chat:
    row = await conn.fetchrow(CHAT_SELECT + " WHERE ch.id = $1", chat_id)
    assert row is not None
    return rows.chat(row)


async def insert_chat(conn: Connection, org: str, record: ChatRecord, log: ChangeLog) -> bool:
    """Store one chat with its channels; False when it is already there (same id, same contact)."""
    created_us = rows.to_us(record.created_at)
    org_key = await org_pk(conn, org, created_us)
    contact_key, appeared, contact_id = await contact_pk(conn, org_key, record.contact_id, created_us)
    if appeared:
        await log.record(conn, org, contact_id, "appeared")
    inserted = await conn.fetchval(
        "INSERT INTO chats (id, org_id, contact_pk, agent_id, status, created_us, updated_us)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING RETURNING seq",
        record.id,
        org_key,
        contact_key,
        record.agent_id,
        record.status,
        created_us,
        rows.to_us(record.updated_at),
    )
    if inserted is None:
        row = await conn.fetchrow("SELECT org_id, contact_pk FROM chats WHERE id = $1", record.id)
        if row is None or tuple(row) != (org_key, contact_key):
            raise chat_id_taken(record.id)
        return False
    for offset, (wanted, name) in enumerate(record.channels):
        # attached one microsecond apart, so the channels keep their listed order
        await attach(conn, record.id, await channel_id(conn, contact_key, name, wanted), created_us + offset)
    return True


async def contact_info(conn: Connection, contact_key: int) -> ContactInfo:
    row = await conn.fetchrow(
        "SELECT external_id, created_us, last_active_us, "
        "(SELECT count(*) FROM messages WHERE contact_pk = c.id), "
        "(SELECT count(*) FROM chats WHERE contact_pk = c.id), "
        "(SELECT min(created_us) FROM messages WHERE contact_pk = c.id) FROM contacts c WHERE id = $1",
        contact_key,
    )
    assert row is not None
    contact_id, created_us, last_active_us, messages, chats, first_message_us = row
    channels = await conn.fetch("SELECT name FROM channels WHERE contact_pk = $1 ORDER BY name", contact_key)
    return ContactInfo(
        contact_id=contact_id,
        aliases=await aliases_of(conn, contact_key, contact_id),
        channels=[r[0] for r in channels],
        message_count=messages,
        chat_count=chats,
        first_seen_at=rows.from_us(min(created_us, first_message_us or created_us)),
        last_active_at=rows.from_us(last_active_us),
    )


async def link(conn: Connection, org: str, contact_id: str, identifier: str, now_us: int, log: ChangeLog) -> LinkResult:
    """Make `identifier` name the contact of `contact_id`; if it names another contact, merge that one into it."""
    org_key = await org_pk(conn, org, now_us)
    while True:
        keeper, created, keeper_id = await contact_pk(conn, org_key, contact_id, now_us)
        # the keeper's row is locked: a concurrent merge of it waits for this one (or merged it away: again)
        if await conn.fetchval("SELECT 1 FROM contacts WHERE id = $1 FOR UPDATE", keeper) is not None:
            break
    claimed = await conn.fetchrow(
        "INSERT INTO identifiers (org_id, identifier, contact_pk, created_us) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (org_id, identifier) DO UPDATE SET org_id = excluded.org_id RETURNING contact_pk, xmax = 0",
        org_key,
        identifier,
        keeper,
        now_us,
    )
    assert claimed is not None
    owner, inserted = claimed
    messages = chats = 0
    if owner != keeper:
        messages, chats = await _merge(conn, org, keeper, int(owner), log)
    if created or inserted or owner != keeper:
        aliases = await aliases_of(conn, keeper, keeper_id)
        await log.record(conn, org, keeper_id, "appeared" if created else "updated", aliases)
    info = await contact_info(conn, keeper)
    return LinkResult(**info.model_dump(), merged_messages=messages, merged_chats=chats)


async def _merge(conn: Connection, org: str, keeper: int, merged: int, log: ChangeLog) -> tuple[int, int]:
    """Move everything of contact `merged` into `keeper`, in the caller's transaction; (messages, chats) moved."""
    merged_id = await conn.fetchval("SELECT external_id FROM contacts WHERE id = $1 FOR UPDATE", merged)
    await log.record(conn, org, merged_id, "forgotten", await aliases_of(conn, merged, merged_id))
    for channel, name in await conn.fetch("SELECT id, name FROM channels WHERE contact_pk = $1", merged):
        same = await conn.fetchval("SELECT id FROM channels WHERE contact_pk = $1 AND name = $2", keeper, name)
        if same is None:
            await conn.execute("UPDATE channels SET contact_pk = $1 WHERE id = $2", keeper, channel)
            continue
        # two channels of one name become one: the chats that used either now use the keeper's
        await conn.execute(
            "INSERT INTO chat_channels (chat_id, channel_id, attached_us) SELECT chat_id, $1, attached_us "
            "FROM chat_channels WHERE channel_id = $2 ON CONFLICT DO NOTHING",
            same,
            channel,
        )
        await conn.execute("DELETE FROM channels WHERE id = $1", channel)
    messages = _count(await conn.execute("UPDATE messages SET contact_pk = $1 WHERE contact_pk = $2", keeper, merged))
    chats = _count(await conn.execute("UPDATE chats SET contact_pk = $1 WHERE contact_pk = $2", keeper, merged))
    await conn.execute("UPDATE identifiers SET contact_pk = $1 WHERE contact_pk = $2", keeper, merged)
    await conn.execute(
        "UPDATE contacts k SET last_active_us = greatest(k.last_active_us, m.last_active_us), "
        "created_us = least(k.created_us, m.created_us) FROM contacts m WHERE k.id = $1 AND m.id = $2",
        keeper,
        merged,
    )
    await conn.execute("DELETE FROM contacts WHERE id = $1", merged)
    return messages, chats


def _count(status: str) -> int:
    """The row count of a command status (`UPDATE 3`, `DELETE 0`)."""
    return int(status.rsplit(" ", 1)[1])


async def unlink(conn: Connection, org: str, identifier: str, log: ChangeLog) -> ContactInfo | None:
    """Detach an alias from its contact; None when no contact of the organization has it."""
    found = await conn.fetchrow(
        f"SELECT i.contact_pk, c.external_id FROM identifiers i JOIN contacts c ON c.id = i.contact_pk "
        f"WHERE i.org_id = {ORG} AND i.identifier = $2",
        org,
        identifier,
    )
    if found is None:
        return None
    contact_key, contact_id = found
    if contact_id == identifier:
        raise own_identifier(identifier)
    await conn.execute("DELETE FROM identifiers WHERE contact_pk = $1 AND identifier = $2", contact_key, identifier)
    aliases = [*await aliases_of(conn, contact_key, contact_id), identifier]
    await log.record(conn, org, contact_id, "updated", aliases)
    return await contact_info(conn, contact_key)


async def import_alias(conn: Connection, org: str, record: AliasRecord, log: ChangeLog) -> bool:
    """Link an imported alias as it was (its own time kept); False when it already names that contact."""
    created_us = rows.to_us(record.created_at)
    org_key = await org_pk(conn, org, created_us)
    keeper, _, _ = await contact_pk(conn, org_key, record.contact_id, created_us)
    owner = await conn.fetchval(
        "SELECT contact_pk FROM identifiers WHERE org_id = $1 AND identifier = $2", org_key, record.identifier
    )
    if owner == keeper:
        return False
    await link(conn, org, record.contact_id, record.identifier, created_us, log)
    return True


async def forget(conn: Connection, org: str, contact_id: str, log: ChangeLog) -> tuple[str, int, int, int]:
    """Delete a contact and all it holds; (its own contact_id, messages, chats, identifiers) deleted, or
    (contact_id, 0, 0, 0) when there is no such contact."""
    contact_key = await existing_contact_pk(conn, org, contact_id)
    if contact_key is None:
        return contact_id, 0, 0, 0
    own = await conn.fetchval("SELECT external_id FROM contacts WHERE id = $1 FOR UPDATE", contact_key)
    aliases = await aliases_of(conn, contact_key, own)
    messages = _count(await conn.execute("DELETE FROM messages WHERE contact_pk = $1", contact_key))
    chats = _count(await conn.execute("DELETE FROM chats WHERE contact_pk = $1", contact_key))
    await conn.execute("DELETE FROM channels WHERE contact_pk = $1", contact_key)
    identifiers = _count(await conn.execute("DELETE FROM identifiers WHERE contact_pk = $1", contact_key))
    await conn.execute("DELETE FROM contacts WHERE id = $1", contact_key)
    await log.record(conn, org, own, "forgotten", aliases)
    return own, messages, chats, identifiers
