"""The SQL that reads: column lists, the organization scope, and the statements behind the hot reads.

Organization scoping lives here: `ORG` and `CONTACT` name the organization
and the contact by their external names; every read is built from them.
"""

from __future__ import annotations

from typing import Any

from ..backend import MessageFilter
from ..search import Query, Term

ORG = "(SELECT id FROM orgs WHERE name = ?)"
# the contact an identifier names: its own contact_id, or one of its aliases
CONTACT = f"(SELECT contact_pk FROM identifiers WHERE org_id = {ORG} AND identifier = ?)"

MESSAGE_COLUMNS = "m.id, m.agent_id, m.chat_id, m.channel, m.role, m.content, m.parts, m.metadata, m.created_us, m.seq"
# a message with its contact's external id (index 10), found by a WHERE clause over `m`
MESSAGE_WITH_CONTACT = (
    f"SELECT {MESSAGE_COLUMNS}, c.external_id FROM messages m JOIN contacts c ON c.id = m.contact_pk WHERE "
)

CHAT_COLUMNS = """ch.id, co.external_id, ch.agent_id, ch.status, ch.created_us, ch.updated_us,
    (SELECT json_group_array(json_array(id, name, kind)) FROM (
        SELECT c.id AS id, c.name AS name, c.kind AS kind
        FROM chat_channels cc JOIN channels c ON c.id = cc.channel_id
        WHERE cc.chat_id = ch.id ORDER BY cc.attached_us, c.name))"""
CHAT_FROM = "FROM chats ch JOIN contacts co ON co.id = ch.contact_pk"
CHAT_SELECT = f"SELECT {CHAT_COLUMNS} {CHAT_FROM}"

KEY_SELECT = (
    "SELECT k.prefix, k.name, o.name, k.created_us, k.last_used_us, k.revoked_us "
    "FROM api_keys k JOIN orgs o ON o.id = k.org_id"
)


def _filters(only: MessageFilter) -> tuple[str, list[Any]]:
    where = ""
    params: list[Any] = []
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
    return where, params


def bounded_sql(latest: str) -> str:
    """`latest` (a `latest_sql` statement) cut where the stored bytes of the newer rows reach a budget, each row
    with its contact's own contact_id (index 10, whatever identifier the read named it by): it takes
    `latest`'s parameters, then the budget. The row that crosses the budget is still returned, so a caller can
    tell that more exist; no row past it is read into memory."""
    size = " + ".join(f"ifnull(length(CAST(m.{column} AS BLOB)), 0)" for column in ("content", "parts", "metadata"))
    sized = latest.replace(
        f"SELECT {MESSAGE_COLUMNS} FROM", f"SELECT m.seq AS seq, m.created_us AS created_us, {size} AS size FROM", 1
    )
    running = "sum(size) OVER (ORDER BY created_us DESC, seq DESC ROWS UNBOUNDED PRECEDING) - size"
    return (
        f"SELECT {MESSAGE_COLUMNS}, c.external_id FROM (SELECT seq, {running} AS before FROM ({sized})) r "
        "JOIN messages m ON m.seq = r.seq JOIN contacts c ON c.id = m.contact_pk WHERE r.before < ? "
        "ORDER BY m.created_us DESC, m.seq DESC"
    )


def latest_sql(only: MessageFilter, after: bool = False) -> tuple[str, list[Any]]:
    """The statement behind a contact's newest messages, optionally after a keyset position, and its filter
    parameters; it takes (org, contact_id, *filter parameters, [created_us, seq,] limit)."""
    where, params = _filters(only)
    if after:
        where += " AND (m.created_us, m.seq) < (?, ?)"
    sql = (
        f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.contact_pk = {CONTACT}{where} "
        "ORDER BY m.created_us DESC, m.seq DESC LIMIT ?"
    )
    return sql, params


def fts_expression(query: Query) -> str:
    """The parsed query as an FTS5 expression over the text column: every term a quoted string, so no text is
    read as syntax."""

    def term(found: Term) -> str:
        return 'content : "' + found.text.replace('"', '""') + '"' + ("*" if found.prefix else "")

    expression = " AND ".join(term(found) for found in query.wanted)
    for found in query.excluded:
        expression = f"({expression}) NOT {term(found)}"
    return expression


def search_sql(contact: bool, channel: bool, role: bool) -> str:
    """The newest matches, scoped by organization; it takes ([org, contact,] expression, org, [channel,]
    [role,] window). FTS5 walks the index from its newest row back (its rowid is the message's seq) and stops
    at the window, however common the words; one contact's search adds its owner token to the expression, so
    the index intersects the two lists."""
    match = "?"
    if contact:
        match = f"('owner : k' || ifnull({CONTACT}, 0) || ' AND (' || ? || ')')"
    where = ""
    if channel:
        where += " AND m.channel = ?"
    if role:
        where += " AND m.role = ?"
    return (
        "SELECT m.seq, m.content FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid "
        f"WHERE messages_fts MATCH {match} AND m.org_id = {ORG}{where} ORDER BY messages_fts.rowid DESC LIMIT ?"
    )
