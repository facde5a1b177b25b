"""PostgreSQL's own SQL: its dialect for the shared logic (storage/sql/), and full-text search through the
tsvector column. Parameters here are numbered ($1, $2, ...): each builder says which it takes."""

from __future__ import annotations

from typing import Any

from ..search import Query, Term
from ..sql.dialect import Dialect
from ..sql.ops import Ops, one
from ..sql.queries import RANKED_CONTENT

CHAT_COLUMNS = """ch.id, co.external_id, ch.agent_id, ch.status, ch.created_us, ch.updated_us,
    (SELECT coalesce(json_agg(json_build_array(c.id, c.name, c.kind) ORDER BY cc.attached_us, c.name), '[]')::text
        FROM chat_channels cc JOIN channels c ON c.id = cc.channel_id WHERE cc.chat_id = ch.id)"""


def claim_identifier(org_key: int, identifier: str, contact_key: int, now_us: int) -> Ops[tuple[int, bool]]:
    """One statement that inserts the identifier or locks the row that has it (`xmax = 0`: inserted now)."""
    claimed = yield one(
        "INSERT INTO identifiers (org_id, identifier, contact_pk, created_us) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (org_id, identifier) DO UPDATE SET org_id = excluded.org_id RETURNING contact_pk, xmax = 0",
        org_key,
        identifier,
        contact_key,
        now_us,
    )
    assert claimed is not None
    return int(claimed[0]), bool(claimed[1])


DIALECT = Dialect(
    resolve="SELECT * FROM chatdock_resolve(?, ?)",  # share-locked: no merge deletes it under this write
    claim_identifier=claim_identifier,
    chat_columns=CHAT_COLUMNS,
    chat_order="seq",
    for_update=" FOR UPDATE",
    greatest="greatest",
    least="least",
    octet_length="octet_length({})",
    sized_in_one_pass=True,  # one pass: 0.23 ms for 50 messages, against 0.28 with the join back
)

# the organization (from its name, $1), and the contact an identifier names (its own contact_id or an alias,
# $2) in the organization whose key is $1
ORG = "(SELECT id FROM orgs WHERE name = $1)"
CONTACT = "(SELECT contact_pk FROM identifiers WHERE org_id = $1 AND identifier = $2)"  # $1: the org's key


def _lexeme(word: str, prefix: bool) -> str:
    """One word as a quoted tsquery operand: its text is never read as operators. A number is also itself
    signed: PostgreSQL's parser reads the "-5567" of "ORD-5567" (an order's, an invoice's number) as one signed
    integer, where SQLite's tokenizer reads "5567"; asked for 5567, the message is found on both."""
    quoted = "'" + word.replace("\\", "\\\\").replace("'", "''") + "'" + (":*" if prefix else "")
    return f"({quoted} | '-{quoted[1:]})" if asked_signed(word) else quoted


def asked_signed(word: str) -> bool:
    """Whether a query's word is also asked for with a minus before it: a number (see `_lexeme`)."""
    return word.isascii() and word.isdigit()


def _word(word: str, prefix: bool, next_to: str = " <-> ") -> str:
    """A query's word; one with hyphens (follow-up, e-mail) is also its parts one after the other, as SQLite's
    tokenizer reads it: PostgreSQL's parser keeps a hyphenated word's whole and its parts, but a text that
    spells it apart ("follow up") has only the parts, and an email or a host with a hyphen only the whole."""
    parts = [part for part in word.split("-") if part]
    whole = _lexeme(word, prefix)
    if len(parts) < 2:
        return whole
    apart = next_to.join(_lexeme(part, prefix and i == len(parts) - 1) for i, part in enumerate(parts))
    return f"({whole} | {apart})"


def _term(found: Term, next_to: str = " <-> ") -> str:
    # "~" separates words here: PostgreSQL's parser keeps "~1.0" whole (a file name), which would be an era's
    # lexeme (WORDS) and find every message of that era
    words = found.text.replace("~", " ").split()
    last = len(words) - 1
    return "(" + next_to.join(_word(word, found.prefix and i == last, next_to) for i, word in enumerate(words)) + ")"


def tsquery_text(query: Query) -> str:
    """The parsed query in to_tsquery's syntax, each word a quoted operand: wanted terms ANDed, exclusions
    negated, phrases as words next to each other (<->)."""
    text = " & ".join(_term(found) for found in query.wanted)
    for found in query.excluded:
        text += f" & !{_term(found)}"
    return text


def candidates_text(query: Query) -> str | None:
    """For a query with an exclusion or a phrase (search.py's CANDIDATES): the messages it checks, those with
    every word it wants, in to_tsquery's syntax; None for a query that wants no more than its words. The index
    reads the lists of these words only: asked for `a & !b`, it read every message of `b` for each era (57 ms
    an era at a million messages, where `a` alone took 0.7)."""
    words = " & ".join(_term(found, " & ") for found in query.wanted)
    return words if words != tsquery_text(query) else None


# A message's era: its organization and which run of 2**ERA_BITS messages (by seq) it was stored in, kept as one
# more lexeme of its `words`: "~<org key>.<seq >> ERA_BITS>" (no query names it: the parser keeps "~1.0" whole,
# so `_term` splits a query's words at "~"). An organization's search asks the index of words for the query and
# one era at a time, newest era first, and stops when it has its window: the index hands over only matches, in
# the order of time.
# Changing ERA_BITS changes every row's lexeme: it takes a migration (schema.py).
ERA_BITS = 12
WORDS = (
    "to_tsvector('chatdock_search', content) || "
    f"array_to_tsvector(ARRAY['~' || org_id::text || '.' || (seq >> {ERA_BITS})::text])"
)
ERA = "('''~' || o.id::text || '.' || e.n::text || '''')::tsquery"  # era `e.n` of organization `o`, as a tsquery
RECENT_ERAS = 8  # the newest eras a search asks first: a word common lately is found there
WALK_ROWS = 10_000  # the organization's newest messages a prefix search reads first


def search_sql(
    org: int,
    text: str,
    contact_id: str | None,
    channel: str | None,
    role: str | None,
    window: int,
    how: str,
    upto: int | None = None,
    candidates: str | None = None,
    cap: int = 0,
    since: int = 0,
    bound: bool = False,
) -> tuple[str, list[Any]]:
    """The newest matches (at most `window`), newest first, of the tsquery `text`, scoped by organization (and
    contact, by any of its identifiers); the statement and its parameters. `how` says how they are found (the
    backend's `search` says when):

    - "eras": an organization's, era by era from the newest (ERA_BITS): a word in nearly every message stops in
      the newest era that holds it, however many messages without it came after, and no message that does
      not match is read; "recent eras": only in the `RECENT_ERAS` newest eras (a word common lately);
    - "newest": as the planner sees fit (one contact's: its own index);
    - "walk": only among the organization's `WALK_ROWS` newest messages (a prefix common lately is found there);
    - "index": every match, through the index of words, the newest kept: a prefix of few words (wordstats.py).

    With `upto`, none past that seq (a later page's search: the matches its first page considered). With
    `candidates` (`candidates_text`), the organization's search asks the index for those words, and checks the
    whole query on each message it hands over, up to `cap` of them (search.py's CANDIDATES), none before seq
    `since` (a later page's: its first page's bound); with `bound`, the statement gives instead the oldest seq
    and the number of the messages it would check."""
    # the organization by its key ($1), which the planner sees: named ($1 a name, ORG a sub-select), it took
    # a small organization's newest messages to be half the table, and read the primary key past every other
    # organization's for them (0.3 s beside a million), where the index of its own messages reads its own
    params: list[Any] = [org, contact_id, text]
    if how not in ("eras", "recent eras", "index"):
        candidates = None  # the walks check each message they read: the whole query is asked of them
    if candidates is not None:
        params.append(candidates)  # $4
    where = f" AND m.contact_pk = {CONTACT}" if contact_id is not None else " AND $2::text IS NULL"
    filters = ""  # a narrowed query's candidates are the messages with its words, whatever their channel or role
    for column, value in (("channel", channel), ("role", role)):
        if value is not None:
            params.append(value)
            filters += f" AND m.{column} = ${len(params)}"
    if candidates is None:
        where += filters
    below = ""
    newest_seq = "coalesce(max(seq), 0)"  # where the eras begin: the newest message's, or upto's
    if upto is not None:
        params.append(upto)
        below = f" AND m.seq <= ${len(params)}"
        where += below
        newest_seq = f"least(coalesce(max(seq), 0), ${len(params)})"
    oldest_era = "0"
    if candidates is not None and since:
        params.append(since)
        where += f" AND m.seq >= ${len(params)}"
        oldest_era = f"${len(params)} >> {ERA_BITS}"
    limit = ""  # the window: not asked for a bound
    if not bound:
        params.append(window)
        limit = f"${len(params)}"
    matches = "m.words @@ to_tsquery('chatdock_search', $3)"
    if how in ("eras", "recent eras"):
        asked, hit, each = "q.q", "", limit
        if candidates is not None:  # the index asked for the words; each message checked (`hit`), `cap` at most
            params.append(cap)
            asked, hit, each = "q.c", f", (m.words @@ q.q{filters}) AS hit", f"${len(params)}"
        # `m.seq + 0`: sorted after the look-up, never found by a walk of the primary key past non-matches
        found = (
            f"SELECT m.seq, {RANKED_CONTENT}{hit} FROM messages m WHERE m.words @@ {asked} AND m.words @@ {ERA} "
            # and truly of that era: a message whose own text has the era's word ("~1.0 invoice") is of its own
            # era only (it came back twice, once from era 0)
            f"AND m.seq >> {ERA_BITS} = e.n AND m.org_id = o.id{where} ORDER BY m.seq + 0 DESC LIMIT {each}"
        )
        last = f"greatest(t.n - {RECENT_ERAS - 1}, {oldest_era})" if how == "recent eras" else oldest_era
        words = "to_tsquery('chatdock_search', $3) AS q"
        words += ", to_tsquery('chatdock_search', $4) AS c" if candidates is not None else ""
        # newest first with no ORDER BY of its own, which would read every era before the LIMIT: the rows come
        # in the order the loop runs, era by era down the series, each era's sorted (tests/storage/test_postgres)
        sql = (
            f"SELECT f.* FROM orgs o, (SELECT {words}) q, "
            f"(SELECT {newest_seq} >> {ERA_BITS} AS n FROM messages) t, "
            f"generate_series(t.n, {last}, -1) e(n), "
            f"LATERAL ({found}) f WHERE o.id = $1 LIMIT {each}"
        )
        if bound:
            sql = f"SELECT min(c.seq), count(*) FROM ({sql}) c"
        elif candidates is not None:  # the matches among them, in the same order
            sql = f"SELECT c.seq, c.content FROM ({sql}) c WHERE c.hit LIMIT {limit}"
    elif how == "walk":
        newest = f"SELECT * FROM messages m WHERE m.org_id = $1{below} ORDER BY m.seq DESC LIMIT {WALK_ROWS}"
        sql = f"SELECT m.seq, {RANKED_CONTENT} FROM ({newest}) m WHERE {matches}{where} LIMIT {limit}"
    elif how == "index" and candidates is not None:
        # the index reads the wanted words' lists only; the newest `cap` of those messages are checked
        params.append(cap)
        asked = "m.words @@ to_tsquery('chatdock_search', $4)"
        hit = f"({matches}{filters}) AS hit"
        found = f"SELECT m.seq, {RANKED_CONTENT}, {hit} FROM messages m WHERE {asked} AND m.org_id = $1{where}"
        newest = f"SELECT * FROM found ORDER BY seq DESC LIMIT ${len(params)}"
        asked_for = "min(seq), count(*)" if bound else "seq, content"
        checked = "" if bound else f" WHERE hit LIMIT {limit}"
        sql = f"WITH found AS MATERIALIZED ({found}) SELECT {asked_for} FROM ({newest}) c{checked}"
    elif how == "index":
        found = f"SELECT m.seq, {RANKED_CONTENT} FROM messages m WHERE {matches} AND m.org_id = $1{where}"
        sql = f"WITH found AS MATERIALIZED ({found}) SELECT * FROM found ORDER BY seq DESC LIMIT {limit}"
    else:
        sql = f"SELECT m.seq, {RANKED_CONTENT} FROM messages m WHERE {matches} AND m.org_id = $1{where} "
        sql += f"ORDER BY m.seq DESC LIMIT {limit}"
    return sql, params
