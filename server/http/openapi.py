"""The REST routes' OpenAPI document, as strict as the server (docs/rest.md).

FastAPI writes the document from the routes and the pydantic models, whose fields are plain strings: the
store checks the bounds (storage/validation.py), so that its error texts are one for the tools and the
routes. This module states those bounds in the document, read from where the store keeps them: ids are
`uuid`s, identifiers 1 to 256 characters of those `validation.identifier` accepts, limits 1 to 200, roles and
statuses enums, channels the channel pattern, times `date-time`; and it lists each route's answers, every
error with its `{"error", "message"}` body. A generated request that fits the document is then accepted,
but for the few rules JSON Schema cannot state (a time at most a day ahead of the server's clock, a part
that ends before it starts, a cursor the server did not write, texts and metadata over their sizes
together); each of those is said in the description of the field it concerns.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from functools import cache
from typing import Any

from chatdock.storage import validation as check
from chatdock.storage.cursor import MAX_CURSOR_CHARS, MAX_SEARCH_CURSOR_CHARS
from chatdock.storage.errors import InvalidInput
from chatdock.storage.models import CHAT_STATUSES, ROLES
from chatdock.storage.search import MAX_QUERY_CHARS, MAX_TERMS

ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "what kind of error (`Invalid arguments`, `Not found`, ...)"},
        "message": {"type": "string", "description": "what was wrong and how to fix it"},
    },
}

_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer realm and the cause", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
}

_DESCRIPTIONS = {
    400: "The body is not JSON",
    401: "Invalid API key: missing, unknown or revoked",
    404: "An id names nothing in this organization",
    409: "Conflict with what is stored",
    413: "The body is over 4 MiB",
    415: "The body is in a content coding (gzip, ...): send the JSON uncompressed",
    422: "Invalid arguments: the message says what to fix",
    429: "Too many failed keys from this address: wait Retry-After seconds",
    503: "The database cannot serve the request now",
}

EVERY_ROUTE = (401, 422, 429, 503)  # the key, the arguments, the guard against key guessing, the database
WITH_BODY = (400, 413, 415)  # routes that read a JSON body


def answers(*statuses: int, described: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route (beside the ones every route has), each with the error body; `described`
    says what a status means on this route, where it means more than on every route."""
    chosen = sorted({*EVERY_ROUTE, *statuses})
    return {status: _error(status, (described or {}).get(status)) for status in chosen}


def insufficient_scope() -> dict[str, Any]:
    """The 403 of an access token without the scope a route needs (with --oauth-issuer)."""
    answer = _error(
        403,
        "Insufficient scope: the access token lacks chatdock:read (a read) or chatdock:write; or, for a write, "
        "Read-only key: the key was created with --read-only",
    )
    answer["headers"] = {
        "WWW-Authenticate": {
            "description": 'Bearer error="insufficient_scope" and the scope',
            "schema": {"type": "string"},
        }
    }
    return answer


def read_only_key() -> dict[str, Any]:
    """The 403 of a write with a key created with --read-only."""
    return _error(
        403, "Read-only key: the key was created with `chatdock keys create --read-only`; nothing was written"
    )


def _error(status: int, description: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description or _DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status in _HEADERS:
        answer["headers"] = _HEADERS[status]
    return answer


# --- the bounds the store checks, as JSON Schema ---


def _accepted(value: str) -> bool:
    try:
        check.identifier(value, "identifier")
    except InvalidInput:
        return False
    return True


def _ranges(points: Iterable[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for point in sorted(points):
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1] = (ranges[-1][0], point)
        else:
            ranges.append((point, point))
    return ranges


def _char(point: int) -> str:
    """A code point inside a character class, escaped (`\\uXXXX`, read alike by ECMA-262 and Python)."""
    return f"\\u{point:04x}"


def _class_without(points: Iterable[int], extra: str = "") -> str:
    """A negated character class: anything but `points` (and the class syntax in `extra`), of the Basic
    Multilingual Plane only. A code point beyond it in a class compiles in JavaScript only with the `u` flag,
    which the RegExp a generated client makes often lacks ("Range out of order in character class", at load):
    those few (tag characters, shorthand format controls, ...) are refused by the server, as the description
    says, not by the pattern."""
    inside = "".join(
        _char(a) if a == b else f"{_char(a)}-{_char(b)}"
        for a, b in _ranges(point for point in points if point <= 0xFFFF)
    )
    return f"[^{extra}{inside}]"


@cache
def _refused() -> tuple[frozenset[int], frozenset[int]]:
    """The code points an identifier may not hold anywhere, and those it may hold only between others
    (white space), as `validation.identifier` decides. Surrogates are left out: no JSON text carries one
    alone, and a class naming them compiles in no regex engine but Python's."""
    anywhere: set[int] = set()
    at_ends: set[int] = set()
    for point in range(sys.maxunicode + 1):
        if 0xD800 <= point < 0xE000 or _accepted(chr(point)):
            continue
        (at_ends if _accepted(f"a{chr(point)}a") else anywhere).add(point)
    return frozenset(anywhere), frozenset(at_ends)


@cache
def _refused_in_text() -> frozenset[int]:
    """The code points a search query may not hold (`validation.refused_character`: control and invisible format
    characters), fewer than an identifier's; surrogates left out as in `_refused`."""
    return frozenset(
        point
        for point in range(sys.maxunicode + 1)
        if not 0xD800 <= point < 0xE000 and check.refused_character(chr(point)) is not None
    )


@cache
def identifier_schema(in_path: bool = False) -> dict[str, Any]:
    """A contact id, alias or agent id: 1 to 256 characters, none of the refused ones (and no `/` in a path:
    chatdock takes it as %2F (rest.EncodedSlashes), but a client that sent it unencoded would name another
    route)."""
    anywhere, at_ends = _refused()
    slash = "/" if in_path else ""
    inner = _class_without(anywhere, slash)
    end = _class_without(anywhere | at_ends, slash)
    pattern = f"^{end}(?:{inner}*{end})?$" if at_ends else f"^{end}+$"
    if in_path:  # `.` and `..` are dot segments that clients remove from a path
        pattern = f"^(?!\\.\\.?$){pattern[1:]}"
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": check.MAX_ID_CHARS,
        "pattern": pattern,
        "description": f"1 to {check.MAX_ID_CHARS} characters (after Unicode NFC), no control or invisible ones"
        + (", percent-encoded" if in_path else ""),
    }


UUID: dict[str, Any] = {"type": "string", "format": "uuid"}
_CHANNEL = check.CHANNEL_PATTERN.pattern
CHANNEL: dict[str, Any] = {"type": "string", "pattern": f"^{_CHANNEL}$", "maxLength": 64}
ROLE: dict[str, Any] = {"type": "string", "enum": list(ROLES)}
STATUS: dict[str, Any] = {"type": "string", "enum": list(CHAT_STATUSES)}
_ROLE_CHOICE = "|".join(map(re.escape, ROLES))
ROLE_LIST: dict[str, Any] = {
    "type": "string",
    "pattern": f"^(?:{_ROLE_CHOICE})(?:,(?:{_ROLE_CHOICE}))*$",
    "description": "comma-separated roles: user,assistant",
}
_MAX_CHANNELS = 64
CHANNEL_LIST: dict[str, Any] = {
    "type": "string",
    "pattern": f"^{_CHANNEL}(?:,{_CHANNEL}){{0,{_MAX_CHANNELS - 1}}}$",
    "description": f"comma-separated channels, 1 to {_MAX_CHANNELS}: sms,voice",
}
TEXT: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": check.MAX_TEXT_CHARS,
    "pattern": "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$",
    "description": f"not only white space, no NUL; at most {check.MAX_TEXT_CHARS:,} characters with the "
    "message's other texts",
}
TIME: dict[str, Any] = {
    "type": "string",
    "format": "date-time",
    "pattern": "^(?:19[7-9][0-9]|[2-9][0-9]{3})-",
    "description": "RFC 3339 with a timezone, from 1970-01-01T00:00:00Z to a day ahead of the server's clock",
}
STORED_TIME: dict[str, Any] = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC, microseconds"}
CURSOR: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_CURSOR_CHARS,
    "pattern": "^[A-Za-z0-9_-]+$",
    "description": "next_cursor exactly as the previous page returned it (any other value is refused)",
}


def limit(low: int = check.MIN_LIMIT, high: int = check.MAX_LIMIT, default: int | None = None) -> dict[str, Any]:
    bounded: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high}
    return bounded if default is None else {**bounded, "default": default}


def query_schema() -> dict[str, Any]:
    """A search query: none of the characters the parser refuses, with at least one that is not white space.
    Never stricter than the server (a client that checks the pattern must send phrases and exclusions): what
    JSON Schema cannot state (a closed phrase, a word to find, the number of words) is in the description."""
    refused = _refused_in_text()
    char = _class_without(refused, "")
    shown = _class_without(refused, "\\s")
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_QUERY_CHARS,
        "pattern": f"^{char}*{shown}{char}*$",
        "description": 'words, prefix*, "a phrase", -excluded: at least one word to find (with a letter or a '
        f"digit), at most {MAX_TERMS} words and phrases, each phrase's quotes closed",
    }


def metadata_schema() -> dict[str, Any]:
    return {
        "type": ["object", "null"],
        "properties": {
            "provider_message_id": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": check.MAX_ID_CHARS,
                "description": "the provider's message id: a message with the same channel and id is stored once",
            },
            "attachments": {"type": ["array", "null"]},
        },
        "description": f"a JSON object of at most {check.MAX_METADATA_BYTES:,} bytes (UTF-8 JSON), nesting at "
        f"most {check.MAX_METADATA_DEPTH} levels",
    }


def _parameter(name: str, path: str, where: str) -> dict[str, Any] | None:
    """The strict schema of a route's parameter, by its name."""
    in_path = where == "path"
    if name in ("contact_id", "agent_id", "identifier"):
        return identifier_schema(in_path)
    if name in ("chat_id", "message_id"):
        return UUID
    if name == "limit":
        return limit()
    if name == "max_chars":
        return limit(1, check.MAX_MAX_CHARS)
    if name == "cursor":
        return {**CURSOR, "maxLength": MAX_SEARCH_CURSOR_CHARS} if path == "/chats/search" else CURSOR
    return {
        "channel": CHANNEL,
        "channels": CHANNEL_LIST,
        "role": ROLE,
        "roles": ROLE_LIST,
        "q": query_schema(),
        "org_id": {"type": "string", "minLength": 1, "pattern": "^(?!\\.\\.?$)[^/]+$"},
    }.get(name)


def _request_field(name: str) -> dict[str, Any] | None:
    return {
        "contact_id": identifier_schema(),
        "agent_id": identifier_schema(),
        "identifier": identifier_schema(),
        "chat_id": UUID,
        "channel_id": UUID,
        "channel": CHANNEL,
        "role": ROLE,
        "status": STATUS,
        "content": TEXT,
        "metadata": metadata_schema(),
        "created_at": TIME,
        "context_limit": limit(),
    }.get(name)


def _response_field(name: str) -> dict[str, Any] | None:
    if name in ("created_at", "updated_at", "first_seen_at", "last_active_at"):
        return STORED_TIME
    return {"id": UUID, "chat_id": UUID, "contact_id": identifier_schema(), "channel": CHANNEL}.get(name)


_PART_FIELDS: dict[str, dict[str, Any]] = {
    "text": TEXT,
    "start_timestamp": {"type": "number", "minimum": 0, "description": "seconds from the start of the call"},
    "end_timestamp": {
        "type": "number",
        "minimum": 0,
        "description": "seconds from the start of the call, not before start_timestamp",
    },
}


def _kept(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new` in place of `old`, nullable when `old` was, with `old`'s default and (unless `new` has one) its
    description."""
    nullable = any(branch == {"type": "null"} for branch in old.get("anyOf", ())) or old.get("type") == [
        "string",
        "null",
    ]
    if nullable and "null" not in (new.get("type") or []):
        new = {"anyOf": [new, {"type": "null"}]}
    for key in ("default", "description"):
        if key in old:
            new = {key: old[key], **new}
    return new


def strict(document: dict[str, Any]) -> dict[str, Any]:
    """`document` (FastAPI's) with the store's bounds on every parameter and field, and the error body."""
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                found = _parameter(parameter["name"], path, parameter["in"])
                if found is not None:  # optional parameters are left out, never sent as null
                    default = parameter["schema"].get("default")
                    parameter["schema"] = found if default is None else {**found, "default": default}
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in schemas.items():
        properties = schema.get("properties", {})
        for field, old in properties.items():
            if name == "Part":
                new = _PART_FIELDS.get(field)
            elif name.endswith("Request"):
                new = _request_field(field)
            else:
                new = _response_field(field)
            if new is not None:
                properties[field] = _kept(old, new)
    message = schemas["PostRequest"]["properties"]["message"] if "PostRequest" in schemas else {}
    message.update(minItems=1, maxItems=check.MAX_PARTS)
    schemas["Error"] = ERROR_BODY
    return document
