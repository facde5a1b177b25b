"""How common a search's words are, from PostgreSQL's own statistics of the `words` column.

ANALYZE keeps the most common lexemes of a tsvector column with the share of rows that hold each
(`pg_stats.most_common_elems`, `most_common_elem_freqs`). A word among them in at least `COMMON_SHARE` of the
messages is common: its newest matches are found by walking the messages from the newest back, which stops
soon. Any other word is in fewer messages (or in none the statistics saw), and its matches are read through
the index of words. The planner's own estimate is no guide here: for a word missing from the statistics it
assumes a fixed share of the table, which at ten million messages made it walk the whole table for a word in
100 of them (8 s).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..ranking import fold, folded_words
from ..search import Query, Term

COMMON_SHARE = 0.01  # a word in at least this share of the messages is walked for
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

    async def common(self, query: Query) -> bool:
        """Whether every wanted term of `query` is in at least `COMMON_SHARE` of the messages (so are their
        matches, at most: a query is as common as its rarest term)."""
        if time.monotonic() - self._read_at > REFRESH_SECONDS:
            found = await self._read(STATS_SQL, ())
            self._shares = {}
            if found and found[0][0] is not None:
                elems, shares = found[0][0], found[0][1]
                self._shares = {fold(elem): share for elem, share in zip(elems, shares, strict=False)}
            self._read_at = time.monotonic()
        return all(self._share(term) >= COMMON_SHARE for term in query.wanted)

    def _share(self, term: Term) -> float:
        words = folded_words(term.text)
        if not words:
            return 0.0
        shares = [self._shares.get(word, 0.0) for word in words[:-1]]
        last = words[-1]
        if term.prefix:  # every common lexeme that starts so: an upper bound of the prefix's share
            shares.append(min(1.0, sum(share for elem, share in self._shares.items() if elem.startswith(last))))
        else:
            shares.append(self._shares.get(last, 0.0))
        return min(shares)  # a phrase is in no more messages than its rarest word
