"""The SQL that reads, for PostgreSQL: the organization scope, column lists and the statements behind the hot
reads. Parameters are numbered ($1, $2, ...): each builder says which it takes."""

from __future__ import annotations

from typing import Any

from ..backend import MessageFilter
from ..search import Query, Term

# the organization and the contact an identifier names (its own contact_id or an alias), from $1 and $2
ORG = "(SELECT id FROM orgs WHERE name = $1)"
CONTACT = f"(SELECT contact_pk FROM identifiers WHERE org_id = {ORG} AND identifier = $2)"

MESSAGE_COLUMNS = "m.id, m.agent_id, m.chat_id, m.channel, m.role, m.content, m.parts, m.metadata, m.created_us, m.seq"

CHAT_COLUMNS = """ch.id, co.external_id, ch.agent_id, ch.status, ch.created_us, ch.updated_us,
    (SELECT coalesce(json_agg(json_build_array(c.id, c.name, c.kind) ORDER BY cc.attached_us, c.name), '[]')::text
        FROM chat_channels cc JOIN channels c ON c.id = cc.channel_id WHERE cc.chat_id = ch.id)"""
CHAT_FROM = "FROM chats ch JOIN contacts co ON co.id = ch.contact_pk"
CHAT_SELECT = f"SELECT {CHAT_COLUMNS} {CHAT_FROM}"

KEY_SELECT = (
    "SELECT k.prefix, k.name, o.name, k.created_us, k.last_used_us, k.revoked_us "
    "FROM api_keys k JOIN orgs o ON o.id = k.org_id"
)

SIZE = "octet_length(m.content) + coalesce(octet_length(m.parts), 0) + coalesce(octet_length(m.metadata), 0)"


def _filters(only: MessageFilter, params: list[Any]) -> str:
    """The filter's conditions, appending their values to `params` (numbered after what it holds)."""

    def slot(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    where = ""
    if only.agent_id is not None:
        where += f" AND m.agent_id = {slot(only.agent_id)}"
    if only.chat_id is not None:
        where += f" AND m.chat_id = {slot(only.chat_id)}"
    if only.roles:
        where += f" AND m.role = ANY({slot(list(only.roles))}::text[])"
    if only.channels:
        where += f" AND m.channel = ANY({slot(list(only.channels))}::text[])"
    return where


def latest_sql(
    org: str, contact_id: str, only: MessageFilter, limit: int, max_bytes: int, after: tuple[int, int] | None = None
) -> tuple[str, list[Any]]:
    """A contact's newest `limit` messages passing `only` (after a keyset position), cut where their stored
    bytes reach `max_bytes` (the row that crosses it still comes, so a caller can tell more exist), each with
    its contact's own contact_id (index 10); the statement and its parameters. Only sizes are read for the
    rows past the budget."""
    params: list[Any] = [org, contact_id]
    where = _filters(only, params)
    if after is not None:
        params += list(after)
        where += f" AND (m.created_us, m.seq) < (${len(params) - 1}, ${len(params)})"
    params += [limit, max_bytes]
    sized = (
        f"SELECT m.seq, m.created_us, {SIZE} AS size FROM messages m WHERE m.contact_pk = {CONTACT}{where} "
        f"ORDER BY m.created_us DESC, m.seq DESC LIMIT ${len(params) - 1}"
    )
    running = "sum(size) OVER (ORDER BY created_us DESC, seq DESC ROWS UNBOUNDED PRECEDING) - size"
    sql = (
        f"SELECT {MESSAGE_COLUMNS}, c.external_id FROM (SELECT seq, {running} AS before FROM ({sized}) s) r "
        f"JOIN messages m ON m.seq = r.seq JOIN contacts c ON c.id = m.contact_pk WHERE r.before < ${len(params)} "
        "ORDER BY m.created_us DESC, m.seq DESC"
    )
    return sql, params


def _lexeme(word: str, prefix: bool) -> str:
    """One word as a quoted tsquery operand: its text is never read as operators."""
    quoted = "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"
    return quoted + (":*" if prefix else "")


def _term(found: Term) -> str:
    words = found.text.split(" ")
    return "(" + " <-> ".join(_lexeme(word, found.prefix and i == len(words) - 1) for i, word in enumerate(words)) + ")"


def tsquery_text(query: Query) -> str:
    """The parsed query in to_tsquery's syntax, each word a quoted operand: wanted terms ANDed, exclusions
    negated, phrases as words next to each other (<->)."""
    text = " & ".join(_term(found) for found in query.wanted)
    for found in query.excluded:
        text += f" & !{_term(found)}"
    return text


WALK_ROWS = 10_000  # the organization's newest messages a search reads first


def search_sql(
    org: str, text: str, contact_id: str | None, channel: str | None, role: str | None, window: int, how: str
) -> tuple[str, list[Any]]:
    """The newest matches (at most `window`) of the tsquery `text`, scoped by organization (and contact, by any
    of its identifiers); the statement and its parameters. `how` says how they are looked for (the backend's
    `search` says in what order):

    - "newest": as the planner sees fit: for one contact, its index; for a common word, a walk from the newest
      message back that stops at the window;
    - "walk": only among the organization's `WALK_ROWS` newest messages (a word common lately is found there);
    - "index": every match, through the index of words, the newest kept: a word in few messages (wordstats.py
      tells which)."""
    params: list[Any] = [org, contact_id, text]
    where = f" AND m.contact_pk = {CONTACT}" if contact_id is not None else " AND $2::text IS NULL"
    for column, value in (("channel", channel), ("role", role)):
        if value is not None:
            params.append(value)
            where += f" AND m.{column} = ${len(params)}"
    matches = "m.words @@ to_tsquery('chatdock_search', $3)"
    params.append(window)
    if how == "walk":
        newest = f"SELECT * FROM messages m WHERE m.org_id = {ORG} ORDER BY m.seq DESC LIMIT {WALK_ROWS}"
        sql = f"SELECT m.seq, m.content FROM ({newest}) m WHERE {matches}{where} LIMIT ${len(params)}"
    elif how == "index":
        found = f"SELECT m.seq, m.content FROM messages m WHERE {matches} AND m.org_id = {ORG}{where}"
        sql = f"WITH found AS MATERIALIZED ({found}) SELECT * FROM found ORDER BY seq DESC LIMIT ${len(params)}"
    else:
        sql = f"SELECT m.seq, m.content FROM messages m WHERE {matches} AND m.org_id = {ORG}{where} "
        sql += f"ORDER BY m.seq DESC LIMIT ${len(params)}"
    return sql, params
