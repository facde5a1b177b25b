"""The opaque `next_cursor` of a message page: the keyset position (time in microseconds, sequence) of its
last message, checked in full when it comes back.

The sequence numbers every message of the database, whatever its organization, so a cursor that showed it would
let an organization count the others' writes between two of its own pages. It is masked: XORed with 63 bits of
an HMAC, keyed by the database's own secret (migration "a secret of the database's own"), of the organization
and the time. A database without the secret (opened where its migration could not run) writes the position as
it is ("v1"), as chatdock did before; both forms are read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from .errors import InvalidInput

Position = tuple[int, int]

CURSOR_SECRET = "cursor"  # the name of the database's secret that keys the mask
MAX_CURSOR_CHARS = 128
_HIGHEST = 2**63 - 1  # both fields are signed 64-bit integers in every backend

_HINT = "pass next_cursor exactly as a previous list_messages returned it, or leave cursor out for the first page"


def _mask(key: bytes, org: str, created_us: int) -> int:
    digest = hmac.digest(key, f"{org}\x00{created_us}".encode(), hashlib.sha256)
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: a masked sequence stays a signed 64-bit integer


def encode_cursor(position: Position, key: bytes | None = None, org: str = "") -> str:
    created_us, seq = position
    text = f"v1:{created_us}:{seq}" if key is None else f"v2:{created_us}:{seq ^ _mask(key, org, created_us)}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(value: object, key: bytes | None = None, org: str = "") -> Position:
    if isinstance(value, str) and len(value) <= MAX_CURSOR_CHARS:
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
            version, created_text, seq_text = raw.split(":")
            created_us, seq = int(created_text), int(seq_text)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            pass
        else:
            in_range = 0 <= created_us <= _HIGHEST and 0 <= seq <= _HIGHEST
            # only a cursor this module wrote: no sign, padding, spaces or leading zeros that int() would let by
            if version == "v1" and in_range and encode_cursor((created_us, seq)) == value:
                return created_us, seq
            if version == "v2" and key is not None and in_range:
                position = (created_us, seq ^ _mask(key, org, created_us))
                if encode_cursor(position, key, org) == value:
                    return position
    raise InvalidInput(f"cursor is not valid; {_HINT}")
