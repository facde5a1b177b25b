"""The PostgreSQL schema, as numbered, named migrations recorded in the database.

Replicas starting together take turns: `migrate` holds an advisory lock for the whole run, and each migration
is one transaction that records itself, so the second replica finds the work done and applies nothing twice.
Times are integer microseconds since 1970 (rows.py), as in the SQLite schema, so both engines read alike.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from ..changes import Change
from ..cursor import CURSOR_SECRET
from ..errors import Unavailable
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
)
from ..sql.ops import Ops, count, rows
from ..sql.tables import Words, tables
from ..sql.writes import VERSION_STARTS, ChangeLog, merge_into
from ..validation import BLANKS, DEFAULT_IGNORABLE, LOOKALIKE_SPACES
from . import driver
from .queries import DIALECT, WORDS

MIGRATION_LOCK = 0x63686174646F636B  # "chatdock": the advisory lock key every replica's migrate takes
LOCK_WAIT = 2.0  # seconds a migration's statement waits for a lock before it lets go and tries again (_apply)
LOCK_PATIENCE = 120.0  # seconds of such tries before the migration gives up

# The change feed's channel (LISTEN/NOTIFY): each payload names an organization and a contact, never content.
CHANNEL = "chatdock_changes"
MAX_PAYLOAD = 7_900  # PostgreSQL refuses a payload of 8,000 bytes or more


APPEND_FUNCTION = r"""
CREATE FUNCTION chatdock_append(batch jsonb, origin text) RETURNS SETOF jsonb LANGUAGE plpgsql AS $fn$
-- Store each message of `batch` in the calling transaction, one outcome (jsonb) per message, in order:
--   {"s": "stored", "c": contact_id, "k": "appeared"|"updated", "a": [aliases]}
--   {"s": "existing", "m": {the stored message}}      same id, or channel and provider id, already stored
--   {"s": "no_chat"}  the chat is not one of the contact's     {"s": "taken"}  the id is another org's
-- Nothing is written for an outcome other than "stored" (checks first, then writes); a copy committed by
-- another transaction meanwhile is caught by the unique constraints (ON CONFLICT) and answered as "existing".
DECLARE
    r jsonb;
    org_key bigint;
    contact_key bigint;
    own text;
    appeared boolean;
    channel_key text;
    chat_owner bigint;
    seq_new bigint;
    now_us bigint;
    created bigint;
    found jsonb;
    aliases jsonb;
    payload text;
BEGIN
    FOR r IN SELECT value FROM jsonb_array_elements(batch) LOOP
        now_us := (r->>'now')::bigint;
        created := (r->>'created')::bigint;
        SELECT id INTO org_key FROM orgs WHERE name = r->>'org';
        found := chatdock_find(org_key, r->>'id', r->>'channel', r->>'provider');
        IF found IS NOT NULL THEN
            RETURN NEXT found;
            CONTINUE;
        END IF;
        SELECT * INTO contact_key, own FROM chatdock_resolve(org_key, r->>'contact');
        IF r->>'chat' IS NOT NULL THEN
            chat_owner := NULL;
            SELECT contact_pk INTO chat_owner FROM chats WHERE id = r->>'chat' AND org_id = org_key;
            IF chat_owner IS NULL OR contact_key IS NULL OR chat_owner <> contact_key THEN
                RETURN NEXT jsonb_build_object('s', 'no_chat');
                CONTINUE;
            END IF;
        END IF;
        IF org_key IS NULL THEN
            INSERT INTO orgs (name, created_us) VALUES (r->>'org', now_us) ON CONFLICT (name) DO NOTHING;
            SELECT id INTO org_key FROM orgs WHERE name = r->>'org';
        END IF;
        appeared := false;
        IF contact_key IS NULL THEN
            INSERT INTO contacts (org_id, external_id, created_us, last_active_us)
                VALUES (org_key, r->>'contact', created, created)
                ON CONFLICT (org_id, external_id) DO NOTHING RETURNING id INTO contact_key;
            IF contact_key IS NOT NULL THEN
                INSERT INTO identifiers (org_id, identifier, contact_pk, created_us)
                    VALUES (org_key, r->>'contact', contact_key, created) ON CONFLICT DO NOTHING;
                appeared := true;
                own := r->>'contact';
            ELSE  -- created by another transaction meanwhile
                SELECT * INTO contact_key, own FROM chatdock_resolve(org_key, r->>'contact');
            END IF;
        END IF;
        SELECT id INTO channel_key FROM channels WHERE contact_pk = contact_key AND name = r->>'channel';
        IF channel_key IS NULL THEN
            INSERT INTO channels (id, contact_pk, name, kind) VALUES (r->>'channel_id', contact_key, r->>'channel',
                r->>'channel_kind')
                ON CONFLICT (contact_pk, name) DO NOTHING;
            SELECT id INTO channel_key FROM channels WHERE contact_pk = contact_key AND name = r->>'channel';
        END IF;
        INSERT INTO messages (id, org_id, contact_pk, agent_id, chat_id, channel, role, content, parts, metadata,
                provider_message_id, created_us)
            VALUES (r->>'id', org_key, contact_key, r->>'agent', r->>'chat', r->>'channel', r->>'role',
                r->>'content', r->>'parts', r->>'metadata', r->>'provider', created)
            ON CONFLICT DO NOTHING RETURNING seq INTO seq_new;
        IF seq_new IS NULL THEN  -- a copy committed meanwhile
            RETURN NEXT coalesce(chatdock_find(org_key, r->>'id', r->>'channel', r->>'provider'),
                jsonb_build_object('s', 'taken'));
            CONTINUE;
        END IF;
        seq_new := NULL;
        IF r->>'chat' IS NOT NULL THEN
            INSERT INTO chat_channels (chat_id, channel_id, attached_us)
                VALUES (r->>'chat', channel_key, CASE WHEN (r->>'importing')::boolean THEN created ELSE now_us END)
                ON CONFLICT DO NOTHING;
            IF NOT (r->>'importing')::boolean THEN
                UPDATE chats SET updated_us = now_us WHERE id = r->>'chat';
            END IF;
        END IF;
        UPDATE contacts SET last_active_us = greatest(last_active_us, created) WHERE id = contact_key;
        aliases := '[]'::jsonb;
        IF NOT appeared THEN
            SELECT coalesce(jsonb_agg(identifier ORDER BY created_us, identifier), '[]'::jsonb) INTO aliases
                FROM identifiers WHERE contact_pk = contact_key AND identifier <> own;
        END IF;
        payload := jsonb_build_object('o', r->>'org', 'c', own, 'k', CASE WHEN appeared THEN 'appeared' ELSE
            'updated' END, 'a', aliases, 'p', origin)::text;
        IF octet_length(payload) > 7900 THEN
            payload := jsonb_build_object('o', r->>'org', 'c', own, 'k', 'updated', 'x', true, 'p', origin)::text;
        END IF;
        PERFORM pg_notify('chatdock_changes', payload);
        RETURN NEXT jsonb_build_object('s', 'stored', 'c', own, 'k', CASE WHEN appeared THEN 'appeared' ELSE
            'updated' END, 'a', aliases);
    END LOOP;
END
$fn$
"""


def _revised(function: str, changes: dict[str, str]) -> str:
    """`function` with each of `changes` made, each found exactly once (a migration states what it changes)."""
    for old, new in changes.items():
        if function.count(old) != 1:
            raise AssertionError(f"not found once in the function: {old!r}")
        function = function.replace(old, new)
    return function


# migration 4: a stored message counts one more change of its contact (`contacts.version`, see
# Store._joined), and its outcome says the count it made: {"s": "stored", ..., "v": version}
APPEND_FUNCTION_4 = _revised(
    APPEND_FUNCTION,
    {
        "CREATE FUNCTION": "CREATE OR REPLACE FUNCTION",
        "    payload text;\n": "    payload text;\n    contact_version bigint;\n",
        "        UPDATE contacts SET last_active_us = greatest(last_active_us, created) WHERE id = contact_key;\n": (
            "        UPDATE contacts SET last_active_us = greatest(last_active_us, created), version = version + 1\n"
            "            WHERE id = contact_key RETURNING version INTO contact_version;\n"
        ),
        "'updated' END, 'a', aliases);": "'updated' END, 'a', aliases, 'v', contact_version);",
        '"a": [aliases]}': '"a": [aliases], "v": the contact\'s version}',
    },
)

# migration 9: a new contact whose identifier a link on another replica claimed meanwhile is not kept without
# it (its message was stored where nothing could read it): the message goes to the contact the link named; and
# a contact an older chatdock left without its identifier gets it back when written to again
APPEND_FUNCTION_9 = _revised(
    APPEND_FUNCTION_4,
    {
        "    contact_version bigint;\n": "    contact_version bigint;\n    claimed integer;\n",
        """                INSERT INTO identifiers (org_id, identifier, contact_pk, created_us)
                    VALUES (org_key, r->>'contact', contact_key, created) ON CONFLICT DO NOTHING;
                appeared := true;
                own := r->>'contact';
            ELSE  -- created by another transaction meanwhile
                SELECT * INTO contact_key, own FROM chatdock_resolve(org_key, r->>'contact');
            END IF;""": """                INSERT INTO identifiers (org_id, identifier, contact_pk, created_us)
                    VALUES (org_key, r->>'contact', contact_key, created) ON CONFLICT DO NOTHING;
                GET DIAGNOSTICS claimed = ROW_COUNT;  -- (FOUND is the name of a variable here)
                IF claimed > 0 THEN
                    appeared := true;
                    own := r->>'contact';
                ELSE  -- claimed meanwhile by a link (another replica): the identifier names that contact
                    DELETE FROM contacts WHERE id = contact_key;
                    SELECT * INTO contact_key, own FROM chatdock_resolve(org_key, r->>'contact');
                END IF;
            ELSE  -- created by another transaction meanwhile (or left without its identifier)
                INSERT INTO identifiers (org_id, identifier, contact_pk, created_us)
                    SELECT org_key, r->>'contact', id, created FROM contacts
                    WHERE org_id = org_key AND external_id = r->>'contact' ON CONFLICT DO NOTHING;
                SELECT * INTO contact_key, own FROM chatdock_resolve(org_key, r->>'contact');
            END IF;""",
    },
)


class _Unheard(ChangeLog):
    """The changes of a migration's step: no one listens while the schema is migrated."""

    def write(self, change: Change) -> Ops[None]:
        return
        yield


def _rejoin_contacts() -> Ops[None]:
    """Contacts an older chatdock left without their identifier (an append on one replica raced a link of the
    same new identifier on another, and stored its message where nothing could read it): each gets its
    identifier back, or, where the link made it another contact's alias, is merged into that contact, as the
    link meant."""
    yield count(
        "INSERT INTO identifiers (org_id, identifier, contact_pk, created_us) "
        "SELECT c.org_id, c.external_id, c.id, c.created_us FROM contacts c "
        "WHERE NOT EXISTS (SELECT 1 FROM identifiers i WHERE i.contact_pk = c.id) ON CONFLICT DO NOTHING"
    )
    orphans = yield rows(
        "SELECT c.id, i.contact_pk, o.name FROM contacts c JOIN orgs o ON o.id = c.org_id "
        "JOIN identifiers i ON i.org_id = c.org_id AND i.identifier = c.external_id "
        "WHERE NOT EXISTS (SELECT 1 FROM identifiers x WHERE x.contact_pk = c.id)"
    )
    for merged, keeper, org in orphans:
        yield from merge_into(DIALECT, org, keeper, merged, _Unheard("migration"))
    if orphans:
        logger.warning(
            "%d contact(s) left without their identifier by a race of an older chatdock were merged "
            "into the contacts their identifiers name",
            len(orphans),
        )


# a stored message as the jsonb the append's outcomes carry (read back by rows.message)
MESSAGE_JSON = (
    "jsonb_build_array(m.id, m.agent_id, m.chat_id, m.channel, m.role, m.content, m.parts, m.metadata, "
    "m.created_us, m.seq, c.external_id)"
)

RESOLVE_FUNCTION = r"""
CREATE FUNCTION chatdock_resolve(org_key bigint, identifier text, OUT contact_key bigint, OUT own text)
LANGUAGE plpgsql AS $fn$
-- The contact an identifier names (its key and own contact_id), share-locked until the transaction ends, so
-- a merge cannot delete it under a write that uses it; one merged away meanwhile is looked up again.
BEGIN
    LOOP
        contact_key := NULL;
        own := NULL;
        IF org_key IS NULL THEN
            RETURN;
        END IF;
        SELECT i.contact_pk, c.external_id INTO contact_key, own FROM identifiers i
            JOIN contacts c ON c.id = i.contact_pk WHERE i.org_id = org_key AND i.identifier = $2;
        IF contact_key IS NULL THEN
            RETURN;
        END IF;
        PERFORM 1 FROM contacts WHERE id = contact_key FOR KEY SHARE;
        IF FOUND THEN
            RETURN;
        END IF;
    END LOOP;
END
$fn$
"""

FIND_FUNCTION = r"""
CREATE FUNCTION chatdock_find(org_key bigint, message_id text, channel text, provider text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $fn$
-- The outcome for a message already stored: the same provider id on the channel, or the same id, in this
-- organization ({"s": "existing", "m": ...}); the id in another organization ({"s": "taken"}); else NULL.
DECLARE
    found jsonb;
    other bigint;
BEGIN
    IF provider IS NOT NULL AND org_key IS NOT NULL THEN
        SELECT MESSAGE_JSON INTO found FROM messages m
            JOIN contacts c ON c.id = m.contact_pk
            WHERE m.org_id = org_key AND m.channel = $3 AND m.provider_message_id = provider;
        IF found IS NOT NULL THEN
            RETURN jsonb_build_object('s', 'existing', 'm', found);
        END IF;
    END IF;
    SELECT MESSAGE_JSON, m.org_id INTO found, other FROM messages m
        JOIN contacts c ON c.id = m.contact_pk WHERE m.id = message_id;
    IF found IS NULL THEN
        RETURN NULL;
    ELSIF org_key IS NOT NULL AND other = org_key THEN
        RETURN jsonb_build_object('s', 'existing', 'm', found);
    END IF;
    RETURN jsonb_build_object('s', 'taken');
END
$fn$
""".replace("MESSAGE_JSON", MESSAGE_JSON)


def _unclean_pattern() -> str:
    """A regular expression (PostgreSQL's) for the ids that may hold characters a person cannot see: any
    default-ignorable code point or blank, or white space at either end. Built from validation's own sets,
    it only narrows the rows read; validation.cleaned_identifier decides. (Ids were always stored in NFC on
    PostgreSQL, so unlike SQLite's there is no normalization to catch up on.)"""

    def escaped(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"

    unseen = "".join(escaped(low) + ("" if low == high else "-" + escaped(high)) for low, high in DEFAULT_IGNORABLE)
    unseen += "".join(escaped(ord(char)) for char in sorted(BLANKS | LOOKALIKE_SPACES))
    spaces = "".join(escaped(code) for code in range(0x10000) if chr(code).isspace())  # all in the BMP
    return f"[{unseen}]|^[{spaces}]|[{spaces}]$"


# PostgreSQL's words for the shared tables (sql/tables.py)
TABLES = tables(
    Words(
        key="bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        integer="bigint",
        text="text",
        keyed_table="",
        chat_columns="\n            seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,",  # orders chats of one microsecond
        # search folds case and, where PostgreSQL's unaccent dictionary is installed, accents (see below)
        message_columns=(
            ",\n            words tsvector GENERATED ALWAYS AS (to_tsvector('chatdock_search', content)) STORED"
        ),
        index_order=", seq",
    )
)

# the functions of an append (and of resolving an identifier in any write), by signature
APPEND_FUNCTIONS = (
    "chatdock_append(jsonb, text)",
    "chatdock_find(bigint, text, text, text)",
    "chatdock_resolve(bigint, text)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema",
        (
            *(TABLES[name] for name in ("orgs", "contacts", "contacts_recent", "identifiers", "identifiers_contact")),
            *(
                TABLES[name]
                for name in ("channels", "chats", "chats_contact", "chat_channels", "chat_channels_channel")
            ),
            "CREATE TEXT SEARCH CONFIGURATION chatdock_search (COPY = simple)",
            *(TABLES[name] for name in ("messages", "messages_contact", "messages_agent", "messages_chat")),
            TABLES["messages_provider"],
            "CREATE INDEX messages_words ON messages USING gin (words)",
            TABLES["api_keys"],
            TABLES["api_keys_live_name"],
            RESOLVE_FUNCTION,
            FIND_FUNCTION,
            APPEND_FUNCTION,
        ),
    ),
    Migration(
        2,
        "identifiers without characters a person cannot see",
        (),
        clean_identifiers("{column} ~ ?", _unclean_pattern()),
    ),
    Migration(
        3,
        "search finds an organization's newest matches era by era",
        (  # a rewrite of the messages (about 10 s a million, the table locked) and a new index of words
            "SET LOCAL statement_timeout = 0",  # a limit set for the role or the database would undo it each start
            "ALTER TABLE messages DROP COLUMN words",
            f"ALTER TABLE messages ADD COLUMN words tsvector GENERATED ALWAYS AS ({WORDS}) STORED",
            # each message's words go into the index as it is stored: with the default (fastupdate), they wait
            # in a list that every look-up reads whole, and a search makes one look-up per era (a rare word at
            # 1M messages took 62 ms behind 3,000 appends, and 3.6 ms without the list)
            "CREATE INDEX messages_words ON messages USING gin (words) WITH (fastupdate = off)",
            "ANALYZE messages",  # the new column's statistics: which words are common (wordstats.py), at once
        ),
    ),
    Migration(
        4,
        "each contact counts the changes of its messages",
        (
            # a constant default: no rewrite of the table
            "ALTER TABLE contacts ADD COLUMN version bigint NOT NULL DEFAULT 0",
            APPEND_FUNCTION_4,
        ),
    ),
    Migration(
        5,
        "a new contact starts counting the changes of its messages at random",
        # as the shared writes start theirs (sql/writes.first_version); `chatdock_append` takes the default
        (f"ALTER TABLE contacts ALTER COLUMN version SET DEFAULT floor(random() * {VERSION_STARTS})::bigint",),
    ),
    Migration(
        6,
        "the append's look-ups stay look-ups by key however small the tables were when first planned",
        # A session plans each statement of a PL/pgSQL function once and keeps the plan until the tables'
        # statistics change. Planned on a new database, whose tables are empty, a look-up of a message by its
        # id was a scan of the table, which every message of an import's batch (one statement) then made
        # longer: 20,000 messages into a new database took 11 s, each id look-up 273 us at 10,000. Every
        # statement of these functions looks rows up by a key, so their sessions do not plan a scan. A later
        # CREATE OR REPLACE of one of them drops the setting: it must say SET enable_seqscan = off again.
        tuple(f"ALTER FUNCTION {function} SET enable_seqscan = off" for function in APPEND_FUNCTIONS),
    ),
    Migration(
        7,
        "the first answers of links made under an Idempotency-Key",
        (TABLES["link_answers"], TABLES["link_answers_contact"]),
    ),
    Migration(
        8,
        "the channel ids a merge retired, and what they became",
        (TABLES["retired_channels"], TABLES["retired_channels_channel"]),
    ),
    Migration(
        9,
        "a new contact's identifier claimed by a link meanwhile leaves no contact without it",
        (APPEND_FUNCTION_9, "ALTER FUNCTION chatdock_append(jsonb, text) SET enable_seqscan = off"),
        _rejoin_contacts,
    ),
    Migration(
        10,
        "a secret of the database's own, which keeps list cursors from showing other organizations' writes",
        (TABLES["secrets"],),
        new_secret(CURSOR_SECRET),
    ),
    Migration(
        11,
        "a key's name is unique within its organization",
        ("DROP INDEX api_keys_live_name", TABLES["api_keys_org_live_name"]),
    ),
    Migration(
        12,
        "an organization's messages in the order they were stored",
        # a prefix search reads the organization's newest messages (queries.py, "walk"), and an export one
        # organization's in order: without it, both read the primary key past every other organization's
        # (a small organization's `hel*` beside a million messages of another: 0.5 s). A million messages take
        # about a second to index, writes waiting.
        ("CREATE INDEX messages_org_seq ON messages(org_id, seq)",),
    ),
    Migration(13, "a key may be read-only", (TABLES["api_keys.read_only"],)),
)


async def _fold_accents(conn: asyncpg.Connection) -> None:
    """Let search fold accents (cafe finds Café) through PostgreSQL's unaccent dictionary, a trusted extension
    of the contrib package; without it, search still folds case, and the log says what to install."""
    try:
        async with conn.transaction():
            await conn.execute("CREATE EXTENSION IF NOT EXISTS unaccent")
            await conn.execute(
                "ALTER TEXT SEARCH CONFIGURATION chatdock_search ALTER MAPPING FOR hword, hword_part, word "
                "WITH unaccent, simple"
            )
    except asyncpg.PostgresError as exc:
        logger.warning(
            "search will not fold accents (cafe will not find Café): the unaccent extension could not be "
            "created (%s); install PostgreSQL's contrib package on the server, then run: CREATE EXTENSION "
            "unaccent; ALTER TEXT SEARCH CONFIGURATION chatdock_search ALTER MAPPING FOR hword, hword_part, "
            "word WITH unaccent, simple",
            exc,
        )


async def applied_in(conn: asyncpg.Connection) -> set[int]:
    """The migrations the database has, read only (none when it has no chatdock schema yet)."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return {row[0] for row in await conn.fetch(APPLIED)}
    return set()


async def migrate(conn: asyncpg.Connection, place: str, patience: float = LOCK_PATIENCE) -> list[int]:
    """Apply every migration not yet recorded, under the migration lock; the versions this call applied (`place`
    names the database in the lines that say so). A database with every migration applied is only read (no
    lock, no statement that writes), so a read-only one (a standby, default_transaction_read_only) is served
    for reading. A migration that waits for a table's lock lets go and tries again (`_apply`), for `patience`
    seconds at most."""
    done = await applied_in(conn)
    if done:
        refuse_newer(done, MIGRATIONS)
        if all(migration.version in done for migration in MIGRATIONS):
            return []
    await _take_migration_lock(conn, place, patience)
    try:
        done = await applied_in(conn)  # under the lock: another replica may have migrated meanwhile
        if not done:  # no record yet (or an empty one): made, if it is not there
            await conn.execute(SCHEMA_TABLE)
        applied: list[int] = []
        refuse_newer(done, MIGRATIONS)
        announce_upgrade(place, done, MIGRATIONS)
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            await _apply(conn, migration, place, patience)
            applied.append(migration.version)
        announce_upgraded(place, done, applied, done | set(applied))
        return applied
    except asyncpg.InsufficientPrivilegeError as exc:
        due = [migration.version for migration in MIGRATIONS if migration.version not in done]
        raise Unavailable(
            f"{place}: migrations {', '.join(map(str, due))} are due, and this role may not apply them ({exc}); "
            "run `chatdock migrate` once as the role that owns chatdock's tables, then start this again "
            "(docs/postgresql.md, Least privilege)"
        ) from exc
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


async def _take_migration_lock(conn: asyncpg.Connection, place: str, patience: float) -> None:
    """The migration lock, once the session that holds it (another replica migrating, or a migration stuck) lets
    go: a replica waiting behind it says so, naming that session, every 10 s, and gives up after `patience`
    seconds (it waited without a word and without end, not even answering /livez)."""
    began = time.monotonic()
    said = None
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK):
        waited = time.monotonic() - began
        if waited >= patience:
            raise Unavailable(
                f"{place}: another session held chatdock's migration lock for the {waited:.0f} s this one waited "
                f"(holding it: {await _lock_holders(conn, migrating=True)}); nothing was applied. If no chatdock "
                "is migrating, end that session (pg_terminate_backend), then start chatdock again"
            )
        if said is None or waited - said >= 10:
            said = waited
            # at first, the routine wait of replicas started together (INFO); then, a wait worth a look (WARNING)
            logger.log(
                logging.INFO if waited < 10 else logging.WARNING,
                "%s: migrations are due and another session is applying them (holding the migration lock: %s); "
                "this one waits for it (%.0f s of %.0f)",
                place,
                await _lock_holders(conn, migrating=True),
                waited,
                patience,
            )
        await asyncio.sleep(0.5)


async def _apply(conn: asyncpg.Connection, migration: Migration, place: str, patience: float) -> None:
    """One migration in one transaction, whose statements wait at most LOCK_WAIT for a lock: a statement waiting
    for a table's lock (behind a long transaction of another session) holds up every query of the table that
    comes after it, each replica's reads and writes, for as long as it waits. It lets go, lets them through, and
    tries again, saying which sessions are in the way; after `patience` seconds it gives up, naming them."""
    waited, delay = 0.0, 0.5
    while True:
        began = time.monotonic()
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{int(LOCK_WAIT * 1000)}ms'")
                await driver.run(conn, apply_migration(migration), timeout=None)
                if migration.version == 1:  # in its transaction (a savepoint): no crash leaves search without it
                    await _fold_accents(conn)
            return
        except asyncpg.LockNotAvailableError:
            waited += time.monotonic() - began
            holders = await _lock_holders(conn)
            if waited >= patience:
                raise Unavailable(
                    f"{place}: migration {migration.version} ({migration.name}) gave up after {waited:.0f} s of "
                    f"waiting for locks (in the way: {holders}); nothing of it was applied. End that transaction "
                    "(or wait for it to end), then start chatdock again"
                ) from None
            logger.warning(
                "%s: migration %d waits for a lock (in the way: %s); it lets the other sessions through and tries "
                "again (%.0f s of %.0f)",
                place,
                migration.version,
                holders,
                waited,
                patience,
            )
        await asyncio.sleep(delay)
        waited += delay
        delay = min(delay * 2, 5.0)


async def _lock_holders(conn: asyncpg.Connection, migrating: bool = False) -> str:
    """The other sessions that hold locks on this database's tables (or, `migrating`, chatdock's migration
    lock), longest in their transaction first, as words: `pid 123 (psql, idle in transaction for 95 s)`."""
    held = (
        f"l.locktype = 'advisory' AND l.classid = {MIGRATION_LOCK >> 32} AND l.objid = {MIGRATION_LOCK & 0xFFFFFFFF} "
        "AND l.objsubid = 1"
        if migrating
        else "c.relkind IN ('r', 'i', 'p')"
    )
    found = await conn.fetch(
        "SELECT DISTINCT a.pid, a.application_name, a.state, "
        "extract(epoch FROM now() - coalesce(a.xact_start, a.state_change))::int "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid LEFT JOIN pg_class c ON c.oid = l.relation "
        "WHERE l.granted AND a.pid <> pg_backend_pid() AND l.database = "
        f"(SELECT oid FROM pg_database WHERE datname = current_database()) AND {held} "
        "ORDER BY 4 DESC NULLS LAST LIMIT 5"
    )
    if not found:
        return "a session that has ended since"
    said = [
        f"pid {pid} ({name or 'no application name'}, {state or 'state unknown'}"
        + (f" for {seconds} s)" if seconds is not None else ")")
        for pid, name, state, seconds in found
    ]
    return "; ".join(said)
