"""The contract's bounds, checked before anything is written; each failure says what to fix."""

from __future__ import annotations

import json
import math
import re
import unicodedata
import uuid
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from .errors import InvalidInput
from .models import CHAT_STATUSES, ROLES, ChatStatus, Part, Role
from .models import MAX_TEXT_CHARS as MAX_TEXT_CHARS  # a rule of this module's; the models' schemas say it too
from .models import format_timestamp as format_time

MAX_ID_CHARS = 256
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 32
MAX_PARTS = 100
MIN_LIMIT, MAX_LIMIT = 1, 200
MAX_MAX_CHARS = 10_000_000

CHANNEL_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")


def _shown(value: object, width: int = 40) -> str:
    """A value as it may be echoed in an error: repr, cut short."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# Control, format and line/paragraph separator characters: invisible or line-breaking, they would make
# look-alike identifiers (a zero-width space, a right-to-left override) or break a transcript's lines.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})  # Cs: half a character (a lone surrogate)

# Unicode's Default_Ignorable_Code_Point property, as listed in DerivedCoreProperties.txt of the Unicode
# Character Database (15.1; https://www.unicode.org/Public/UCD/latest/ucd/DerivedCoreProperties.txt): the
# code points a renderer draws as nothing. Python's unicodedata has no such property, hence the ranges here.
# Most are Cf (refused as such already); the others are marks and letters that show nothing.
DEFAULT_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x061C, 0x061C),  # Arabic letter mark
    (0x115F, 0x1160),  # Hangul choseong and jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors, vowel separator
    (0x200B, 0x200F),  # zero-width space, joiners, direction marks
    (0x202A, 0x202E),  # direction embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, direction isolates, deprecated format characters
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors 1 to 16
    (0xFEFF, 0xFEFF),  # zero-width no-break space (byte order mark)
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xFFF0, 0xFFF8),  # reserved
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical beam and phrase controls
    (0xE0000, 0xE0FFF),  # tag characters, variation selectors 17 to 256, reserved
)
_IGNORABLE_STARTS = tuple(start for start, _ in DEFAULT_IGNORABLE)

REPLACEMENT = "\ufffd"  # what a decoder puts for bytes it could not read (the SDK's stdio reader does)

# Characters drawn as an empty space although they are neither white space nor default-ignorable.
BLANKS = frozenset({"\u2800"})  # braille pattern blank

# Spaces that look like the plain space U+0020 inside an id ("Zoë\u00a0Müller" and "Zoë Müller" would be
# two contacts): every Zs space but U+0020 itself and the ideographic space U+3000, which is drawn as wide
# as a CJK character and so looks different.
LOOKALIKE_SPACES = frozenset(
    chr(code) for code in range(0x10000) if unicodedata.category(chr(code)) == "Zs" and code not in (0x20, 0x3000)
)


def default_ignorable(char: str) -> bool:
    """Whether `char` is a Default_Ignorable_Code_Point (see DEFAULT_IGNORABLE)."""
    code = ord(char)
    at = bisect_right(_IGNORABLE_STARTS, code) - 1
    return at >= 0 and code <= DEFAULT_IGNORABLE[at][1]


def normal_identifier(value: str) -> str:
    """An identifier as it is stored: Unicode NFC (so "José" typed either way is one contact)."""
    return unicodedata.normalize("NFC", value)


def refused_character(value: str) -> tuple[int, str] | None:
    """The first control, format or separator character (position, category) in `value`, or None. Free text
    (a search query) is held to this; identifiers to `unseen_character`, which refuses more."""
    for index, char in enumerate(value):
        category = unicodedata.category(char)
        if category in REFUSED_CATEGORIES:
            return index, category
    return None


def unseen_character(value: str) -> tuple[int, str] | None:
    """The first character (position, kind) an identifier may not hold, or None. Kind is the category of a
    control, format or separator character; "ignorable" for any other default-ignorable code point
    (variation selectors, U+034F, the Hangul fillers, ...); "blank" for a blank look-alike (U+2800); "edge"
    for white space (U+0020, U+00A0, any Zs, ...) at either end. Each would let two identifiers that look the
    same name two contacts. White space inside an identifier ("Zoë Müller") is allowed."""
    if value.isascii() and value.isprintable() and value.strip() == value:
        return None  # the common case, quickly: printable ASCII hides nothing but white space at the ends
    first = len(value) - len(value.lstrip())
    last = len(value.rstrip())
    for index, char in enumerate(value):
        category = unicodedata.category(char)
        if category in REFUSED_CATEGORIES:
            return index, category
        if default_ignorable(char):
            return index, "ignorable"
        if char in BLANKS:
            return index, "blank"
        if (index < first or index >= last) and char.isspace():
            return index, "edge"
        if char in LOOKALIKE_SPACES:
            return index, "space"
    return None


def identifier(value: object, name: str) -> str:
    """A contact, alias or agent id: NFC, 1 to 256 characters, none a person cannot see.

    Characters a person cannot see (control, format and separator characters, default-ignorable code points,
    blank look-alikes, white space at either end) are refused, not removed: chatdock never changes an id
    behind its caller's back (beyond NFC, which changes no character's look), so the id a caller keeps is
    the id results name, and the error tells the caller which character to remove. Ids stored before a
    character was refused are cleaned by a migration (sqlite/schema.py, postgres/schema.py), which keeps
    and logs a look-alike pair instead of merging it.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    value = normal_identifier(value)
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise InvalidInput(f"{name} must be 1 to {MAX_ID_CHARS} characters, got {len(value)}")
    if REPLACEMENT in value:  # a decoding's trace, not a character anyone typed: "José" and "Josë" both read so
        raise InvalidInput(
            f"{name} must not contain U+FFFD, the replacement character (at position {value.index(REPLACEMENT) + 1}): "
            "it stands for bytes that were not UTF-8 where the text was read (over stdio, a line that is not "
            "UTF-8 arrives so), and two different ids would become one; send the id as UTF-8"
        )
    found = unseen_character(value)
    if found is None:
        return value
    index, kind = found
    where = f"it has U+{ord(value[index]):04X} at position {index + 1}"
    if kind == "Cs":
        whole_characters(value, name)
    if kind == "Cc":
        raise InvalidInput(f"{name} must not contain control characters (NUL, newline, tab, ...), got {_shown(value)}")
    if kind == "edge":
        raise InvalidInput(
            f"{name} must not start or end with white space (a space, a no-break space U+00A0, ...); {where}: "
            "remove it (ids are refused, never trimmed, so that an id is never changed behind your back)"
        )
    if kind == "space":
        raise InvalidInput(
            f"{name} must not contain a space other than the plain space U+0020 (a no-break space U+00A0, a thin "
            f"space, ...): it looks the same and would name another contact; {where}: write a plain space instead"
        )
    if kind in ("ignorable", "blank"):
        raise InvalidInput(
            f"{name} must not contain characters a person cannot see (variation selectors, U+034F, Hangul "
            f"fillers, the braille blank U+2800, ...): an id that looks like another would name another "
            f"contact; {where}: remove it (ids are refused, never cleaned, so that an id is never changed "
            "behind your back)"
        )
    raise InvalidInput(
        f"{name} must not contain invisible format or line-separator characters (zero-width space, "
        f"right-to-left override, U+2028, ...); {where}"
    )


def cleaned_identifier(value: str) -> str:
    """What a stored identifier looks like to a person: NFC, without default-ignorable code points, blanks
    (U+2800) and look-alike spaces (U+00A0, ...) as plain spaces, no white space at either end. Used only on
    ids stored before they were refused; the result may still be refused (a control character, nothing
    left), see `acceptable_identifier`."""
    if value.isascii() and value.isprintable() and value.strip() == value:
        return value  # the common case, quickly: nothing in printable ASCII is unseen but white space at the ends
    kept = "".join(
        " " if char in BLANKS or char in LOOKALIKE_SPACES else char for char in value if not default_ignorable(char)
    )
    return normal_identifier(normal_identifier(kept).strip())


def acceptable_identifier(value: str) -> bool:
    """Whether `identifier` takes `value` as it is."""
    return 1 <= len(value) <= MAX_ID_CHARS and normal_identifier(value) == value and unseen_character(value) is None


def visible(value: str) -> str:
    """An identifier as a log shows it: quoted, each character a person cannot see written as an escape
    (\\ufe0f), so that two look-alikes in a log line look different."""
    first = len(value) - len(value.lstrip())
    last = len(value.rstrip())
    shown = []
    for index, char in enumerate(value):
        hidden = not char.isprintable() or default_ignorable(char) or char in BLANKS
        if hidden or (char == " " and not first <= index < last):
            code = ord(char)
            shown.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            shown.append(char)
    return "'" + "".join(shown) + "'"


@dataclass(frozen=True, slots=True)
class StoredIdentifier:
    """An identifier as a migration reads it: its organization (key, name), its contact (key, own id)."""

    org_key: int
    org: str
    identifier: str
    contact_key: int
    contact: str
    created_us: int

    @property
    def own(self) -> bool:
        """Whether it is its contact's own contact_id (else one of its aliases)."""
        return self.identifier == self.contact


Cleanup = Literal["rename", "drop", "taken", "refused"]


@dataclass(frozen=True, slots=True)
class IdentifierFix:
    """What a migration does with one stored identifier that `cleaned_identifier` changes:

    rename   it becomes `clean` (and so does its contact's contact_id, if it is that)
    drop     `clean` already names the same contact: the look-alike row goes (if it was the contact's own id,
             the contact's contact_id becomes `clean`); nothing else changes
    taken    `clean` names another contact: both are kept as they are, never merged here, and logged
    refused  even `clean` is not an acceptable id (a control character, nothing left): kept and logged
    """

    stored: StoredIdentifier
    clean: str
    action: Cleanup

    @property
    def warning(self) -> bool:
        """Whether the fix leaves something for a person to decide."""
        return self.action in ("taken", "refused")

    def describe(self) -> str:
        """One log line: what was done and, where something is left, what it means."""
        stored, clean = self.stored, visible(self.clean)
        what = (
            f"contact {visible(stored.identifier)}"
            if stored.own
            else f"alias {visible(stored.identifier)} of contact {visible(stored.contact)}"
        )
        where = f"of organization {stored.org!r}"
        if self.action == "rename":
            return f"{what} {where} is now {clean}: characters a person cannot see were removed"
        if self.action == "drop":
            if stored.own:
                return f"contact {visible(stored.identifier)} {where} is now {clean}, already one of its aliases"
            return f"{what} {where} was dropped: it looks the same as {clean}, which names the same contact"
        if self.action == "taken":
            return (
                f"{what} {where} looks the same as {clean}, another contact (they differ only in characters a "
                "person cannot see); both are kept as they are, never merged here: the look-alike can no longer "
                "be named by a caller, its history stays readable through chatdock export; decide whether "
                "they are one person"
            )
        return (
            f"{what} {where} holds characters no longer accepted in ids even once cleaned ({clean}); it stays as "
            "it is, its history readable through chatdock export"
        )


def plan_identifier_fixes(
    unclean: Iterable[StoredIdentifier], owners: Mapping[tuple[int, str], int]
) -> list[IdentifierFix]:
    """What to do with each stored identifier that `cleaned_identifier` changes, given the contact (key) that
    each of their cleaned forms already names, by (organization key, identifier). The oldest look-alike of a
    free id takes it; never two contacts merged."""
    named = dict(owners)
    fixes = []
    for stored in sorted(unclean, key=lambda found: (found.created_us, found.org_key, found.identifier)):
        clean = cleaned_identifier(stored.identifier)
        owner = named.get((stored.org_key, clean))
        action: Cleanup
        if not acceptable_identifier(clean):
            action = "refused"
        elif owner is None:
            action = "rename"
            named[(stored.org_key, clean)] = stored.contact_key
        else:
            action = "drop" if owner == stored.contact_key else "taken"
        fixes.append(IdentifierFix(stored, clean, action))
    return fixes


def cleaned_agent(value: str) -> str:
    """An agent id as a migration leaves it: cleaned where the cleaned form is acceptable (agent ids name no
    contact, so look-alikes simply become one), else as it was."""
    clean = cleaned_identifier(value)
    return clean if acceptable_identifier(clean) else value


def contact_id(value: object) -> str:
    return identifier(value, "contact_id")


def optional_identifier(value: object, name: str) -> str | None:
    return None if value is None else identifier(value, name)


def channel(value: object, name: str = "channel") -> str:
    if not isinstance(value, str) or not CHANNEL_PATTERN.fullmatch(value):
        raise InvalidInput(
            f"{name} must be a lower-case name of 1 to 64 characters from a-z, 0-9 and _.:- "
            f"starting with a letter or digit (like 'whatsapp' or 'voice'), got {_shown(value)}"
        )
    return value


def role(value: object, name: str = "role") -> Role:
    for known in ROLES:
        if value == known:
            return known
    raise InvalidInput(f"{name} must be one of {', '.join(ROLES)}; got {_shown(value)}")


def chat_status(value: object) -> ChatStatus:
    for known in CHAT_STATUSES:
        if value == known:
            return known
    raise InvalidInput(f"status must be one of {', '.join(CHAT_STATUSES)}; got {_shown(value)}")


def uuid_text(value: object, name: str) -> str:
    """A UUID in its canonical lower-case form."""
    if isinstance(value, str) and len(value) <= 64:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise InvalidInput(f"{name} must be a UUID like '0192f0c4-7d3e-7b1a-9c4e-2f1d3a5b6c7d', got {_shown(value)}")


def optional_uuid(value: object, name: str) -> str | None:
    return None if value is None else uuid_text(value, name)


def limit(value: object, name: str = "limit", low: int = MIN_LIMIT, high: int = MAX_LIMIT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be a whole number between {low} and {high}, got {_shown(value)}")
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}, got {value}")
    return value


def whole_characters(value: str, what: str) -> None:
    """Refuse half a character: a lone surrogate (a JSON string cut inside an emoji, "\\ud83d") has no UTF-8
    form, so it could be neither stored nor sent back."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{what} holds half of a character (U+{ord(value[exc.start]):04X} at position {exc.start + 1}, a lone "
            "surrogate, as left by a JSON string cut inside an emoji); send whole characters"
        ) from None


def content(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"content must be a string, got {type(value).__name__}")
    if not value.strip():
        what = "empty" if not value else "only spaces and line breaks"
        raise InvalidInput(f"content must not be {what}; send the message's text")
    _text_size(len(value), "content")
    if "\x00" in value:
        raise InvalidInput("content must not contain NUL characters (\\x00); remove them and send again")
    whole_characters(value, "content")
    return value


def _text_size(size: int, what: str) -> None:
    if size > MAX_TEXT_CHARS:
        raise InvalidInput(f"{what} must be at most {MAX_TEXT_CHARS} characters, got {size}; split the message")


def _timestamp(value: object, name: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InvalidInput(
            f"{where}.{name} must be a number of seconds from the start of the call, 0 or more, got {_shown(value)}"
        )
    return float(value)


def parts(values: Sequence[Part], named: str = "message") -> tuple[list[Part], str]:
    """Checked parts and the content they make: their texts joined by single spaces. `named`: the field that
    holds them, as its caller sent it (post_as_contact's `message`; an imported line's `parts`)."""
    if not 1 <= len(values) <= MAX_PARTS:
        raise InvalidInput(f"{named} must have 1 to {MAX_PARTS} parts, got {len(values)}")
    checked: list[Part] = []
    for index, part in enumerate(values):
        where = f"{named}[{index}]"
        if not part.text.strip():
            raise InvalidInput(
                f"{where}.text must not be {'empty' if not part.text else 'only spaces and line breaks'}"
            )
        if "\x00" in part.text:
            raise InvalidInput(f"{where}.text must not contain NUL characters (\\x00)")
        whole_characters(part.text, f"{where}.text")
        start = _timestamp(part.start_timestamp, "start_timestamp", where)
        end = _timestamp(part.end_timestamp, "end_timestamp", where)
        if start is not None and end is not None and end < start:
            raise InvalidInput(f"{where}.end_timestamp ({end}) must not be before start_timestamp ({start})")
        checked.append(Part(text=part.text, start_timestamp=start, end_timestamp=end))
    _text_size(sum(len(part.text) for part in checked), "the parts' texts together")
    joined = " ".join(part.text for part in checked)
    _text_size(len(joined), "the parts' texts with the single spaces that join them into the content")
    return checked, joined


def _depth(value: object) -> int:
    """How deeply a JSON value nests, without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_METADATA_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _holds_nul(value: object) -> bool:
    """Whether a JSON value (nested at most MAX_METADATA_DEPTH deep: checked first) holds a NUL in a text."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def metadata(value: object) -> tuple[dict[str, Any], str | None]:
    """Checked metadata, as a JSON object, and its provider_message_id."""
    if value is None:
        return {}, None
    if not isinstance(value, dict):
        raise InvalidInput(f"metadata must be a JSON object, got {type(value).__name__}")
    if _depth(value) > MAX_METADATA_DEPTH:
        raise InvalidInput(f"metadata must nest at most {MAX_METADATA_DEPTH} levels deep")
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metadata must be plain JSON: {exc}") from exc
    whole_characters(encoded, "metadata")
    size = len(encoded.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise InvalidInput(f"metadata must be at most {MAX_METADATA_BYTES} bytes of JSON, got {size}")
    if _holds_nul(value):  # JSON writes it escaped (\u0000), which PostgreSQL's jsonb refuses
        raise InvalidInput("metadata must not contain NUL characters (\\x00), in its keys or its values")
    provider_message_id = value.get("provider_message_id")
    if provider_message_id is not None and (
        not isinstance(provider_message_id, str) or not 1 <= len(provider_message_id) <= MAX_ID_CHARS
    ):
        raise InvalidInput(
            f"metadata.provider_message_id must be a string of 1 to {MAX_ID_CHARS} characters, "
            f"got {_shown(provider_message_id)}"
        )
    attachments = value.get("attachments")
    if attachments is not None and not isinstance(attachments, list):
        raise InvalidInput(f"metadata.attachments must be a list, got {type(attachments).__name__}")
    return value, provider_message_id


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=1)


def created_at(value: datetime | None, now: datetime, name: str = "created_at") -> datetime:
    """A message's time: timezone-aware, from 1970 on, at most a day ahead of the server's clock."""
    if value is None:
        return now
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(
            f"{name} must carry a timezone, like '2026-11-21T09:30:00Z' or '2026-11-21T10:30:00+01:00', "
            f"got {value.isoformat()}"
        )
    given = value.isoformat()
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01 east of UTC, 9999-12-31 west of it: out of range either way
        value = EARLIEST - FUTURE_SLACK if value.year < 1970 else now + 2 * FUTURE_SLACK
    if value < EARLIEST:
        raise InvalidInput(f"{name} must be 1970-01-01T00:00:00Z or later, got {given}")
    if value > now + FUTURE_SLACK:
        raise InvalidInput(
            f"{name} must not be more than a day ahead of the server's clock ({format_time(now)}), got {given}"
        )
    return value


def max_chars(value: object) -> int | None:
    if value is None:
        return None
    return limit(value, "max_chars", 1, MAX_MAX_CHARS)


def roles(values: Sequence[object] | None) -> list[Role] | None:
    if values is None:
        return None
    if not values:
        raise InvalidInput("roles must name at least one role, or be left out to include every role")
    return sorted({role(value, f"roles[{index}]") for index, value in enumerate(values)})


def channels(values: Sequence[object] | None) -> list[str] | None:
    if values is None:
        return None
    if not values:
        raise InvalidInput("channels must name at least one channel, or be left out to include every channel")
    if len(values) > 64:
        raise InvalidInput(f"channels may name at most 64 channels, got {len(values)}")
    return sorted({channel(value, "channels[]") for value in values})


def utc_now() -> datetime:
    return datetime.now(UTC)


def _located(loc: Sequence[int | str]) -> str:
    """A field's place as the caller wrote it: `message[0].type`, not pydantic's `message.0.type`."""
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else ("." if where else "") + str(part)
    return where or "the value"


def explain(error: ValidationError | Sequence[Any]) -> str:
    """A pydantic failure (or its list of errors) in the contract's voice: each field, what is wrong, what was
    given."""
    problems = []
    for item in error.errors(include_url=False) if isinstance(error, ValidationError) else error:
        where = _located(item["loc"])
        if item["type"] == "missing":
            problems.append(f"{where} is required")
        elif item["type"] == "extra_forbidden":
            problems.append(f"{where} is not a known field")
        else:
            message = item["msg"][0].lower() + item["msg"][1:]
            problems.append(f"{where}: {message}, got {_shown(item['input'])}")
    return "; ".join(problems)


IDEMPOTENCY_KEY_CHARS = 255
# what an Idempotency-Key is made of, visible ASCII: one rule for the store and for the REST route's header
IDEMPOTENCY_KEY_PATTERN = "^[!-~]+$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN[1:-1])


def idempotency_key(value: object) -> str:
    """An Idempotency-Key header: 1 to 255 visible ASCII characters (a UUID is a good choice)."""
    if not isinstance(value, str) or not 1 <= len(value) <= IDEMPOTENCY_KEY_CHARS:
        raise InvalidInput(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_CHARS} characters; send a UUID per request")
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidInput("Idempotency-Key must be visible ASCII characters only (no spaces); send a UUID per request")
    return value


_PHONE_MARKS = re.compile(r"[ ./()-]")


def e164_of(identifier: str) -> str | None:
    """The E.164 form of an international phone number written with spaces, dashes, dots or brackets (`+31 6 1234
    5678`, `+31 (0)6-12345678`, `0031 6 12345678`), when it is not written so already; None for anything else (a
    national number, `06 1234 5678`, is not guessed). Identifiers match exactly: this only says how the number
    is most likely stored, where a model looked one up as a customer wrote it."""
    text = identifier.replace("(0)", "")
    if text.startswith("00"):
        text = "+" + text[2:]
    digits = _PHONE_MARKS.sub("", text[1:])
    if not text.startswith("+") or not (digits.isascii() and digits.isdigit() and 7 <= len(digits) <= 15):
        return None
    if digits.startswith("0"):  # no country code begins with 0
        return None
    return None if f"+{digits}" == identifier else f"+{digits}"
