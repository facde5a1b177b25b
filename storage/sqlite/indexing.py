"""SQLite's search index catches up in batches.

Indexing one message in its own transaction writes a new segment of the FTS5 index and merges segments: 53 us
of a lone append's 197. So an append only notes its message in `search_pending` (a row of one integer, 7 us),
and the messages noted are indexed together: once in `SEARCH_BATCH` appends, by that append, in its own
transaction (`SearchIndex.due`, `with_an_append`); after an import or a batch, by writes of their own in the
background (`SearchIndex.appended`). A search first indexes whatever is still noted, by
any process on the file (`SearchIndex.before_search`), so it finds every message committed before it began
(unless that write cannot be made within `SEARCH_WAIT`: then it searches what is indexed, and says so in the log).
The triggers keep the two consistent: a message deleted or edited while still noted has nothing in the index to
take out (schema.py, migration 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..sql.ops import Ops, count, value

logger = logging.getLogger("chatdock.storage")
T = TypeVar("T")

SEARCH_BATCH = 64  # messages appended by this process before one of its appends indexes the noted ones
WITH_AN_APPEND = 2 * SEARCH_BATCH  # noted messages an append indexes at most (about 0.15 ms of its write)
CHUNK = 2000  # messages indexed by one write at most: a long catch-up lets other writes go between its chunks
# seconds a catch-up in the background waits between its chunks: another process waiting for the write lock
# (a server beside `chatdock import`) asks again at most every 100 ms (SQLite's busy handler), so back-to-back
# chunks kept it out until the catch-up ended (2.7 s for 30,000 imported messages, every append of the server)
PAUSE = 0.1

SEARCH_WAIT = 2.0  # seconds a search waits for the noted messages to be indexed before it goes on without them
WARN_EVERY = 60.0  # seconds between two warnings that they are not

PENDING = "SELECT EXISTS (SELECT 1 FROM search_pending)"


def owner(row: str) -> str:
    """What the index keeps in its `owner` column for the message `row` (a table's name or alias): its contact
    and its organization, a word each (k<contact key> o<org key>). A search of one contact or one organization
    asks for that word beside the query's (queries.py), so the index intersects the two lists: an organization's
    search reads its own matches, however many the other organizations on the file have (schema.py, migration
    14). Every statement that adds to the index or takes out of it writes this, so the two agree."""
    return f"'k' || {row}.contact_pk || ' o' || {row}.org_id"


# the three steps of indexing the noted messages oldest first, up to a number of them (`index_pending`)
LAST_NOTED = "SELECT max(seq) FROM (SELECT seq FROM search_pending ORDER BY seq LIMIT ?)"
# CROSS JOIN keeps the noted messages the outer loop: with a plain JOIN, SQLite carries `seq <= ?` over to the
# messages and walks every message up to it (12 ms at 100,000 messages, 0.1 s at a million)
INDEX_NOTED = (
    f"INSERT INTO messages_fts (rowid, content, owner) SELECT m.seq, m.content, {owner('m')} "
    "FROM search_pending p CROSS JOIN messages m ON m.seq = p.seq WHERE p.seq <= ?"
)
UNNOTE = "DELETE FROM search_pending WHERE seq <= ?"


def index_pending(limit: int = CHUNK) -> Ops[int]:
    """Index the `limit` messages noted longest ago; how many were noted (0: the index is complete)."""
    last = yield value(LAST_NOTED, limit)
    if last is None:
        return 0
    yield count(INDEX_NOTED, last)
    indexed: int = yield count(UNNOTE, last)
    return indexed


def with_an_append(append: Ops[T]) -> Ops[T]:
    """`append`, then the indexing of up to `WITH_AN_APPEND` noted messages, in its transaction."""
    stored = yield from append
    yield from index_pending(WITH_AN_APPEND)
    return stored


Write = Callable[[Callable[[], Ops[int]], bool], Awaitable[int]]  # (the write, whether on the writer's thread only)
Read = Callable[[str], Awaitable[list[Any]]]


class SearchIndex:
    """When this process's appends are indexed: `write` runs a write (with True, always on the writer's thread,
    where nobody waits for it), `read` a read of the file as it is now."""

    def __init__(self, write: Write, read: Read) -> None:
        self._write = write
        self._read = read
        self._unindexed = 0  # messages this process appended since one of its writes last indexed the noted ones
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self._warned = -WARN_EVERY  # when the last "not searchable yet" was logged (monotonic seconds)

    def due(self) -> bool:
        """Whether the append about to be written indexes the noted messages too (`with_an_append`): once in
        `SEARCH_BATCH` of this process's appends, in the append's own transaction, where it costs no commit of
        its own and no caller waits behind it."""
        if self._unindexed < SEARCH_BATCH:
            return False
        self._unindexed = 0
        return True

    def appended(self, messages: int) -> None:
        """`messages` new messages were committed. An import or a batch of `SEARCH_BATCH` or more has them
        indexed in the background, by writes of their own, a chunk at a time."""
        self._unindexed += messages
        if messages >= SEARCH_BATCH and not self._running and not self._closing:
            self._unindexed = 0
            self._start(background=True)

    async def before_search(self) -> None:
        """Index what any process noted and nobody indexed yet, waiting `SEARCH_WAIT` seconds at most. When that
        cannot be written in time (another process holds the write lock) or at all (a full disk, a read-only
        file), the search goes on over what is indexed, and the messages noted since are found by a later one."""
        if not (await self._read(PENDING))[0][0]:
            return
        catching_up = self._start(background=False)  # as any write: at once on this thread when alone
        await asyncio.wait({catching_up}, timeout=SEARCH_WAIT)
        if not catching_up.done():
            self._warn("indexing them takes longer than a search waits")
        elif not catching_up.cancelled() and catching_up.exception() is not None:
            self._warn(f"indexing them failed: {catching_up.exception()}")

    async def close(self) -> None:
        """Let the catch-ups under way stop after their current chunk, then index one more chunk of what is noted,
        so that a process that appended a few messages and ended leaves little for the next search to do."""
        self._closing = True
        if self._running:
            await asyncio.wait(set(self._running))
        with contextlib.suppress(Exception):  # the appends and the next search say what is wrong
            if (await self._read(PENDING))[0][0]:
                await self._write(index_pending, False)

    def _start(self, background: bool) -> asyncio.Task[None]:
        """A catch-up: everything noted, a chunk per write, until nothing is left or the store closes."""

        async def catch_up() -> None:
            while await self._write(index_pending, background) == CHUNK and not self._closing:
                if background:  # another process's writes get in between (see PAUSE)
                    await asyncio.sleep(PAUSE)

        task = asyncio.get_running_loop().create_task(catch_up())
        self._running.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the appends said so already
            logger.debug("indexing appended messages failed: %s", task.exception())

    def _warn(self, why: str) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            logger.warning("the newest messages are not searchable yet: %s", why)
