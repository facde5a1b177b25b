"""The one migration format of both engines, and the data migration they share.

A migration is numbered and named; it runs its statements, then its `apply` step (work SQL alone cannot do,
as a piece of logic, ops.py), then records itself in `schema_migrations`, all in one transaction. Each engine
keeps its list (sqlite/schema.py, postgres/schema.py) and its `migrate`, which takes the engine's lock, skips
what is recorded and runs `apply_migration` for the rest, one transaction each. To change the schema: add a
`Migration` with the next number at the end of each engine's list; never edit one already released.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import Unavailable
from ..validation import StoredIdentifier, cleaned_agent, cleaned_identifier, plan_identifier_fixes, visible
from .ops import Ops, count, rows, value

# both engines' migrations log here; every line is a fact of its own, never held back as a repeat (ops/logs.py)
logger = logging.getLogger("chatdock.storage.migrations")

SCHEMA_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_us bigint NOT NULL
)"""
APPLIED = "SELECT version FROM schema_migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    apply: Callable[[], Ops[None]] | None = None  # work SQL alone cannot do, after the statements


def apply_migration(migration: Migration) -> Ops[None]:
    """The migration's statements, its step and its record, in the caller's transaction."""
    for statement in migration.statements:
        yield count(statement)
    if migration.apply is not None:
        yield from migration.apply()
    yield count(
        "INSERT INTO schema_migrations (version, name, applied_us) VALUES (?, ?, ?)",
        migration.version,
        migration.name,
        time.time_ns() // 1000,
    )


def announce_upgrade(place: str, done: set[int], migrations: tuple[Migration, ...]) -> None:
    """Before migrating a database that has a schema already: a line that says so (the operator sees why the
    start takes longer, and that the step is one-way). A new database says nothing."""
    newest = max(migration.version for migration in migrations)
    if done and not done.issuperset(migration.version for migration in migrations):
        logger.warning(
            "%s: upgrading the database from schema version %d to %d; once done, an older chatdock refuses it "
            "(to go back, restore a copy taken before: docs/operations.md, Upgrading)",
            place,
            schema_version(done),
            newest,
        )


def announce_upgraded(place: str, done: set[int], applied: list[int], now: set[int]) -> None:
    """After migrating: the version reached (`now`: every migration the database has, whoever applied it), when
    this process applied any (`done`: what the database had before; a new database's only at DEBUG)."""
    if applied:
        level = logging.WARNING if done else logging.DEBUG
        said = "upgraded the database" if done else "a new database"
        logger.log(level, "%s: %s, now at schema version %d", place, said, schema_version(now))


def schema_version(done: set[int]) -> int:
    """The schema version a database is at: the last of the migrations it has without a gap from the first."""
    version = 0
    while version + 1 in done:
        version += 1
    return version


def new_secret(name: str) -> Callable[[], Ops[None]]:
    """The step that makes the database's secret `name`: 32 random bytes (hex), once."""

    def step() -> Ops[None]:
        yield count("INSERT INTO secrets (name, value) VALUES (?, ?)", name, secrets.token_hex(32))

    return step


def refuse_newer(applied: set[int], migrations: tuple[Migration, ...]) -> None:
    """A database that a newer chatdock migrated is not served by an older one, which would write it as the old
    schema did (for one, SQLite's search index is kept another way since migration 8)."""
    known = max(migration.version for migration in migrations)
    newer = max(applied, default=0)
    if newer > known:
        raise newer_schema("the database", newer, known)


def newer_schema(place: str, newer: int, known: int) -> Unavailable:
    """The refusal of a database (`place`) at schema version `newer`, past the `known` one's."""
    return Unavailable(
        f"{place} was migrated by a newer chatdock (schema version {newer}; this one knows up to {known}); run that "
        "version of chatdock, or a newer one"
    )


def clean_identifiers(narrow: str = "", argument: str = "") -> Callable[[], Ops[None]]:
    """The step that takes out of stored ids the characters a person cannot see (validation.cleaned_identifier),
    now refused. A look-alike of an id that names another contact is left as it is and logged (the application
    decides whether they are one person), never merged here; see validation.IdentifierFix for every case.
    `narrow`, a condition on `{column}` with one parameter (`argument`), lets an engine read only the rows
    that may need it; validation decides."""

    def step() -> Ops[None]:
        params = (argument,) if narrow else ()
        condition = f" WHERE {narrow.format(column='i.identifier')}" if narrow else ""
        found = yield rows(
            "SELECT i.org_id, o.name, i.identifier, i.contact_pk, c.external_id, i.created_us FROM identifiers i "
            f"JOIN contacts c ON c.id = i.contact_pk JOIN orgs o ON o.id = i.org_id{condition}",
            *params,
        )
        unclean = [StoredIdentifier(*row) for row in found if cleaned_identifier(row[2]) != row[2]]
        owners: dict[tuple[int, str], int] = {}
        for stored in unclean:
            clean = cleaned_identifier(stored.identifier)
            owner = yield value(
                "SELECT contact_pk FROM identifiers WHERE org_id = ? AND identifier = ?", stored.org_key, clean
            )
            if owner is not None:
                owners[(stored.org_key, clean)] = owner
        for fix in plan_identifier_fixes(unclean, owners):
            stored = fix.stored
            if fix.action == "rename":
                yield count(
                    "UPDATE identifiers SET identifier = ? WHERE org_id = ? AND identifier = ?",
                    fix.clean,
                    stored.org_key,
                    stored.identifier,
                )
            elif fix.action == "drop":
                yield count(
                    "DELETE FROM identifiers WHERE org_id = ? AND identifier = ?", stored.org_key, stored.identifier
                )
            if fix.action in ("rename", "drop") and stored.own:
                yield count("UPDATE contacts SET external_id = ? WHERE id = ?", fix.clean, stored.contact_key)
            logger.log(logging.WARNING if fix.warning else logging.INFO, "%s", fix.describe())
        agents = f" AND {narrow.format(column='agent_id')}" if narrow else ""
        for table in ("messages", "chats"):
            for (agent,) in (
                yield rows(f"SELECT DISTINCT agent_id FROM {table} WHERE agent_id IS NOT NULL{agents}", *params)
            ):
                clean = cleaned_agent(agent)
                if clean != agent:
                    changed = yield count(f"UPDATE {table} SET agent_id = ? WHERE agent_id = ?", clean, agent)
                    logger.info("agent id %s of %s %s is now %s", visible(agent), changed, table, visible(clean))

    return step
