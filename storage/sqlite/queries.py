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


def _quoted(text: str, prefix: bool = False) -> str:
    """Words as an FTS5 string over the text column: quoted, so no text is read as syntax."""
    return 'content : "' + text.replace('"', '""') + '"' + ("*" if prefix else "")


def fts_expression(query: Query) -> tuple[str, list[str]]:
    """The parsed query as FTS5 expressions over the text column: the terms wanted ANDed, and each term
    excluded."""

    def term(found: Term) -> str:
        return _quoted(found.text, found.prefix)

    return " AND ".join(term(found) for found in query.wanted), [term(found) for found in query.excluded]


def tokens(text: str) -> list[str]:
    """The words of `text` as FTS5's unicode61 tokenizer cuts them, where they are sure to be cut: at spaces and
    ASCII marks. Its tables of what else separates words are of an older Unicode than Python's (it keeps
    `ok🙂thanks` and `500₽` whole); a word cut here that FTS5 keeps whole would bound a search by other
    messages' words and lose its match, while a word kept whole here that FTS5 cuts is only read as a phrase
    of its parts (the messages holding it in that order: fewer, so the bound comes older and nothing is
    lost)."""
    words, word = [], ""
    for char in text:
        if char.isspace() or (char.isascii() and not char.isalnum()):
            if word:
                words.append(word)
            word = ""
        else:
            word += char
    return [*words, word] if word else words


def narrowed(query: Query) -> bool:
    """Whether the query asks more of a message than holding its words: an exclusion, or a term of several
    words (a phrase; for FTS5 also a word it cuts in two, "follow-up"): such a query looks for its matches
    among the newest CANDIDATES messages holding its words (search.py). Not a query with a prefix, which FTS5
    reads whole anyway (and PostgreSQL walks for)."""
    if any(found.prefix for found in (*query.wanted, *query.excluded)):
        return False
    return bool(query.excluded) or any(len(tokens(found.text)) > 1 for found in query.wanted)


def fts_words(query: Query) -> str:
    """The words a narrowed query wants (it has no prefix), each on its own and ANDed: the messages it checks."""
    return " AND ".join(_quoted(word) for found in query.wanted for word in tokens(found.text))


def _scope(contact: bool) -> str:
    """The organization's or the contact's word in the owner column (indexing.owner), from (org[, contact])."""
    return f"'k' || ifnull({CONTACT}, 0)" if contact else f"'o' || ifnull({ORG}, 0)"


def _filters(channel: bool, role: bool) -> str:
    """A search's channel and role, on the messages `m`, as it takes them: ([channel,] [role])."""
    return (" AND m.channel = ?" if channel else "") + (" AND m.role = ?" if role else "")


def candidates_sql(contact: bool, upto: bool) -> str:
    """The seq of the CANDIDATES-th newest message that holds the query's words, if there are that many; it
    takes (org, [contact,] fts_words, [upto,] CANDIDATES - 1). FTS5 reads their lists newest first, ANDed,
    and stops there."""
    below = " AND rowid <= ?" if upto else ""
    return (
        f"SELECT rowid FROM messages_fts WHERE messages_fts MATCH ('owner : ' || {_scope(contact)} || ' AND ' || ?)"
        f"{below} ORDER BY rowid DESC LIMIT 1 OFFSET ?"
    )


def search_sql(contact: bool, channel: bool, role: bool, upto: bool = False) -> str:
    """The newest matches, scoped by organization; it takes (org, [contact,] wanted, excluded, org, [channel,]
    [role,] [upto,] window), `wanted` and `excluded` from `fts_expression`. FTS5 walks the index from its newest
    row back (its rowid is the message's seq), from `upto` when given, and stops at the window, however common
    the words. The organization's or the contact's word (indexing.owner) joins the words wanted, so the index
    intersects their lists: a search reads the matches of its own organization only, and the exclusions are
    taken from those (asked for as owner AND (words NOT exclusion), FTS5 walks every message of both words)."""
    match = f"('(owner : ' || {_scope(contact)} || ' AND ' || ? || ')' || ?)"
    where = _filters(channel, role) + (" AND messages_fts.rowid <= ?" if upto else "")
    return (
        f"SELECT m.seq, {RANKED_CONTENT} FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid "
        f"WHERE messages_fts MATCH {match} AND m.org_id = {ORG}{where} ORDER BY messages_fts.rowid DESC LIMIT ?"
    )


def narrowed_sql(contact: bool, channel: bool, role: bool, upto: bool, excluded: bool) -> str:
    """A narrowed query's newest matches among the messages from a seq on (candidates_sql); it takes (org,
    [contact,] wanted, bound, [upto,] [org, [contact,] wanted, excluded-as-OR, bound, [upto,]] org, [channel,]
    [role,] window). Read oldest first: FTS5 stops at the bound that way (newest first, it reads every match
    below the bound too; and it reads every message of the words of a NOT, whatever the bound), so an exclusion
    is taken out here, as the messages among those that also hold an excluded word."""
    within = " AND rowid >= ?" + (" AND rowid <= ?" if upto else "")
    wanted = f"('owner : ' || {_scope(contact)} || ' AND (' || ? || ')')"
    found = f"SELECT rowid FROM messages_fts WHERE messages_fts MATCH {wanted}{within}"
    if excluded:
        holding = f"({wanted} || ' AND (' || ? || ')')"
        found += f" AND rowid NOT IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH {holding}{within})"
    where = _filters(channel, role)
    return (
        f"WITH found(seq) AS MATERIALIZED ({found} ORDER BY rowid) SELECT m.seq, {RANKED_CONTENT} FROM found "
        f"JOIN messages m ON m.seq = found.seq WHERE m.org_id = {ORG}{where} ORDER BY m.seq DESC LIMIT ?"
    )
