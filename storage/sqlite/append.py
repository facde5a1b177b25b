"""SQLite's append: one message stored by the writer (writer.py), inside the caller's savepoint, through the
shared steps (storage/sql/writes.py). PostgreSQL's counterpart is one statement, `chatdock_append`."""

from __future__ import annotations

from .. import rows
from ..errors import chat_not_found, message_id_taken
from ..models import AppendedMessage, appended
from ..records import MessageRecord
from ..sql import writes
from ..sql.ops import Ops, Undo, count, one, value
from ..sql.writes import ChangeLog
from .queries import DIALECT


def insert_message(
    org: str, record: MessageRecord, now_us: int, log: ChangeLog, importing: bool = False
) -> Ops[AppendedMessage]:
    """Store one message; an already stored one (same id, or channel and provider id) comes back instead.

    `importing` keeps history as it was: the chat's updated_at is not moved to now.
    """
    m = record.message
    created_us = rows.to_us(m.created_at)
    # the usual case, a known organization, contact and channel, asked for directly (the shared steps below,
    # which create what is new, cost a generator each on the hot path)
    org_key = yield value(writes.ORG_KEY, org)
    if org_key is None:
        org_key = yield from writes.org_pk(org, now_us)
    found = yield one(DIALECT.resolve, org_key, m.contact_id)
    if found is not None:
        contact_key, appeared, contact_id, version = found[0], False, found[1], found[2]
    else:
        contact_key, appeared, contact_id = yield from writes.contact_pk(DIALECT, org_key, m.contact_id, created_us)
        version = yield value("SELECT version FROM contacts WHERE id = ?", contact_key)  # where it starts counting
    if contact_id != m.contact_id:  # an alias: the message belongs to, and is named by, its contact
        m = m.model_copy(update={"contact_id": contact_id})
    channel = yield value(writes.CHANNEL_ID, contact_key, m.channel)
    if channel is None:
        channel = yield from writes.channel_id(contact_key, m.channel)
    if m.chat_id is not None:
        owner = yield value("SELECT contact_pk FROM chats WHERE id = ? AND org_id = ?", m.chat_id, org_key)
        if owner is None or owner != contact_key:
            raise chat_not_found(m.chat_id, record.message.contact_id)
        yield from writes.attach(m.chat_id, channel, created_us if importing else now_us)
        if not importing:
            yield count("UPDATE chats SET updated_us = ? WHERE id = ?", now_us, m.chat_id)
    inserted = yield count(
        "INSERT INTO messages (id, org_id, contact_pk, agent_id, chat_id, channel, role, content, parts, metadata,"
        " provider_message_id, created_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
    )
    if not inserted:
        existing = None
        if record.provider_message_id is not None:
            existing = yield from writes.find_message(
                "m.org_id = ? AND m.channel = ? AND m.provider_message_id = ?",
                org_key,
                m.channel,
                record.provider_message_id,
            )
        if existing is None:
            existing = yield from writes.find_message("m.org_id = ? AND m.id = ?", org_key, m.id)
        if existing is None:
            raise message_id_taken(m.id)
        raise Undo(appended(existing, True))
    # one more change of the contact's messages (the version read above, in this transaction: one writer)
    yield count(
        "UPDATE contacts SET last_active_us = max(last_active_us, ?), version = version + 1 WHERE id = ?",
        created_us,
        contact_key,
    )
    aliases = [] if appeared else (yield from writes.aliases_of(contact_key, contact_id))
    yield from log.record(org, contact_id, "appeared" if appeared else "updated", aliases)
    return appended(m, False, version + 1)
