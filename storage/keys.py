"""API keys: their format, the hash that is all a backend keeps, and the check of a presented key.

A key reads `cdk_<8 hex>_<43 url-safe characters>`; its first two fields are
the visible prefix by which it is listed, named and looked up.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backend import StoredKey

MAX_KEY_CHARS = 200
PREFIX = "cdk_"
PREFIX_HEX_BYTES = 4  # a prefix is PREFIX and this many random bytes in hex
PREFIX_CHARS = len(PREFIX) + 2 * PREFIX_HEX_BYTES
TOUCH_INTERVAL = timedelta(seconds=60)  # "last used" is recorded at most once a minute per key
REMEMBER_SECONDS = 5.0  # a key verified live is not read again for this long: the bound on a revocation's delay


@dataclass(frozen=True, slots=True)
class LiveKey:
    """Whom a live key speaks for: its organization, and whether it may only read (`keys create --read-only`)."""

    org: str
    read_only: bool


def live(stored: StoredKey) -> LiveKey:
    return LiveKey(stored.org, stored.read_only)


def read_only_refusal(key: str, write: str) -> str:
    """What a read-only key (`key`: how it is named) is told of a `write` refused, over REST and MCP alike."""
    return (
        f"{key} may only read (it was created with `chatdock keys create --read-only`), so {write} was refused "
        "and nothing was written"
    )


def new_key() -> tuple[str, str]:
    """A fresh (prefix, key)."""
    prefix = PREFIX + secrets.token_hex(PREFIX_HEX_BYTES)
    return prefix, f"{prefix}_{secrets.token_urlsafe(32)}"


# What a read-only key's hash is taken over, before the key: a chatdock from before read-only keys (a replica
# not yet upgraded, on the same database) finds no match and refuses the key, rather than let it write (found by
# a security review); this one tells the two kinds by the stored `read_only`.
READ_ONLY_HASHED = "read-only:"


def key_hash(key: str, read_only: bool = False) -> str:
    return hashlib.sha256(((READ_ONLY_HASHED if read_only else "") + key).encode("utf-8")).hexdigest()


def prefix_of(key: str) -> str | None:
    """The prefix of a well-formed key, None for anything else."""
    fields = key.split("_")
    if len(fields) < 3 or fields[0] != "cdk" or len(key) > MAX_KEY_CHARS:
        return None
    return f"{PREFIX}{fields[1]}"


def revoked_by(given: str) -> str:
    """What a revoke names, from what one has at hand: a key, whole (also as an Authorization header carries
    it, "Bearer cdk_...") or only begun, names its prefix, so that its secret part is never repeated, in an error
    either; anything else is a prefix or a name, as given."""
    key = given.strip().removeprefix("Bearer ").strip()
    return prefix_of(key) or (key[:PREFIX_CHARS] if key.startswith(PREFIX) else given)


def matches(key: str, stored: StoredKey | None) -> bool:
    """Whether `key` hashes to the `stored` key's hash, in the same time whether or not one was found."""
    presented = key_hash(key, stored is not None and stored.read_only)
    if stored is None:
        hmac.compare_digest(presented, presented)  # the same work as for a known prefix
        return False
    return hmac.compare_digest(presented, stored.hash)
