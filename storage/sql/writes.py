"""The writes other than appends, written once for both engines (ops.py): organizations, contacts and their
identifiers, channels, chats, identity (link, unlink, merge), forget, deletes and API keys. Each runs inside
the caller's transaction; records are already checked (storage/records.py).

Rows another transaction may create at the same moment (an organization, a contact, a channel) are created
with ON CONFLICT DO NOTHING and read again: never a look-up-then-insert race on PostgreSQL (on SQLite the one
writer makes it moot). Rows a write is about to move or delete are read `FOR UPDATE` where the dialect locks.
A write that moves or deletes a contact's identifiers (link and its merge, unlink, forget) first locks the
contact (`locked_contacts`, in the order of their keys) and reads the identifier again once it holds the lock,
so two such writes on one contact take turns, and the second finds what the first left, as if it had come after
it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import TypeVar

from .. import changes, rows
from ..changes import Change, ChangeKind
from ..errors import (
    ChatdockError,
    Unavailable,
    chat_id_taken,
    key_name_ambiguous,
    key_name_taken,
    key_used_elsewhere,
    own_identifier,
)
from ..ids import uuid7
from ..models import ApiKeyInfo, Chat, ChatStatus, ContactInfo, ForgetResult, LinkResult, Message, channel_kind
from ..records import AliasRecord, ChatRecord
from .dialect import Dialect
from .ops import Ops, Undo, count, one, value
from .ops import rows as all_rows
from .queries import KEY_SELECT, MESSAGE_COLUMNS, MESSAGE_WITH_CONTACT, ORG, chat_select

T = TypeVar("T")

VERSION_STARTS = 2**52  # a new contact's version starts below this: exact as a JSON number, far from 64 bits' end


class ChangeLog(changes.ChangeLog):
    """The changes one write makes, each written into the engine's feed inside the write's transaction
    (`write`, per engine: a row of SQLite's `changes` table, a PostgreSQL NOTIFY)."""

    __slots__ = ()

    def record(self, org: str, contact_id: str, kind: ChangeKind = "updated", aliases: Sequence[str] = ()) -> Ops[None]:
        if not self.first(org, contact_id, kind, aliases):
            return
        change = Change(org, contact_id, kind, tuple(aliases))
        yield from self.write(change)
        self.changes.append(change)

    def write(self, change: Change) -> Ops[None]:
        raise NotImplementedError

    def written(self, change: Change) -> None:
        """A change a statement of the engine's own already wrote into the feed (PostgreSQL's
        `chatdock_append`, one per stored message): only to be announced here."""
        self.changes.append(change)


def savepoint(write: Ops[object]) -> Ops[object]:
    """One record of a batch in its own savepoint: an `Undo` rolls it back and returns its value, an error
    rolls it back and propagates, so the other records of the batch stay."""
    yield count("SAVEPOINT one")
    try:
        result = yield from write
    except Undo as undo:
        yield count("ROLLBACK TO SAVEPOINT one")
        yield count("RELEASE SAVEPOINT one")
        return undo.value
    except ChatdockError:
        yield count("ROLLBACK TO SAVEPOINT one")
        yield count("RELEASE SAVEPOINT one")
        raise
    yield count("RELEASE SAVEPOINT one")
    return result


ORG_KEY = "SELECT id FROM orgs WHERE name = ?"
CHANNEL_ID = "SELECT id FROM channels WHERE contact_pk = ? AND name = ?"


def org_pk(org: str, now_us: int) -> Ops[int]:
    """The organization's key, created on first use."""
    key = yield value(ORG_KEY, org)
    if key is None:
        yield count("INSERT INTO orgs (name, created_us) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", org, now_us)
        key = yield value(ORG_KEY, org)
    return int(key)


def existing_contact_pk(org: str, identifier: str) -> Ops[int | None]:
    key = yield value(f"SELECT contact_pk FROM identifiers WHERE org_id = {ORG} AND identifier = ?", org, identifier)
    return None if key is None else int(key)


CONTACT_TURNS = 20  # looks at an identifier's contact before a contact_pk gives up (each met another write)


def first_version() -> int:
    """Where a new contact starts counting the changes of its messages (`contacts.version`): at random, so that
    a contact forgotten and created again under the same contact_id does not count through the same numbers
    (a version names one state of one contact: Store._joined and newest.py compare them). PostgreSQL's
    `chatdock_append` creates contacts with the column's default, the same (its migration 5)."""
    return secrets.randbelow(VERSION_STARTS)


def contact_pk(d: Dialect, org_key: int, identifier: str, now_us: int) -> Ops[tuple[int, bool, str]]:
    """The key of the contact `identifier` names (its contact_id or an alias), created on first use; whether it
    was created now; and the contact's own contact_id.

    Each turn of the loop but the last met a write of another transaction (PostgreSQL): the contact it found
    or made was forgotten, merged away or left without the identifier meanwhile, so it looks again. Turns
    without end would be an identifier whose contact row is gone (damage): said so after CONTACT_TURNS."""
    for _ in range(CONTACT_TURNS):
        row = yield one(d.resolve, org_key, identifier)
        if row is not None and row[0] is not None:
            return int(row[0]), False, str(row[1])
        key = yield value(
            "INSERT INTO contacts (org_id, external_id, created_us, last_active_us, version) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (org_id, external_id) DO NOTHING RETURNING id",
            org_key,
            identifier,
            now_us,
            now_us,
            first_version(),
        )
        if key is None:  # created by another transaction meanwhile (or left without its identifier, see below)
            yield count(
                "INSERT INTO identifiers (org_id, identifier, contact_pk, created_us) SELECT org_id, external_id, "
                "id, ? FROM contacts WHERE org_id = ? AND external_id = ? ON CONFLICT DO NOTHING",
                now_us,
                org_key,
                identifier,
            )
            continue  # it names that contact now (or, forgotten meanwhile, none: made here on the next turn)
        claimed = yield count(
            "INSERT INTO identifiers (org_id, identifier, contact_pk, created_us) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            org_key,
            identifier,
            key,
            now_us,
        )
        if claimed:
            return int(key), True, identifier
        # a link on another replica made it an alias meanwhile (PostgreSQL): it names that contact (or, unlinked
        # or forgotten since, none)
        yield count("DELETE FROM contacts WHERE id = ?", key)
    raise Unavailable(
        f"the identifier {identifier!r} names a contact that is not in the database (it is damaged); writes to it "
        "are refused: `chatdock export` saves what can be read"
    )


def locked_contact(d: Dialect, org: str, identifier: str) -> Ops[tuple[int, str] | None]:
    """The contact `identifier` names (its key and own contact_id), its row locked until the commit where the
    dialect locks; None when no contact of the organization has the identifier (`locked_contacts` of one)."""
    return (yield from locked_contacts(d, org, (identifier,)))[0]


def locked_contacts(d: Dialect, org: str, identifiers: Sequence[str]) -> Ops[list[tuple[int, str] | None]]:
    """The contacts `identifiers` name (each its key and own contact_id, or None when no contact of the
    organization has it), their rows locked until the commit where the dialect locks.

    A write that moves or deletes a contact's identifiers locks the contacts this way first, in the order of
    their keys, so that two writes on the same two contacts (link(a, b) and link(b, a)) do not each hold one and
    wait for the other. The identifiers are read again once the locks are held: while this write waited, a
    contact may have been forgotten or merged away, or an identifier unlinked or moved to another contact; then
    they are looked up again, as they would be by a write that came after. (No other write moves an identifier
    off a contact while that one is locked.)"""

    def lock(key: int) -> Ops[str | None]:
        own = yield value(f"SELECT external_id FROM contacts WHERE id = ?{d.for_update}", key)
        return None if own is None else str(own)

    held = yield from _held_still(org, identifiers, lock)
    return [None if found is None or found[1] is None else (found[0], found[1]) for found in held]


def _held_still(
    org: str, identifiers: Sequence[str], read: Callable[[int], Ops[T | None]]
) -> Ops[list[tuple[int, T | None] | None]]:
    """`read` of each contact `identifiers` name, in the order of their keys, as (its key, what was read) per
    identifier, once every identifier names the same contact before and after the reads (a merge or a forget
    committed between them makes it look again); None for one that names none. What was read is None for an
    identifier left dangling by damage (no contact row)."""
    keys = yield from _contact_keys(org, identifiers)
    while True:
        found: dict[int, T | None] = {}
        for key in sorted({key for key in keys if key is not None}):
            found[key] = yield from read(key)
        again = yield from _contact_keys(org, identifiers)
        if again == keys:
            return [None if key is None else (key, found[key]) for key in keys]
        keys = again


def _contact_keys(org: str, identifiers: Sequence[str]) -> Ops[list[int | None]]:
    keys = []
    for identifier in identifiers:
        keys.append((yield from existing_contact_pk(org, identifier)))
    return keys


def aliases_of(contact_key: int, contact_id: str) -> Ops[list[str]]:
    """A contact's identifiers other than its own contact_id, oldest first."""
    found = yield all_rows(
        "SELECT identifier FROM identifiers WHERE contact_pk = ? ORDER BY created_us, identifier", contact_key
    )
    return [row[0] for row in found if row[0] != contact_id]


def channel_id(contact_key: int, name: str, wanted: str | None = None) -> Ops[str]:
    """The contact's channel of that name, created on first use (with the `wanted` id when it is still free)."""
    found = yield value(CHANNEL_ID, contact_key, name)
    if found is not None:
        return str(found)
    free = wanted is not None and (yield value("SELECT 1 FROM channels WHERE id = ?", wanted)) is None
    yield count(
        "INSERT INTO channels (id, contact_pk, name, kind) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        wanted if free and wanted is not None else uuid7(),
        contact_key,
        name,
        channel_kind(name),
    )
    return str((yield value(CHANNEL_ID, contact_key, name)))


def attach(chat_id: str, channel: str, at_us: int) -> Ops[None]:
    yield count(
        "INSERT INTO chat_channels (chat_id, channel_id, attached_us) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        chat_id,
        channel,
        at_us,
    )


def chat_by_id(d: Dialect, chat_id: str) -> Ops[Chat]:
    row = yield one(chat_select(d) + " WHERE ch.id = ?", chat_id)
    assert row is not None
    return rows.chat(row)


def find_message(where: str, *params: object) -> Ops[Message | None]:
    row = yield one(MESSAGE_WITH_CONTACT + where, *params)
    return None if row is None else rows.message(row, row[10])


def insert_chat(d: Dialect, org: str, record: ChatRecord, log: ChangeLog) -> Ops[bool]:
    """Store one chat with its channels; False when it is already there (same id, same contact)."""
    created_us = rows.to_us(record.created_at)
    org_key = yield from org_pk(org, created_us)
    contact_key, appeared, contact_id = yield from contact_pk(d, org_key, record.contact_id, created_us)
    if appeared:
        yield from log.record(org, contact_id, "appeared")
    inserted = yield value(
        "INSERT INTO chats (id, org_id, contact_pk, agent_id, status, created_us, updated_us)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING RETURNING id",
        record.id,
        org_key,
        contact_key,
        record.agent_id,
        record.status,
        created_us,
        rows.to_us(record.updated_at),
    )
    if inserted is None:
        row = yield one("SELECT org_id, contact_pk FROM chats WHERE id = ?", record.id)
        if row is None or tuple(row) != (org_key, contact_key):
            raise chat_id_taken(record.id)
        return False
    for offset, (wanted, name) in enumerate(record.channels):
        # attached one microsecond apart, so the channels keep their listed order
        channel = yield from channel_id(contact_key, name, wanted)
        yield from attach(record.id, channel, created_us + offset)
    if not appeared:  # a new chat changes its contact (its chats, perhaps its channels): listeners are told
        yield from log.record(org, contact_id, aliases=(yield from aliases_of(contact_key, contact_id)))
    return True


def new_chat(d: Dialect, org: str, record: ChatRecord, log: ChangeLog) -> Ops[Chat]:
    yield from insert_chat(d, org, record, log)
    return (yield from chat_by_id(d, record.id))


def set_chat_status(
    d: Dialect, org: str, chat_id: str, status: ChatStatus, now_us: int, log: ChangeLog
) -> Ops[Chat | None]:
    """Set a chat's status; None when the organization has no such chat. Setting the status it has changes
    nothing (not its `updated_at`) and tells no listener: a repeated call is idempotent, as the tool says."""
    update = (
        f"UPDATE chats SET status = ?, updated_us = ? WHERE id = ? AND org_id = {ORG} AND status <> ? "
        "RETURNING contact_pk"
    )
    contact_key = yield value(update, status, now_us, chat_id, org, status)
    if contact_key is None:  # no such chat, or it has the status: read it locked, as nothing may change it now
        found = yield value(f"SELECT status FROM chats WHERE id = ? AND org_id = {ORG}{d.for_update}", chat_id, org)
        if found is None:
            return None
        if found == status:
            return (yield from chat_by_id(d, chat_id))
        # another write set another status after the update looked (PostgreSQL): this one, later, has the last
        # word, and its answer is the status it set (it answered the other's)
        contact_key = yield value(update, status, now_us, chat_id, org, status)
    chat = yield from chat_by_id(d, chat_id)
    yield from log.record(org, chat.contact_id, aliases=(yield from aliases_of(contact_key, chat.contact_id)))
    return chat


def delete_message(org: str, message_id: str, log: ChangeLog) -> Ops[Message | None]:
    row = yield one(
        # RETURNING names the table's columns unqualified
        f"DELETE FROM messages WHERE id = ? AND org_id = {ORG} RETURNING {MESSAGE_COLUMNS.replace('m.', '')}, "
        "(SELECT c.external_id FROM contacts c WHERE c.id = contact_pk), contact_pk",
        message_id,
        org,
    )
    if row is None:
        return None
    contact_id = row[10]
    if contact_id is None:
        # (PostgreSQL) a merge moved the message to a contact it made, after this statement's snapshot: the
        # delete found the moved row, its look-up did not find the new contact; a statement of its own does
        contact_id = yield value("SELECT external_id FROM contacts WHERE id = ?", row[11])
    yield from changed(row[11])
    yield from log.record(org, contact_id, aliases=(yield from aliases_of(row[11], contact_id)))
    return rows.message(row, contact_id)


def changed(contact_key: int) -> Ops[None]:
    """Count one more change of the contact's messages (`contacts.version`): a delete, a merge. An append
    counts its own in its statement of the contact (SQLite's append.py, PostgreSQL's `chatdock_append`)."""
    yield count("UPDATE contacts SET version = version + 1 WHERE id = ?", contact_key)


def contact_info(contact_key: int) -> Ops[ContactInfo]:
    """A contact this write has locked (`locked_contact`), so it is there."""
    info = yield from stored_contact(contact_key)
    assert info is not None
    return info


def stored_contact(contact_key: int) -> Ops[ContactInfo | None]:
    """A contact as `get_contact` shows it; None when it is not there (any more)."""
    row = yield one(
        "SELECT external_id, created_us, last_active_us, "
        "(SELECT count(*) FROM messages WHERE contact_pk = c.id), "
        "(SELECT count(*) FROM chats WHERE contact_pk = c.id), "
        "(SELECT min(created_us) FROM messages WHERE contact_pk = c.id) FROM contacts c WHERE id = ?",
        contact_key,
    )
    if row is None:
        return None
    contact_id, created_us, last_active_us, messages, chats, first_message_us = row
    channels = yield all_rows("SELECT name FROM channels WHERE contact_pk = ? ORDER BY name", contact_key)
    return ContactInfo(
        contact_id=contact_id,
        aliases=(yield from aliases_of(contact_key, contact_id)),
        channels=[r[0] for r in channels],
        message_count=messages,
        chat_count=chats,
        first_seen_at=rows.from_us(min(created_us, first_message_us or created_us)),
        last_active_at=rows.from_us(last_active_us),
    )


def contact(org: str, contact_id: str) -> Ops[ContactInfo | None]:
    """The contact `contact_id` names, read without a lock, each statement a read of its own that sees what was
    committed before it (SQLBackend._read_ops), so a merge or a forget committed between the contact's row and
    its aliases would leave a view of neither state (the contact, none of its aliases): the identifier is looked
    up again after the read, which stands only if it still names that contact, and is read again otherwise."""
    held = (yield from _held_still(org, (contact_id,), stored_contact))[0]
    return None if held is None else held[1]


def link(
    d: Dialect, org: str, contact_id: str, identifier: str, now_us: int, log: ChangeLog, key: str | None = None
) -> Ops[tuple[LinkResult, bool]]:
    """Make `identifier` name the contact of `contact_id`; if it names another contact, merge that one into it.
    Under an Idempotency-Key `key`, the first answer is kept (`_first_link_answer`) and a retry gets it. With the
    answer, whether this call merged two contacts (a retry given the first answer did not: the audit log's)."""
    org_key = yield from org_pk(org, now_us)
    if key is not None:
        first = yield from _first_link_answer(org_key, key, contact_id, identifier)
        if first is not None:
            return first, False
    # the keeper's row is locked, and the row of the contact `identifier` names, if another, before its identifier
    # is claimed: a merge, unlink or forget of either waits for this link, or this link for it (then finds
    # what it left)
    found, _ = yield from locked_contacts(d, org, (contact_id, identifier))
    created = False
    while found is None:  # unknown: made here (or by another write meanwhile), then locked as any other
        _, created, _ = yield from contact_pk(d, org_key, contact_id, now_us)
        found, _ = yield from locked_contacts(d, org, (contact_id, identifier))
    keeper, keeper_id = found
    owner, claimed = yield from d.claim_identifier(org_key, identifier, keeper, now_us)
    messages = chats = 0
    if owner != keeper:
        messages, chats = yield from merge_into(d, org, keeper, owner, log)
    if created or claimed or owner != keeper:
        aliases = yield from aliases_of(keeper, keeper_id)
        yield from log.record(org, keeper_id, "appeared" if created else "updated", aliases)
    info = yield from contact_info(keeper)
    answer = LinkResult(**info.model_dump(), merged_messages=messages, merged_chats=chats)
    if key is not None:
        kept = yield count(
            "INSERT INTO link_answers (org_id, key, contact_pk, requested, identifier, answer, created_us) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            org_key,
            key,
            keeper,
            contact_id,
            identifier,
            answer.model_dump_json(),
            now_us,
        )
        if not kept:  # the same request, on another replica, kept its answer first: this one linked nothing more
            first = yield from _first_link_answer(org_key, key, contact_id, identifier)
            assert first is not None
            return first, False
    return answer, owner != keeper


def _first_link_answer(org_key: int, key: str, contact_id: str, identifier: str) -> Ops[LinkResult | None]:
    """The answer kept for a link under `key`; None when none was made under it. The key with another request
    (another contact or identifier, as sent) is refused."""
    first = yield one(
        "SELECT requested, identifier, answer FROM link_answers WHERE org_id = ? AND key = ?", org_key, key
    )
    if first is None:
        return None
    if (first[0], first[1]) != (contact_id, identifier):
        raise key_used_elsewhere(key)
    return LinkResult.model_validate_json(first[2])


def merge_into(d: Dialect, org: str, keeper: int, merged: int, log: ChangeLog) -> Ops[tuple[int, int]]:
    """Move everything of contact `merged` into `keeper`, in the caller's transaction; (messages, chats) moved."""
    merged_id = yield value(f"SELECT external_id FROM contacts WHERE id = ?{d.for_update}", merged)
    yield from log.record(org, merged_id, "forgotten", (yield from aliases_of(merged, merged_id)))
    for channel, name in (yield all_rows("SELECT id, name FROM channels WHERE contact_pk = ?", merged)):
        same = yield value("SELECT id FROM channels WHERE contact_pk = ? AND name = ?", keeper, name)
        if same is None:
            yield count("UPDATE channels SET contact_pk = ? WHERE id = ?", keeper, channel)
            continue
        # two channels of one name become one: the chats that used either now use the keeper's
        yield count(
            "INSERT INTO chat_channels (chat_id, channel_id, attached_us) SELECT chat_id, ?, attached_us "
            "FROM chat_channels WHERE channel_id = ? ON CONFLICT DO NOTHING",
            same,
            channel,
        )
        # its id, and those it stood for after earlier merges, now stand for the keeper's channel
        yield count("UPDATE retired_channels SET channel_id = ? WHERE channel_id = ?", same, channel)
        yield count("INSERT INTO retired_channels (id, channel_id) VALUES (?, ?)", channel, same)
        yield count("DELETE FROM channels WHERE id = ?", channel)
    messages = yield count("UPDATE messages SET contact_pk = ? WHERE contact_pk = ?", keeper, merged)
    chats = yield count("UPDATE chats SET contact_pk = ? WHERE contact_pk = ?", keeper, merged)
    yield count("UPDATE identifiers SET contact_pk = ? WHERE contact_pk = ?", keeper, merged)
    yield count("UPDATE link_answers SET contact_pk = ? WHERE contact_pk = ?", keeper, merged)
    yield count(
        f"UPDATE contacts SET last_active_us = {d.greatest}(last_active_us, "
        "(SELECT last_active_us FROM contacts WHERE id = ?)), "
        f"created_us = {d.least}(created_us, (SELECT created_us FROM contacts WHERE id = ?)), "
        "version = version + 1 WHERE id = ?",  # its messages changed (see `changed`)
        merged,
        merged,
        keeper,
    )
    yield count("DELETE FROM contacts WHERE id = ?", merged)
    return messages, chats


def unlink(d: Dialect, org: str, identifier: str, log: ChangeLog, of: str | None = None) -> Ops[ContactInfo | None]:
    """Detach an alias from its contact; None when no contact of the organization has it (any more: a merge
    that ran meanwhile leaves it an alias of the kept contact, which it is detached from), or, with `of`, when
    the contact `of` names is not the one that has it (checked under the contact's lock: an alias moved to
    another contact meanwhile is not detached from that one)."""
    found = yield from locked_contact(d, org, identifier)
    if found is None:
        return None
    contact_key, contact_id = found
    if of is not None and (yield from existing_contact_pk(org, of)) != contact_key:
        return None
    if contact_id == identifier:
        raise own_identifier(identifier)
    yield count("DELETE FROM identifiers WHERE contact_pk = ? AND identifier = ?", contact_key, identifier)
    aliases = [*(yield from aliases_of(contact_key, contact_id)), identifier]
    yield from log.record(org, contact_id, "updated", aliases)
    return (yield from contact_info(contact_key))


def import_alias(d: Dialect, org: str, record: AliasRecord, log: ChangeLog) -> Ops[bool]:
    """Link an imported alias as it was (its own time kept); False when it already names that contact."""
    created_us = rows.to_us(record.created_at)
    org_key = yield from org_pk(org, created_us)
    keeper, _, _ = yield from contact_pk(d, org_key, record.contact_id, created_us)
    owner = yield value(
        "SELECT contact_pk FROM identifiers WHERE org_id = ? AND identifier = ?", org_key, record.identifier
    )
    if owner == keeper:
        return False
    yield from link(d, org, record.contact_id, record.identifier, created_us, log)
    return True


def forget(d: Dialect, org: str, contact_id: str, log: ChangeLog) -> Ops[ForgetResult]:
    """Delete a contact and all it holds. An identifier no contact has (never had, or forgotten meanwhile by
    another write) forgets nothing; one merged into another contact meanwhile forgets that one."""
    found = yield from locked_contact(d, org, contact_id)
    if found is None:
        return ForgetResult(contact_id=contact_id, deleted_messages=0, deleted_chats=0)
    contact_key, own = found
    aliases = yield from aliases_of(contact_key, own)
    messages = yield count("DELETE FROM messages WHERE contact_pk = ?", contact_key)
    chats = yield count("DELETE FROM chats WHERE contact_pk = ?", contact_key)
    yield count("DELETE FROM channels WHERE contact_pk = ?", contact_key)
    identifiers = yield count("DELETE FROM identifiers WHERE contact_pk = ?", contact_key)
    yield count("DELETE FROM contacts WHERE id = ?", contact_key)
    yield from log.record(org, own, "forgotten", aliases)
    return ForgetResult(contact_id=own, deleted_messages=messages, deleted_chats=chats, deleted_identifiers=identifiers)


# --- API keys ---


def keys(where: str, *params: object) -> Ops[list[ApiKeyInfo]]:
    found = yield all_rows(f"{KEY_SELECT} WHERE {where} ORDER BY k.id", *params)
    return [rows.key_info(row) for row in found]


def insert_api_key(
    org: str, prefix: str, name: str | None, key_hash: str, read_only: bool, now_us: int
) -> Ops[ApiKeyInfo]:
    org_key = yield from org_pk(org, now_us)
    inserted = yield value(
        "INSERT INTO api_keys (prefix, name, org_id, hash, created_us, read_only) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING RETURNING id",
        prefix,
        name,
        org_key,
        key_hash,
        now_us,
        int(read_only),
    )
    if inserted is None:  # the prefix is random: what is taken is the name of a live key
        raise key_name_taken(org, name)
    return (yield from keys("k.prefix = ?", prefix))[0]


def revoke_api_key(prefix_or_name: str, org: str | None, now_us: int) -> Ops[ApiKeyInfo | None]:
    """Revoke the live key of that prefix or name (of `org` only, when given); None when there is none."""
    where = "(k.prefix = ? OR k.name = ?) AND k.revoked_us IS NULL" + ("" if org is None else " AND o.name = ?")
    live = yield from keys(where, prefix_or_name, prefix_or_name, *(() if org is None else (org,)))
    if not live:
        return None
    if len(live) > 1:  # a name that live keys of several organizations have (a prefix is one key's)
        raise key_name_ambiguous(prefix_or_name, [key.org for key in live])
    yield count("UPDATE api_keys SET revoked_us = ? WHERE prefix = ?", now_us, live[0].prefix)
    return (yield from keys("k.prefix = ?", live[0].prefix))[0]


def touch_api_key(prefix: str, now_us: int) -> Ops[None]:
    yield count("UPDATE api_keys SET last_used_us = ? WHERE prefix = ?", now_us, prefix)
