"""How search hits are ranked and marked, the same on every engine.

The engines find the matches (SQLite's FTS5, PostgreSQL's text search) and hand over the newest `WINDOW` of
them, newest first; this module ranks those by relevance and marks the matched words in a snippet. Ranking
relevance over all matches costs in proportion to how common a word is (a word in nearly every message is in a
million of them at a million messages: FTS5's bm25 counts them all for each query), so the rule is:

    a search considers the `WINDOW` most recently stored messages that match, and gives them best match first

(BM25, k1 = 1.2, b = 0.75, over those messages: each term's weight by how few of them hold it, each message's
score by how often it holds the terms, for its length). A word in fewer than `WINDOW` messages is ranked over
all of them. Ties go to the newer message. A message's rank counts its first `RANKED_CHARS` characters (its
words and length there): a thousand matches of 32,000 characters took 2 s of CPU to rank whole, where a
chat message is rarely a tenth of what is counted; a match further on is found, and ranked as holding none.
The store ranks, and writes snippets, off the event loop.

Words here are what the engines' tokenizers make of a text, closely enough to count and mark them: runs of
letters and digits, compared without case and accents.
"""

from __future__ import annotations

import math
import re
import unicodedata
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from .search import MAX_SEARCH_OFFSET, Query, Term

WINDOW = MAX_SEARCH_OFFSET  # the newest matches a search ranks (see the rule above)
SNIPPET_WORDS = 16  # words of a hit's text around its first match
RANKED_CHARS = 4_000  # of each message, what its rank counts (see the rule above)
K1, B = 1.2, 0.75

_WORD = re.compile(r"[^\W_]+")
_LAST_WORD = re.compile(r"[^\W_]+$")


# Letters with a stroke or joined that have no decomposition to strip, which PostgreSQL's unaccent folds (so a
# search for "lodz" finds "Łódź" there, and its snippet must mark it). SQLite's index keeps them as they are, and
# then finds only the same letters, which fold alike here.
_UNDECOMPOSED = str.maketrans(
    {
        "ł": "l",
        "ø": "o",
        "đ": "d",
        "ð": "d",
        "ħ": "h",
        "\u0131": "i",
        "ŧ": "t",
        "ĸ": "q",
        "œ": "oe",
        "æ": "ae",
        "þ": "th",
    }
)


def fold(text: str) -> str:
    """Without case and accents, as the index compares words: "Café" -> "cafe", "Łódź" -> "lodz"."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(char for char in decomposed if not unicodedata.combining(char)).translate(_UNDECOMPOSED)


def folded_words(text: str) -> list[str]:
    """The words of `text`, folded (`words` without where they are: what ranking needs)."""
    return _WORD.findall(fold(text))


def words(text: str) -> list[tuple[str, int, int]]:
    """Each word of `text`: its folded form, and where it starts and ends in `text`."""
    return [(fold(found.group()), found.start(), found.end()) for found in _WORD.finditer(text)]


def _pattern(term: Term) -> list[str]:
    return folded_words(term.text)


def _occurrences(pattern: list[str], prefix: bool, folded: list[str]) -> list[int]:
    """Where the words of `pattern` start, in order and next to each other, in `folded`; the last one may
    continue when `prefix`."""
    size = len(pattern)
    if not size:
        return []
    if size == 1 and not prefix:
        return [index for index, word in enumerate(folded) if word == pattern[0]]
    found = []
    for start in range(len(folded) - size + 1):
        if folded[start : start + size - 1] != pattern[:-1]:
            continue
        last = folded[start + size - 1]
        if last == pattern[-1] or (prefix and last.startswith(pattern[-1])):
            found.append(start)
    return found


class Ranking(NamedTuple):
    seqs: list[int]  # best match first
    weights: tuple[int, ...]  # what the weights were made of: the matches, their words, and how many hold each term
    place: int | None  # where the absent message asked about ranks among them (None: none asked, or not placed)


def rank(
    query: Query,
    newest_first: Sequence[tuple[int, str]],
    weights: Sequence[int] | None = None,
    absent: tuple[int, Sequence[int]] | None = None,
) -> Ranking:
    """The seqs of `newest_first` (the newest matches, each its seq and content, as an engine found them), best
    match first. A search's later pages give the `weights` its first page was ranked with (deleted matches then
    take nothing from the others' order), and ask where its last hit would rank, were it there: `absent`, its
    seq and `features`."""
    patterns = _patterns(query)
    counts: list[Sequence[int]] = []  # for each message, how often it holds each term
    lengths: list[int] = []
    for _, content in newest_first:
        length, each = _measured(patterns, content)
        lengths.append(length)
        counts.append(each)
    if weights is None or len(weights) != 2 + len(patterns):
        holding = [sum(1 for each in counts if each[term] > 0) for term in range(len(patterns))]
        weights = (len(newest_first), sum(lengths), *holding)
    total, words, *held_by = weights
    average = max(1.0, words / max(1, total))
    idf = [math.log(1 + (total - held + 0.5) / (held + 0.5)) for held in held_by]

    def score(each: Sequence[int], length: int) -> float:
        norm = K1 * (1 - B + B * length / average)
        return sum(weight * count * (K1 + 1) / (count + norm) for weight, count in zip(idf, each, strict=True))

    # newest first among equals: the age is the place by seq among the messages found
    keyed: list[tuple[float, float, int | None]] = [
        (-score(each, length), index, seq)
        for index, ((seq, _), each, length) in enumerate(zip(newest_first, counts, lengths, strict=True))
    ]
    if absent is not None and len(absent[1]) == 1 + len(patterns):
        seq, (length, *each) = absent
        age = sum(1 for found, _ in newest_first if found > seq) - 0.5  # just before the next older one
        keyed.append((-score(each, length), age, None))
    ordered = [seq for _, _, seq in sorted(keyed, key=lambda key: (key[0], key[1]))]
    place = next((index for index, seq in enumerate(ordered) if seq is None), None)
    return Ranking([seq for seq in ordered if seq is not None], tuple(weights), place)


def features(query: Query, content: str) -> tuple[int, ...]:
    """What a message's rank is made of: the number of its words counted, then how often it holds each wanted
    term (a search cursor carries its last hit's, to find its place again should it be deleted)."""
    length, each = _measured(_patterns(query), content)
    return (length, *each)


def _patterns(query: Query) -> list[tuple[list[str], bool]]:
    """The wanted terms' folded words, each with whether its last word is a prefix."""
    return [(_pattern(term), term.prefix) for term in query.wanted]


def _measured(patterns: list[tuple[list[str], bool]], content: str) -> tuple[int, list[int]]:
    """A message's words counted for its rank, and how often it holds each of `patterns`."""
    folded = folded_words(_ranked_part(content))
    return len(folded), _term_counts(patterns, folded)


def _ranked_part(content: str) -> str:
    """What a message's rank counts: its first RANKED_CHARS characters, less a word the cut went through (the
    engines send one character more, to tell)."""
    if len(content) <= RANKED_CHARS:
        return content
    part = content[:RANKED_CHARS]
    cut = _LAST_WORD.search(part) if _WORD.match(content, RANKED_CHARS) else None
    return part if cut is None else part[: cut.start()]


def _term_counts(patterns: list[tuple[list[str], bool]], folded: list[str]) -> list[int]:
    """How often `folded` (a message's words) holds each term: a word by a look-up, a prefix by the range of the
    message's words it begins (sorted once), a phrase by a walk from where its first word is; so that a query of
    many terms costs little more than one."""
    tally = Counter(folded)
    ordered: list[str] | None = None
    counted = []
    for pattern, prefix in patterns:
        if len(pattern) == 1 and not prefix:
            counted.append(tally.get(pattern[0], 0))
        elif len(pattern) == 1:
            ordered = sorted(tally) if ordered is None else ordered
            begun = ordered[bisect_left(ordered, pattern[0]) : bisect_left(ordered, pattern[0] + "\U0010ffff")]
            counted.append(sum(tally[word] for word in begun))
        else:
            counted.append(len(_occurrences(pattern, prefix, folded)) if pattern[0] in tally else 0)
    return counted


def snippet(query: Query, text: str) -> str:
    """Up to `SNIPPET_WORDS` words of `text` around its first match, the matched words marked [ ] (the text's own
    brackets and backslashes escaped by a backslash), "..." where the text goes on; on one line. The text is
    read in NFC: an accent typed apart (NFD: "e" + U+0301) is one letter with its base there, so a marked word
    keeps its accents inside its [ ] (and NFD "cafés" is one word, as the index and `folded_words` read it,
    not "cafe" and "s")."""
    text = unicodedata.normalize("NFC", text)
    found = words(text)
    folded = [word for word, _, _ in found]
    spans: list[tuple[int, int]] = []  # each match's first and last word: a phrase's words are one match
    for term in query.wanted:
        pattern = _pattern(term)
        spans += [(start, start + len(pattern) - 1) for start in _occurrences(pattern, term.prefix, folded)]
    marks: list[tuple[int, int]] = []  # overlapping matches merged; matches side by side stay apart
    for first, last in sorted(spans):
        if marks and first <= marks[-1][1]:
            marks[-1] = (marks[-1][0], max(marks[-1][1], last))
        else:
            marks.append((first, last))
    mark = {index: (first, last) for first, last in marks for index in range(first, last + 1)}
    start = max(0, min((marks[0][0] if marks else 0) - SNIPPET_WORDS // 4, len(found) - SNIPPET_WORDS))
    end = min(len(found), start + SNIPPET_WORDS)
    if not found:
        return " ".join(_escaped(text).split())
    pieces = ["..." if start > 0 else ""]
    position = found[start][1] if start > 0 else 0
    for index in range(start, end):  # a match marked as one, a phrase's words together: [order 1234]
        _, begin, finish = found[index]
        within = mark.get(index)
        opens = within is not None and index in (within[0], start)
        pieces.append(_escaped(text[position:begin]) + ("[" if opens else "") + _escaped(text[begin:finish]))
        if within is not None and index in (within[1], end - 1):
            pieces.append("]")
        position = finish
    pieces.append(_escaped(text[position:]) if end == len(found) else "...")
    return " ".join("".join(pieces).split())


def _escaped(text: str) -> str:
    """The text's own `[`, `]` and `\\` escaped by a `\\`, so that the only bare brackets of a snippet are its
    marks (a stored "[URGENT]" reads `\\[URGENT\\]`)."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
