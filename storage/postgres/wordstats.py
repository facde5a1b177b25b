"""How common a search's words are, from PostgreSQL's own statistics of the `words` column.

ANALYZE keeps the most common lexemes of a tsvector column with the share of rows that hold each
(`pg_stats.most_common_elems`, `most_common_elem_freqs`). The search of an organization (backend.search) asks
for a word's newest matches era by era when it is in at least `ERA_SHARE` of the messages, and a prefix's by a
walk from the newest message back when its words are in at least `COMMON_SHARE`: both stop soon. Any other
word or prefix is in fewer messages (or in none the statistics saw), and its matches are read through the
index of words at once. The planner's own estimate is no guide here: for a word missing from the statistics
it assumes a fixed share of the table, which at ten million messages made it walk the whole table for a word
in 100 of them (8 s).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..ranking import fold, folded_words
from ..search import Query, Term
from .queries import asked_signed

COMMON_SHARE = 0.01  # a prefix of words in at least this share of the messages is walked for
# a word in at least this share of the messages is looked for era by era (queries.py): the window of 1,000
# fills within about 250 eras; a rarer one is read through the index at once, its matches being few (a
# look-up per era, about 70 us at ten million messages, cost a word in a few messages 172 ms there)
ERA_SHARE = 0.001
REFRESH_SECONDS = 60.0  # the statistics are read again after this long (autovacuum's ANALYZE renews them)

STATS_SQL = (
    "SELECT most_common_elems::text::text[], most_common_elem_freqs FROM pg_stats "
    "WHERE schemaname = current_schema() AND tablename = 'messages' AND attname = 'words'"
)


class WordStats:
    """The share of messages each common lexeme is in, read at most every `REFRESH_SECONDS`."""

    def __init__(self, read: Callable[[str, Sequence[Any]], Awaitable[list[Any]]]) -> None:
        self._read = read
        self._shares: dict[str, float] = {}
        self._read_at = float("-inf")

    async def share(self, query: Query) -> float:
        """At most the share of the messages that hold every wanted term of `query`: a query is as common as
        its rarest term, and a word the statistics do not list is taken to be in none."""
        if time.monotonic() - self._read_at > REFRESH_SECONDS:
            found = await self._read(STATS_SQL, ())
            self._shares = {}
            if found and found[0][0] is not None:
                elems, shares = found[0][0], found[0][1]
                self._shares = {fold(elem): share for elem, share in zip(elems, shares, strict=False)}
            self._read_at = time.monotonic()
        return min((self._share(term) for term in query.wanted), default=1.0)

    def _share(self, term: Term) -> float:
        words = folded_words(term.text)
        if not words:
            return 0.0
        shares = [self._of(word) for word in words[:-1]]
        last = words[-1]
        if term.prefix:  # every common lexeme that starts so: an upper bound of the prefix's share
            starts = (last, "-" + last) if asked_signed(last) else (last,)
            shares.append(min(1.0, sum(share for elem, share in self._shares.items() if elem.startswith(starts))))
        else:
            shares.append(self._of(last))
        return min(shares)  # a phrase is in no more messages than its rarest word

    def _of(self, word: str) -> float:
        """A word's share; a number's with its signed form's, which a search of it also asks for (queries.py:
        the "-2023" of "INV-2023-17" is one lexeme there), so that a number common only signed is not taken for
        a rare one, read all at once."""
        share = self._shares.get(word, 0.0)
        return min(1.0, share + self._shares.get("-" + word, 0.0)) if asked_signed(word) else share
