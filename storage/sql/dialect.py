"""What differs between the engines' SQL, for the logic both share (writes.py, queries.py, backend.py).

Each engine gives one `Dialect`: a few words of SQL and, where the two do a step differently, the step
itself as a small piece of logic (ops.py). Everything else is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .ops import Ops


class ClaimIdentifier(Protocol):
    def __call__(self, org_key: int, identifier: str, contact_key: int, now_us: int) -> Ops[tuple[int, bool]]:
        """Make `identifier` name the contact `contact_key` unless it already names one: (the contact it names
        now, whether it was claimed now). On PostgreSQL the identifier's row stays locked until the commit."""
        ...


@dataclass(frozen=True, slots=True)
class Dialect:
    # a contact's key and own contact_id from (org key, identifier): on PostgreSQL share-locked, so no merge
    # deletes the contact under the write that reads it
    resolve: str
    claim_identifier: ClaimIdentifier
    # a chat's columns as rows.chat reads them, its channels one JSON array
    chat_columns: str
    # the column that orders chats created in the same microsecond
    chat_order: str
    # added to a SELECT of rows a write is about to change or delete, so a concurrent one waits
    for_update: str
    greatest: str  # the larger of two values
    least: str  # the smaller of two values
    octet_length: str  # a text's stored size in bytes, `{}` standing for the text (NULL for NULL)
    # whether a size-bounded read (queries.latest_sql) reads its rows' columns in the pass that sums their sizes:
    # PostgreSQL's window keeps a large value as a pointer until it is sent, while SQLite's copies every column,
    # so SQLite sums the sizes alone and reads the rows it keeps after (on its reader threads; on the event
    # loop's own connection it cuts the rows as it reads them, SQLiteBackend._newest)
    sized_in_one_pass: bool
