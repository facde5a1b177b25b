"""The SQL both engines read with: the organization scope, column lists, and the statements behind the hot
reads. Organization scoping lives here: `ORG` and `CONTACT` name the organization and the contact by their
external names; every read is built from them. Placeholders are `?` (ops.py)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..backend import MessageFilter
from ..cursor import Position
from ..ranking import RANKED_CHARS
from .dialect import Dialect

ORG = "(SELECT id FROM orgs WHERE name = ?)"
# the contact an identifier names: its own contact_id, or one of its aliases (takes org, identifier)
CONTACT = f"(SELECT contact_pk FROM identifiers WHERE org_id = {ORG} AND identifier = ?)"

MESSAGE_COLUMNS = "m.id, m.agent_id, m.chat_id, m.channel, m.role, m.content, m.parts, m.metadata, m.created_us, m.seq"
# its contact's external id (index 10) and version (index 11: the count of changes of its messages)
CONTACT_COLUMNS = "c.external_id, c.version"
# a search's match as ranking.py ranks it: the first RANKED_CHARS of its text, and one more character to tell a
# word the bound cuts through (no more is read and sent)
RANKED_CONTENT = f"substr(m.content, 1, {RANKED_CHARS + 1}) AS content"
# a message with CONTACT_COLUMNS, found by a WHERE clause over `m`
MESSAGE_WITH_CONTACT = (
    f"SELECT {MESSAGE_COLUMNS}, {CONTACT_COLUMNS} FROM messages m JOIN contacts c ON c.id = m.contact_pk WHERE "
)

CHAT_FROM = "FROM chats ch JOIN contacts co ON co.id = ch.contact_pk"

KEY_SELECT = (
    "SELECT k.prefix, k.name, o.name, k.created_us, k.last_used_us, k.revoked_us, k.read_only "
    "FROM api_keys k JOIN orgs o ON o.id = k.org_id"
)


def chat_select(dialect: Dialect) -> str:
    """A chat's row (rows.chat), found by a WHERE clause over `ch` (its contact is `co`)."""
    return f"SELECT {dialect.chat_columns} {CHAT_FROM}"


def _filters(only: MessageFilter, params: list[Any]) -> str:
    """The filter's conditions, appending their values to `params`."""
    where = ""
    if only.agent_id is not None:
        where += " AND m.agent_id = ?"
        params.append(only.agent_id)
    if only.chat_id is not None:
        where += " AND m.chat_id = ?"
        params.append(only.chat_id)
    if only.roles:
        where += f" AND m.role IN ({', '.join('?' * len(only.roles))})"
        params.extend(only.roles)
    if only.channels:
        where += f" AND m.channel IN ({', '.join('?' * len(only.channels))})"
        params.extend(only.channels)
    return where


def latest_sql(
    dialect: Dialect,
    org: str,
    contact_id: str,
    only: MessageFilter,
    limit: int,
    max_bytes: int | None,
    after: Position | None = None,
) -> tuple[str, list[Any]]:
    """A contact's newest `limit` messages passing `only` (after a keyset position), newest first, cut where
    their stored bytes (content, parts, metadata) reach `max_bytes`: the row that crosses it still comes, so a
    caller can tell more exist, and the rows past it are never sent (SQLite reads only their sizes: see
    `Dialect.sized_in_one_pass`). Each row is `MESSAGE_COLUMNS` and `CONTACT_COLUMNS` (its contact's own
    contact_id, whatever identifier named it, and version). The statement and its parameters. With
    `max_bytes` None the statement is not cut: its reader cuts it, `within(cursor, max_bytes)`."""
    params: list[Any] = [org, contact_id]
    where = _filters(only, params)
    if after is not None:
        where += " AND (m.created_us, m.seq) < (?, ?)"
        params += list(after)
    if max_bytes is None:
        params.append(limit)
        order = "ORDER BY m.created_us DESC, m.seq DESC LIMIT ?"
        return f"{MESSAGE_WITH_CONTACT}m.contact_pk = {CONTACT}{where} {order}", params
    params += [limit, max_bytes]
    size = " + ".join(
        "coalesce(" + dialect.octet_length.format(f"m.{column}") + ", 0)" for column in ("content", "parts", "metadata")
    )
    running = "sum(size) OVER (ORDER BY created_us DESC, seq DESC ROWS UNBOUNDED PRECEDING) - size"
    if dialect.sized_in_one_pass:
        sized = (
            f"SELECT {MESSAGE_COLUMNS}, m.contact_pk, {size} AS size FROM messages m "
            f"WHERE m.contact_pk = {CONTACT}{where} ORDER BY m.created_us DESC, m.seq DESC LIMIT ?"
        )
        sql = (
            f"SELECT {MESSAGE_COLUMNS}, {CONTACT_COLUMNS} FROM (SELECT *, {running} AS before FROM ({sized}) s) m "
            "JOIN contacts c ON c.id = m.contact_pk WHERE m.before < ? ORDER BY m.created_us DESC, m.seq DESC"
        )
        return sql, params
    sized = (
        f"SELECT m.seq AS seq, m.created_us AS created_us, {size} AS size FROM messages m "
        f"WHERE m.contact_pk = {CONTACT}{where} ORDER BY m.created_us DESC, m.seq DESC LIMIT ?"
    )
    sql = (
        f"SELECT {MESSAGE_COLUMNS}, {CONTACT_COLUMNS} FROM (SELECT seq, {running} AS before FROM ({sized}) s) r "
        "JOIN messages m ON m.seq = r.seq JOIN contacts c ON c.id = m.contact_pk WHERE r.before < ? "
        "ORDER BY m.created_us DESC, m.seq DESC"
    )
    return sql, params


def within(found: Iterable[Sequence[Any]], max_bytes: int) -> list[Sequence[Any]]:
    """The rows of `latest_sql(..., max_bytes=None)` cut as `latest_sql(..., max_bytes)` cuts them (the row
    that crosses `max_bytes` still comes), read one by one from `found`, a cursor: none past the cut is read."""
    kept: list[Sequence[Any]] = []
    if max_bytes <= 0:
        return kept
    before = 0
    for row in found:
        kept.append(row)
        before += _octets(row[5]) + _octets(row[6]) + _octets(row[7])  # content, parts, metadata
        if before >= max_bytes:  # the next row's `before` would not be under the bound: it is not asked for
            break
    return kept


def _octets(value: str | bytes | None) -> int:
    """A stored text's size in bytes, as the dialect's `octet_length` counts it (UTF-8); NULL is 0."""
    if value is None:
        return 0
    if isinstance(value, bytes) or value.isascii():
        return len(value)
    return len(value.encode())


def scope(org: str | None, contact_id: str | None, contact_column: str) -> tuple[str, list[Any]]:
    """The conditions (each after an AND) that keep an export to one organization (`o`) and one contact."""
    where, params = "", []
    if org is not None:
        where += " AND o.name = ?"
        params.append(org)
    if contact_id is not None:
        where += f" AND {contact_column} = ?"
        params.append(contact_id)
    return where, params
