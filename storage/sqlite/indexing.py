"""SQLite's search index catches up in batches.

Indexing one message in its own transaction writes a new segment of the FTS5 index and merges segments: 53 us
of a lone append's 197. So an append only notes its message in `search_pending` (a row of one integer, 7 us),
and the messages noted are indexed together, `SEARCH_BATCH` at a time, by a write of their own that the
backend starts in the background (`SearchIndex.appended`). A search first indexes whatever is still noted, by
any process on the file (`SearchIndex.before_search`), so it finds every message committed before it began.
The triggers keep the two consistent: a message deleted or edited while still noted has nothing in the index to
take out (schema.py, migration 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ChatdockError
from ..sql.ops import Ops, count, value

logger = logging.getLogger("chatdock.storage")

SEARCH_BATCH = 64  # messages appended by this process before it indexes them (about 0.8 ms of writing)
CHUNK = 2000  # messages indexed by one write at most: a long catch-up lets other writes go between its chunks

PENDING = "SELECT EXISTS (SELECT 1 FROM search_pending)"


def index_pending(limit: int = CHUNK) -> Ops[int]:
    """Index the `limit` messages noted longest ago; how many were noted (0: the index is complete)."""
    last = yield value("SELECT max(seq) FROM (SELECT seq FROM search_pending ORDER BY seq LIMIT ?)", limit)
    if last is None:
        return 0
    yield count(
        "INSERT INTO messages_fts (rowid, content, owner) SELECT m.seq, m.content, 'k' || m.contact_pk "
        "FROM search_pending p JOIN messages m ON m.seq = p.seq WHERE p.seq <= ?",
        last,
    )
    indexed: int = yield count("DELETE FROM search_pending WHERE seq <= ?", last)
    return indexed


Write = Callable[[Callable[[], Ops[int]]], Awaitable[int]]
Read = Callable[[str], Awaitable[list[Any]]]


class SearchIndex:
    """When this process's appends are indexed: `write` runs a write (off the event loop's thread), `read` a
    read of the file as it is now."""

    def __init__(self, write: Write, read: Read) -> None:
        self._write = write
        self._read = read
        self._unindexed = 0  # messages this process appended since it last started a catch-up
        self._catching_up: asyncio.Task[None] | None = None

    def appended(self, messages: int) -> None:
        """`messages` new messages were committed; every `SEARCH_BATCH` of them, index them in the background."""
        self._unindexed += messages
        if self._unindexed >= SEARCH_BATCH and (self._catching_up is None or self._catching_up.done()):
            self._unindexed = 0
            self._catching_up = asyncio.get_running_loop().create_task(self._background())

    async def before_search(self) -> None:
        """Index what any process noted and nobody indexed yet. When that cannot be written (a full disk, a
        read-only file), the search goes on over what is indexed, and the messages noted since are found once
        a write works again."""
        if not (await self._read(PENDING))[0][0]:
            return
        try:
            await self.catch_up()
        except ChatdockError as exc:
            logger.warning("the newest messages are not searchable yet: indexing them failed: %s", exc)

    async def catch_up(self) -> None:
        """Index everything noted, a chunk per write."""
        while await self._write(index_pending) == CHUNK:
            pass

    async def close(self) -> None:
        """Let a catch-up under way finish."""
        if self._catching_up is not None:
            with contextlib.suppress(Exception):
                await self._catching_up

    async def _background(self) -> None:
        try:
            await self.catch_up()
        except Exception as exc:  # the appends said so already; the next search tries again
            logger.debug("indexing appended messages failed: %s", exc)
