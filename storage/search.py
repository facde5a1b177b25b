"""Full-text search queries: what a caller may write, parsed here into a query no backend can misread.

    refund            messages with a word that is (case and accents aside) "refund"
    refund*           ... a word that starts with "refund"
    "order 1234"      ... these words, in this order, next to each other
    -voucher          ... and without the word "voucher"

Words are joined by AND. Anything else in a query is part of a word (punctuation separates words as the
index does); a word without a letter or a digit (`?`, `&`, an emoji) is left out. A query that cannot be
read (a quote left open, only exclusions, nothing at all, control characters, over 1,000 characters) is an
InvalidInput that says why; a backend only ever receives the parsed `Query`, never the caller's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import validation as check
from .errors import InvalidInput

MAX_QUERY_CHARS = 1000
MAX_TERMS = 32
# the words of a query in all, each word of a phrase and each part of a hyphenated word counting: a phrase or a
# run of hyphens (1-2-3-...) of hundreds of words, each asked as a phrase of the index, kept PostgreSQL busy for
# seconds, past --db-timeout (a review); a sentence in quotes is far below it
MAX_WORDS = 64
MAX_SEARCH_OFFSET = 1000  # how deep the pages of one search go: the newest matches it ranks (ranking.py)
# A query with an exclusion or a phrase (and no prefix) looks for its matches among the newest CANDIDATES messages
# (of the organization, or of the contact) that hold all its words, its phrases' words in any order, its exclusions
# aside; its later pages check the same messages (the cursor carries the oldest).
# Its words may each be in most messages while few messages match the whole query ("hello -there"); the index
# hands over the messages of the words, each of which must then be checked, so without a bound such a search
# read every message of its words (10 s at a million messages on PostgreSQL, where it hit --db-timeout).
CANDIDATES = 10_000  # 20,000 gave a phrase of common words a p99 of 90-98 ms on PostgreSQL at a million


@dataclass(frozen=True, slots=True)
class Term:
    text: str  # one word, or the words of a phrase separated by single spaces
    prefix: bool = False  # the last word may continue (refund*)


@dataclass(frozen=True, slots=True)
class Query:
    wanted: tuple[Term, ...]
    excluded: tuple[Term, ...]


# Words of other search syntaxes a model (or a person) writes, which search would take as words to find (OR,
# AND) or drop as marks (|, &&), finding nothing, or something else, without a word of why: refused, saying how
OR = (
    "search has no OR, every word must be in the messages it finds: search for each on its own{example}; to find "
    'the word itself, quote it ("OR")'
)
AND = 'every word must be in the messages found already: leave it out; to find the word itself, quote it ("AND")'
OPERATORS = {
    "OR": OR,
    "|": OR,
    "||": OR,
    "AND": AND,
    "&&": AND,
    "NOT": 'exclude a word with a minus: refund -paid; to find the word itself, quote it ("NOT")',
}


_TOKENS = re.compile(r'-?"[^"]*"\*?|\S+')  # a query's words and phrases, as parse_query reads them


def _either(before: str, after: str) -> str:
    """The searches to make one at a time, from the query's own words or phrases on either side of its OR:
    ` ("late delivery", then refund)` (a fixed example was copied by a model), or nothing when a side has none."""
    sides = [
        [token for token in _TOKENS.findall(side) if token not in OPERATORS and not token.startswith("-")]
        for side in (before, after)
    ]
    if not sides[0] or not sides[1]:
        return ""
    return f" ({sides[0][-1]}, then {sides[1][0]})"


def parse_query(text: object) -> Query:
    if not isinstance(text, str):
        raise InvalidInput(f"query must be a string, got {type(text).__name__}")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInput(f"query must be at most {MAX_QUERY_CHARS} characters, got {len(text)}")
    refused = check.refused_character(text)
    if refused is not None:
        index, category = refused
        if category == "Cs":
            check.whole_characters(text, "query")  # half a character: said as for every other text
        raise InvalidInput(
            "query must not contain control or invisible format characters (NUL, newline, ...); it has "
            f"U+{ord(text[index]):04X} at position {index + 1}: put the words on one line, without it"
        )
    wanted: list[Term] = []
    excluded: list[Term] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
            continue
        negated = char == "-"
        start = position + 1 if negated else position
        if start < len(text) and text[start] == '"':
            end = text.find('"', start + 1)
            if end < 0:
                raise InvalidInput(
                    f'query has a quote at position {start + 1} that is not closed; close the phrase with "'
                )
            words = _findable(text[start + 1 : end])
            position = end + 1
            prefix = position < len(text) and text[position] == "*"
            position += 1 if prefix else 0
        else:
            end = start
            while end < len(text) and not text[end].isspace():
                end += 1
            word = text[start:end]
            if not negated and word in OPERATORS:
                said = OPERATORS[word].format(example=_either(text[:start], text[end:]))
                raise InvalidInput(f"query has {word} at position {start + 1}: {said}")
            position = end
            prefix = word.endswith("*")
            words = _findable(word.rstrip("*").replace('"', " "))
        if not words:
            continue
        (excluded if negated else wanted).append(Term(words, prefix))
    if len(wanted) + len(excluded) > MAX_TERMS:
        raise InvalidInput(f"query may hold at most {MAX_TERMS} words and phrases, got {len(wanted) + len(excluded)}")
    counted = sum(len(_PARTS.findall(term.text)) for term in (*wanted, *excluded))
    if counted > MAX_WORDS:
        raise InvalidInput(
            f"query may hold at most {MAX_WORDS} words in all, each word of a phrase and each part of a hyphenated "
            f"word counting, got {counted}; search for fewer of them"
        )
    if not wanted:
        raise InvalidInput(
            "query needs at least one word to find, with a letter or a digit (a -word only excludes); like: refund, "
            'refund*, "order 1234"'
        )
    return Query(tuple(wanted), tuple(excluded))


_PARTS = re.compile(r"[^\s~-]+")  # a term's words and their hyphenated parts, as the engines' queries ask for them


def _findable(text: str) -> str:
    """The words of `text` that a search can find, separated by single spaces: those with a letter or a digit
    (a mark alone, `?`, `&`, an emoji, is no word of the index on either engine: kept, it would find nothing on
    one engine and be dropped by the other, which also shifts a phrase's words)."""
    return " ".join(word for word in text.split() if any(char.isalnum() for char in word))
