"""Time-ordered ids (UUIDv7, RFC 9562): new rows land at the end of the id index, so inserts stay cheap."""

from __future__ import annotations

import os
import time


def uuid7() -> str:
    """48 bits of Unix milliseconds, the version (7), 12 random bits, the variant (10), 62 random bits."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # one system call for all 74 random bits
    value = (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 62 & 0x0FFF) << 64 | 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
