"""The opaque `next_cursor` of a page of messages or of contacts: the keyset position of its last row (a time in
microseconds, then a sequence: a message's, or a contact's key), checked in full when it comes back.

The sequences number every message and every contact of the database, whatever its organization, so a cursor
that showed one would let an organization count the others' writes between two of its own pages. It is masked:
XORed with 63 bits of an HMAC, keyed by the database's own secret (migration "a secret of the database's own"), of
what is listed, the organization and the time. A database without the secret (opened where its migration could
not run) writes the position as it is, as chatdock did before for messages. A database reads only the form it
writes: a plain cursor given to a database with the secret is refused, since anyone can write one by hand and,
bisecting a position, learn the sequence of their own message, and from two of them the others' writes between
(found by a security review; a plain cursor of before the secret's migration asks for the list again). Each
list's cursors are its own: one list's cursor is not a position in another.

A search's cursor (`SearchPosition`) says where its pages stand in the ranked matches: how many came before, the
newest match the first page considered (the later pages rank the same matches, not those stored since: an
offset into a list that grew would repeat a hit) and the last hit given (a page goes on after it, wherever a
delete moved it). Its two sequences are masked in the same way, with a random number of the cursor's own in
what makes the mask (two cursors of one organization never share it: XORed together, they would give the
difference of two sequences) and the search it pages through (a cursor given to another query is refused).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from .errors import InvalidInput
from .search import MAX_SEARCH_OFFSET, MAX_TERMS

Position = tuple[int, int]

CURSOR_SECRET = "cursor"  # the name of the database's secret that keys the mask
MAX_CURSOR_CHARS = 128
MAX_SEARCH_CURSOR_CHARS = 512  # a search's: its last hit's features and its weights too (counts per query term)
_HIGHEST = 2**63 - 1  # both fields are signed 64-bit integers in every backend


@dataclass(frozen=True)
class Pages:
    """What a cursor pages through: its two forms' names, what its mask adds, and what to tell whoever sends one
    that is not valid."""

    plain: str  # the form without the mask
    masked: str
    domain: str  # hashed with the organization: "" for messages (the cursors chatdock has always written)
    lister: str  # what returned it
    # the forms (without, with the mask) that carry a check of the list they page through (its contact and
    # filters): written when there is one; the older forms are still read, as positions in any list
    bound: tuple[str, str] | None = None
    same: str = ""  # what a cursor of another list is told to keep the same


MESSAGES = Pages("v1", "v2", "", "list_messages", ("v3", "v4"), "with the same contact_id and filters")
CONTACTS = Pages("c1", "c2", "contacts\x00", "GET /contacts")


def _mask(key: bytes, pages: Pages, org: str, created_us: int) -> int:
    digest = hmac.digest(key, f"{pages.domain}{org}\x00{created_us}".encode(), hashlib.sha256)
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: a masked sequence stays a signed 64-bit integer


def _check(key: bytes | None, pages: Pages, org: str, listed: str, position: Position) -> int:
    """32 bits that tie a cursor to the list it pages through (`listed`: its contact and filters)."""
    material = f"check\x00{pages.domain}{org}\x00{listed}\x00{position[0]}\x00{position[1]}".encode()
    digest = hmac.digest(key, material, hashlib.sha256) if key else hashlib.sha256(material).digest()
    return int.from_bytes(digest[:4], "big")


def encode_cursor(
    position: Position, key: bytes | None = None, org: str = "", pages: Pages = MESSAGES, listed: str | None = None
) -> str:
    """The cursor of `position`; with `listed` (the list's contact and filters) and pages that have a bound
    form, one that only that list reads back."""
    created_us, seq = position
    masked = seq if key is None else seq ^ _mask(key, pages, org, created_us)
    if listed is not None and pages.bound is not None:
        version = pages.bound[key is not None]
        text = f"{version}:{created_us}:{masked}:{_check(key, pages, org, listed, position)}"
    else:
        text = f"{pages.plain if key is None else pages.masked}:{created_us}:{masked}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(
    value: object, key: bytes | None = None, org: str = "", pages: Pages = MESSAGES, listed: str | None = None
) -> Position:
    """The position a cursor names; InvalidInput for one not written here, or (a bound one) of another list."""
    if isinstance(value, str) and len(value) <= MAX_CURSOR_CHARS:
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
            version, created_text, seq_text, *checked = raw.split(":")
            created_us, seq = int(created_text), int(seq_text)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            pass
        else:
            in_range = 0 <= created_us <= _HIGHEST and 0 <= seq <= _HIGHEST
            masked = version in (pages.masked, *(pages.bound or ())[1:])
            if in_range and masked == (key is not None):  # only the form this database writes (the module)
                position = (created_us, seq ^ _mask(key, pages, org, created_us) if masked and key else seq)
                bound = pages.bound is not None and version in pages.bound
                known = version in (pages.plain, pages.masked) and not checked
                # only a cursor this module wrote: no sign, padding, spaces or leading zeros that int() would let by
                again = encode_cursor(position, key if masked else None, org, pages, listed if bound else None)
                if (known or bound) and again == value:
                    return position
                if bound and listed is not None:
                    raise InvalidInput(
                        f"cursor is not valid here: it was cut short or changed, or it pages through another list; "
                        f"pass next_cursor whole, {pages.same} as the {pages.lister} that returned it, or leave "
                        "cursor out for the first page"
                    )
    raise InvalidInput(
        f"cursor is not valid; pass next_cursor exactly as a previous {pages.lister} returned it, or leave cursor "
        "out for the first page"
    )


@dataclass(frozen=True)
class SearchPosition:
    """Where the next page of a search begins (see the module's docstring)."""

    offset: int  # hits given before it
    upto: int | None  # the newest seq the search considers (None: a cursor of before 2026-12-07, an offset only)
    after: int | None  # the seq of the last hit given
    features: tuple[int, ...] = ()  # what that hit's rank is made of (ranking.features): its place, if deleted
    weights: tuple[int, ...] = ()  # what the first page's ranking weighed the matches by (ranking.Ranking)
    # the oldest seq a narrowed search considers (search.py's CANDIDATES: the first page's bound; 0: none), so
    # the later pages check the same messages; None: a cursor of before 2026-12-07's, which counts them again
    since: int | None = None


_SEARCH_PLAIN, _SEARCH_MASKED, _SEARCH_OFFSET_ONLY = "s6", "s7", "s1"
_SEARCH_PLAIN_4, _SEARCH_MASKED_5 = "s4", "s5"  # without `since`: still read
_HINT = (
    "cursor is not valid; pass next_cursor exactly as a previous search_messages returned it, with the same query "
    "and filters (a cursor pages through the search that gave it), or leave cursor out for the first page"
)


def _keyed(key: bytes | None, org: str, offset: int, nonce: int, searched: str) -> tuple[int, int, int, int]:
    """A search cursor's masks of its three sequences (upto, after, since) and its check: of the database's secret
    when it has one, the organization, the offset, the cursor's own random number (two cursors never share their
    masks) and the search it pages through (`searched`: its query and filters)."""
    material = f"search\x00{org}\x00{offset}\x00{nonce}\x00{searched}".encode()
    digest = hmac.digest(key, material, hashlib.sha256) if key else hashlib.sha256(material).digest()
    return (
        int.from_bytes(digest[0:8], "big") >> 1,
        int.from_bytes(digest[8:16], "big") >> 1,
        int.from_bytes(digest[20:28], "big") >> 1,
        int.from_bytes(digest[16:20], "big"),
    )


def encode_search_cursor(position: SearchPosition, searched: str, key: bytes | None = None, org: str = "") -> str:
    offset, upto, after = position.offset, position.upto, position.after
    if upto is None or after is None:
        text = f"{_SEARCH_OFFSET_ONLY}:{offset}"
    else:
        nonce = secrets.randbits(32)
        upto_mask, after_mask, since_mask, check = _keyed(key, org, offset, nonce, searched)
        if key is None:
            version, upto_mask, after_mask, since_mask = _SEARCH_PLAIN, 0, 0, 0
        else:
            version = _SEARCH_MASKED
        its = "-".join(str(figure) for figure in position.features)
        weights = "-".join(str(figure) for figure in position.weights)
        since = (position.since or 0) ^ since_mask
        text = f"{version}:{offset}:{nonce}:{upto ^ upto_mask}:{after ^ after_mask}:{since}:{check}:{its}:{weights}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_search_cursor(value: object, searched: str, key: bytes | None = None, org: str = "") -> SearchPosition:
    """The position a search cursor names; InvalidInput for one not written here, or for another search."""
    if isinstance(value, str) and len(value) <= MAX_SEARCH_CURSOR_CHARS:
        try:
            text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
            version, *fields = text.split(":")
            figures = [[int(figure) for figure in field.split("-")] for field in fields]
        except (ValueError, binascii.Error, UnicodeDecodeError):
            text, version, figures = "", "", []
        found = None
        if version == _SEARCH_OFFSET_ONLY and len(figures) == 1 and len(figures[0]) == 1:
            found = SearchPosition(figures[0][0], None, None)
        elif version in (_SEARCH_PLAIN_4, _SEARCH_MASKED_5):  # from before `since`: the same, without it
            figures = [*figures[:4], [0], *figures[4:]] if len(figures) == 7 else []
            found = _position(figures, version == _SEARCH_MASKED_5, key, org, searched, with_since=False)
        elif version in (_SEARCH_PLAIN, _SEARCH_MASKED):
            found = _position(figures, version == _SEARCH_MASKED, key, org, searched, with_since=True)
        # in range, and written as this module writes it (no sign, padding or leading zeros that int() lets by)
        if (
            found is not None
            and 0 < found.offset <= MAX_SEARCH_OFFSET
            and all(0 <= seq <= _HIGHEST for seq in (found.upto, found.after, found.since) if seq is not None)
            and all(0 <= figure <= _HIGHEST for figure in (*found.features, *found.weights))
            and base64.urlsafe_b64encode(text.encode()).decode().rstrip("=") == value
            and all(part == str(int(part)) for field in text.split(":")[1:] for part in field.split("-"))
        ):
            return found
    raise InvalidInput(_HINT)


def _position(
    figures: list[list[int]], masked: bool, key: bytes | None, org: str, searched: str, with_since: bool
) -> SearchPosition | None:
    """A search cursor's fields (offset, nonce, upto, after, since, check, features, weights), unmasked and
    checked; None when they are not a position this module wrote."""
    if not (
        len(figures) == 8
        and all(len(figure) == 1 for figure in figures[:6])
        and 0 < len(figures[6]) <= 1 + MAX_TERMS
        and len(figures[7]) == len(figures[6]) + 1
        and masked == (key is not None)  # only the form this database writes (the module's docstring)
    ):
        return None
    (offset,), (nonce,), (upto,), (after,), (since,), (check,), its, weights = figures
    upto_mask, after_mask, since_mask, wanted = _keyed(key if masked else None, org, offset, nonce, searched)
    if not masked:
        upto_mask = after_mask = since_mask = 0
    if not (0 <= nonce < 2**32 and check == wanted):
        return None
    at_since = (since ^ since_mask) if with_since else None
    return SearchPosition(offset, upto ^ upto_mask, after ^ after_mask, tuple(its), tuple(weights), at_since)
