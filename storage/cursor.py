"""The opaque `next_cursor` of a message page: the keyset position (time in microseconds, sequence) of its
last message, checked in full when it comes back."""

from __future__ import annotations

import base64
import binascii

from .errors import InvalidInput

Position = tuple[int, int]

MAX_CURSOR_CHARS = 128
_HIGHEST = 2**63 - 1  # both fields are signed 64-bit integers in every backend

_HINT = "pass next_cursor exactly as a previous list_messages returned it, or leave cursor out for the first page"


def encode_cursor(position: Position) -> str:
    created_us, seq = position
    return base64.urlsafe_b64encode(f"v1:{created_us}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(value: object) -> Position:
    if isinstance(value, str) and len(value) <= MAX_CURSOR_CHARS:
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
            version, created_text, seq_text = raw.split(":")
            created_us, seq = int(created_text), int(seq_text)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            pass
        else:
            position = (created_us, seq)
            in_range = 0 <= created_us <= _HIGHEST and 0 <= seq <= _HIGHEST
            # only a cursor this module wrote: no sign, padding, spaces or leading zeros that int() would let by
            if version == "v1" and in_range and encode_cursor(position) == value:
                return position
    raise InvalidInput(f"cursor is not valid; {_HINT}")
