"""SQLite's own SQL: its dialect for the shared logic (storage/sql/), and full-text search through FTS5."""

from __future__ import annotations

from ..search import Query, Term
from ..sql.dialect import Dialect
from ..sql.ops import Ops, count, value
from ..sql.queries import CONTACT, ORG, RANKED_CONTENT

CHAT_COLUMNS = """ch.id, co.external_id, ch.agent_id, ch.status, ch.created_us, ch.updated_us,
    (SELECT json_group_array(json_array(id, name, kind)) FROM (
        SELECT c.id AS id, c.name AS name, c.kind AS kind
        FROM chat_channels cc JOIN channels c ON c.id = cc.channel_id
        WHERE cc.chat_id = ch.id ORDER BY cc.attached_us, c.name))"""


def claim_identifier(org_key: int, identifier: str, contact_key: int, now_us: int) -> Ops[tuple[int, bool]]:
    """The one writer needs no lock: look, then insert."""
    owner = yield value("SELECT contact_pk FROM identifiers WHERE org_id = ? AND identifier = ?", org_key, identifier)
    if owner is not None:
        return int(owner), False
    yield count(
        "INSERT INTO identifiers (org_id, identifier, contact_pk, created_us) VALUES (?, ?, ?, ?)",
        org_key,
        identifier,
        contact_key,
        now_us,
    )
    return contact_key, True


DIALECT = Dialect(
    resolve=(  # and the contact's version, which the append counts on (one writer: it cannot change meanwhile)
        "SELECT i.contact_pk, c.external_id, c.version FROM identifiers i JOIN contacts c ON c.id = i.contact_pk "
        "WHERE i.org_id = ? AND i.identifier = ?"
    ),
    claim_identifier=claim_identifier,
    chat_columns=CHAT_COLUMNS,
    chat_order="rowid",
    for_update="",  # one writer at a time: nothing to lock against
    greatest="max",
    least="min",
    octet_length="length(CAST({} AS BLOB))",  # octet_length() is SQLite 3.43's; a blob's length is its bytes
    sized_in_one_pass=False,
)


def fts_expression(query: Query) -> str:
    """The parsed query as an FTS5 expression over the text column: every term a quoted string, so no text is
    read as syntax."""

    def term(found: Term) -> str:
        return 'content : "' + found.text.replace('"', '""') + '"' + ("*" if found.prefix else "")

    expression = " AND ".join(term(found) for found in query.wanted)
    for found in query.excluded:
        expression = f"({expression}) NOT {term(found)}"
    return expression


def search_sql(contact: bool, channel: bool, role: bool, upto: bool = False) -> str:
    """The newest matches, scoped by organization; it takes ([org, contact,] expression, org, [channel,]
    [role,] [upto,] window). FTS5 walks the index from its newest row back (its rowid is the message's seq),
    from `upto` when given, and stops at the window, however common the words; one contact's search adds its
    owner token to the expression, so the index intersects the two lists."""
    match = "?"
    if contact:
        match = f"('owner : k' || ifnull({CONTACT}, 0) || ' AND (' || ? || ')')"
    where = ""
    if channel:
        where += " AND m.channel = ?"
    if role:
        where += " AND m.role = ?"
    if upto:
        where += " AND messages_fts.rowid <= ?"
    return (
        f"SELECT m.seq, {RANKED_CONTENT} FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid "
        f"WHERE messages_fts MATCH {match} AND m.org_id = {ORG}{where} ORDER BY messages_fts.rowid DESC LIMIT ?"
    )
