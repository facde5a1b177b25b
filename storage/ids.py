"""Ids: time-ordered ones (UUIDv7, RFC 9562), so new rows land at the end of the id index and inserts stay
cheap; and the ids a retried request finds again (`idempotent_id`)."""

from __future__ import annotations

import os
import time
import uuid

# the namespace of the ids derived from an Idempotency-Key (a UUIDv5 of its own, fixed for ever)
IDEMPOTENCY = uuid.UUID("6f1c2a9e-3b7d-5e41-9c0a-8d2f4b6e1a37")


def uuid7() -> str:
    """48 bits of Unix milliseconds, the version (7), 12 random bits, the variant (10), 62 random bits."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # one system call for all 74 random bits
    value = (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 62 & 0x0FFF) << 64 | 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def idempotent_id(org: str, kind: str, key: str) -> str:
    """The id of the `kind` ("message", "chat") that an Idempotency-Key creates in an organization: a retried
    request computes the same id, and the store's unique id finds what the first one stored, in the same
    transaction as the write and on every replica. Another organization's same key names another id."""
    return str(uuid.uuid5(IDEMPOTENCY, f"{org}\x00{kind}\x00{key}"))
