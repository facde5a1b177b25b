"""The tables and indexes both engines keep, declared once; each engine's schema (sqlite/schema.py,
postgres/schema.py) takes them, in its own words for a key, a number and a text, into its migrations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Words:
    key: str  # a generated integer primary key
    integer: str  # a 64-bit integer
    text: str
    keyed_table: str  # what ends a table whose primary key is all it is looked up by
    chat_columns: str  # an engine's own columns of a chat, after its id
    message_columns: str  # an engine's own columns of a message, after the shared ones
    index_order: str  # what orders a contact's messages of the same microsecond in its index


def tables(w: Words) -> dict[str, str]:
    """Each table's and index's statement, by name."""
    key, integer, text = w.key, w.integer, w.text
    return {
        "orgs": f"""CREATE TABLE orgs (
            id {key},
            name {text} NOT NULL UNIQUE,
            created_us {integer} NOT NULL
        )""",
        "contacts": f"""CREATE TABLE contacts (
            id {key},
            org_id {integer} NOT NULL REFERENCES orgs(id),
            external_id {text} NOT NULL,
            created_us {integer} NOT NULL,
            last_active_us {integer} NOT NULL,
            UNIQUE (org_id, external_id)
        )""",
        "contacts_recent": "CREATE INDEX contacts_recent ON contacts(org_id, last_active_us)",
        # every identifier of a contact, its own contact_id included: what a caller's id resolves through
        "identifiers": f"""CREATE TABLE identifiers (
            org_id {integer} NOT NULL REFERENCES orgs(id),
            identifier {text} NOT NULL,
            contact_pk {integer} NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
            created_us {integer} NOT NULL,
            PRIMARY KEY (org_id, identifier)
        ){w.keyed_table}""",
        "identifiers_contact": "CREATE INDEX identifiers_contact ON identifiers(contact_pk, created_us)",
        "channels": f"""CREATE TABLE channels (
            id {text} PRIMARY KEY,
            contact_pk {integer} NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
            name {text} NOT NULL,
            kind {text} NOT NULL CHECK (kind IN ('custom', 'provider')),
            UNIQUE (contact_pk, name)
        )""",
        "chats": f"""CREATE TABLE chats (
            id {text} PRIMARY KEY,{w.chat_columns}
            org_id {integer} NOT NULL REFERENCES orgs(id),
            contact_pk {integer} NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
            agent_id {text},
            status {text} NOT NULL CHECK (status IN ('RUNNING', 'COMPLETED', 'FAILED', 'CANCELED')),
            created_us {integer} NOT NULL,
            updated_us {integer} NOT NULL
        )""",
        "chats_contact": "CREATE INDEX chats_contact ON chats(contact_pk, created_us)",
        "chat_channels": f"""CREATE TABLE chat_channels (
            chat_id {text} NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
            channel_id {text} NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
            attached_us {integer} NOT NULL,
            PRIMARY KEY (chat_id, channel_id)
        ){w.keyed_table}""",
        "chat_channels_channel": "CREATE INDEX chat_channels_channel ON chat_channels(channel_id)",
        "messages": f"""CREATE TABLE messages (
            seq {key},
            id {text} NOT NULL UNIQUE,
            org_id {integer} NOT NULL REFERENCES orgs(id),
            contact_pk {integer} NOT NULL REFERENCES contacts(id),
            agent_id {text},
            chat_id {text} REFERENCES chats(id),
            channel {text} NOT NULL,
            role {text} NOT NULL,
            content {text} NOT NULL,
            parts {text},
            metadata {text},
            provider_message_id {text},
            created_us {integer} NOT NULL{w.message_columns}
        )""",
        "messages_contact": f"CREATE INDEX messages_contact ON messages(contact_pk, created_us{w.index_order})",
        "messages_agent": (
            "CREATE INDEX messages_agent ON messages(contact_pk, agent_id, created_us) WHERE agent_id IS NOT NULL"
        ),
        "messages_chat": "CREATE INDEX messages_chat ON messages(chat_id, created_us) WHERE chat_id IS NOT NULL",
        "messages_provider": """CREATE UNIQUE INDEX messages_provider ON messages(org_id, channel, provider_message_id)
            WHERE provider_message_id IS NOT NULL""",
        "api_keys": f"""CREATE TABLE api_keys (
            id {key},
            prefix {text} NOT NULL UNIQUE,
            name {text},
            org_id {integer} NOT NULL REFERENCES orgs(id),
            hash {text} NOT NULL,
            created_us {integer} NOT NULL,
            last_used_us {integer},
            revoked_us {integer}
        )""",
        # a key that may only read (`keys create --read-only`): its bearer is refused every write
        "api_keys.read_only": f"ALTER TABLE api_keys ADD COLUMN read_only {integer} NOT NULL DEFAULT 0",
        # migration 1's: a live key's name unique across organizations, until api_keys_org_live_name took its place
        "api_keys_live_name": (
            "CREATE UNIQUE INDEX api_keys_live_name ON api_keys(name) WHERE name IS NOT NULL AND revoked_us IS NULL"
        ),
        # a live key's name is unique within its organization: two organizations may each have a key "prod"
        "api_keys_org_live_name": (
            "CREATE UNIQUE INDEX api_keys_org_live_name ON api_keys(org_id, name) "
            "WHERE name IS NOT NULL AND revoked_us IS NULL"
        ),
        # the first answer of each link_contacts made under an Idempotency-Key (REST), which its retries get;
        # it goes with its contact (moved by a merge, deleted when the contact is forgotten)
        "link_answers": f"""CREATE TABLE link_answers (
            org_id {integer} NOT NULL REFERENCES orgs(id),
            key {text} NOT NULL,
            contact_pk {integer} NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
            requested {text} NOT NULL,
            identifier {text} NOT NULL,
            answer {text} NOT NULL,
            created_us {integer} NOT NULL,
            PRIMARY KEY (org_id, key)
        ){w.keyed_table}""",
        "link_answers_contact": "CREATE INDEX link_answers_contact ON link_answers(contact_pk)",
        # a channel's id that a merge retired (two channels of one name became one): what it became, so that a
        # caller holding the old id (a call in progress) still posts into the chat (Store.post_as_contact)
        "retired_channels": f"""CREATE TABLE retired_channels (
            id {text} PRIMARY KEY,
            channel_id {text} NOT NULL REFERENCES channels(id) ON DELETE CASCADE
        ){w.keyed_table}""",
        "retired_channels_channel": "CREATE INDEX retired_channels_channel ON retired_channels(channel_id)",
        # random values of the database's own, made once by a migration (a list cursor's key: cursor.py)
        "secrets": f"""CREATE TABLE secrets (
            name {text} PRIMARY KEY,
            value {text} NOT NULL
        ){w.keyed_table}""",
    }
