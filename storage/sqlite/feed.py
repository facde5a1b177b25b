"""The change feed (changes.py) in the `changes` table: what each write records there (`ChangeLog`), and how a
process follows what the other processes sharing the file record (`follow_feed`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any, ClassVar

import aiosqlite

from ..changes import EVERYTHING, Change, Deliver
from ..sql import writes as shared
from ..sql.ops import Ops, count

logger = logging.getLogger("chatdock.storage")

FOLLOW_INTERVAL = 0.05  # seconds between looks at the change feed, while someone listens
KEEP_CHANGES = 10_000  # the feed keeps this many changes; a follower further behind re-reads everything
FORGOTTEN_SECONDS = 60.0  # how long the feed names a forgotten contact (for the other processes' listeners)
BLANK_EVERY = 10.0  # seconds between two blankings of the forget rows due
GIVE_UP_SECONDS = 600.0  # how long after it is due a forget row is blanked again (its blanking rolled back)
_BLANK = "UPDATE changes SET contact_id = '', aliases = NULL"  # a row that names no one any more
SKIP_EVERY = 20  # looks (a second) between two skips past the changes no one here listened for
PRUNE_EVERY = 1_024


class ChangeLog(shared.ChangeLog):
    """Each change is a row of the feed, written inside the write's transaction; every PRUNE_EVERY rows a
    process writes, it deletes the rows older than the newest KEEP_CHANGES.

    A forgotten contact's identifiers leave the feed: the forget blanks the rows of that contact and takes its
    identifiers out of other rows' aliases; its own row, which tells the other processes' listeners, is blanked
    by this store's writes FORGOTTEN_SECONDS after it (at most every BLANK_EVERY seconds, for GIVE_UP_SECONDS:
    a write rolled back tries again), or pruned, if the store writes nothing more."""

    __slots__ = ()
    written_here = 0  # rows this process wrote to the feed (one writer thread: no race)
    # the forget rows each store (by origin) wrote: (when, org, contact_id); and when it last blanked those due
    pending: ClassVar[dict[str, list[tuple[float, str, str]]]] = {}
    blanked_at: ClassVar[dict[str, float]] = {}

    def write(self, change: Change) -> Ops[None]:
        yield from self._let_go(time.monotonic())
        if change.kind == "forgotten":
            named = json.dumps([change.contact_id, *change.aliases])
            # blanked, not deleted: a deleted newest row's seq would be given again, and a follower that had
            # read up to it would miss the row that took it
            yield count(f"{_BLANK} WHERE org = ? AND contact_id IN (SELECT value FROM json_each(?))", change.org, named)
            yield count(
                "UPDATE changes SET aliases = (SELECT json_group_array(value) FROM json_each(changes.aliases) WHERE "
                "value NOT IN (SELECT value FROM json_each(?2))) WHERE org = ?1 AND EXISTS (SELECT 1 FROM "
                "json_each(changes.aliases) WHERE value IN (SELECT value FROM json_each(?2)))",
                change.org,
                named,
            )
            ChangeLog.pending.setdefault(self.origin, []).append((time.monotonic(), change.org, change.contact_id))
        yield count(
            "INSERT INTO changes (org, contact_id, kind, origin, aliases) VALUES (?, ?, ?, ?, ?)",
            change.org,
            change.contact_id,
            change.kind,
            self.origin,
            json.dumps(list(change.aliases)) if change.aliases else None,
        )
        ChangeLog.written_here += 1
        if ChangeLog.written_here % PRUNE_EVERY == 0:
            yield count("DELETE FROM changes WHERE seq <= (SELECT max(seq) FROM changes) - ?", KEEP_CHANGES)

    def _let_go(self, now: float) -> Ops[None]:
        """Blank this store's forget rows written FORGOTTEN_SECONDS ago or more (see the class)."""
        pending = ChangeLog.pending.get(self.origin)
        if not pending or now - ChangeLog.blanked_at.get(self.origin, float("-inf")) < BLANK_EVERY:
            return
        due = [(org, contact_id) for when, org, contact_id in pending if now - when >= FORGOTTEN_SECONDS]
        if not due:
            return
        ChangeLog.blanked_at[self.origin] = now
        yield from _blank_forget_rows(due)
        ChangeLog.pending[self.origin] = [row for row in pending if now - row[0] < FORGOTTEN_SECONDS + GIVE_UP_SECONDS]


def let_go_of_all(origin: str) -> Callable[[], Ops[None]] | None:
    """The write that blanks every forget row the store of `origin` wrote, due or not (None: there is none): the
    store is closing, and what would have blanked them goes with it (a forgotten contact's identifiers stayed in
    the file: a data-protection review). A follower that had not read such a row yet hears EVERYTHING of it."""
    rows = [(org, contact_id) for _, org, contact_id in ChangeLog.pending.pop(origin, [])]
    return (lambda: _blank_forget_rows(rows)) if rows else None


def _blank_forget_rows(contacts: list[tuple[str, str]]) -> Ops[None]:
    """Blank the forget rows of these (organization, contact) pairs: they name no one any more."""
    for org, contact_id in contacts:
        yield count(f"{_BLANK} WHERE kind = 'forgotten' AND org = ? AND contact_id = ?", org, contact_id)


async def _one_value(conn: aiosqlite.Connection, sql: str, params: tuple[Any, ...] = ()) -> Any:
    async with conn.execute(sql, params) as cursor:
        row = await cursor.fetchone()
    return None if row is None else row[0]


async def follow_feed(
    path: str,
    origin: str,
    failed: Callable[[BaseException], BaseException],
    deliver: Deliver,
    wanted: Callable[[], bool],
    ready: Callable[[], None],
) -> None:
    """Poll `PRAGMA data_version` on a connection of its own (it changes when any other connection commits)
    every FOLLOW_INTERVAL seconds while `wanted()`, then deliver the feed's new rows that another process
    (another `origin`) wrote; EVERYTHING when the feed was pruned past where this one had read. While no one
    wants them, it skips past them once a second, so the first listener is not told of what came before it."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute("PRAGMA query_only = ON")
        position = await _one_value(conn, "SELECT ifnull(max(seq), 0) FROM changes")
        ready()  # what commits from here on has a higher seq
        version = None
        idle = 0
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL)
            if not wanted():
                idle += 1
                if idle % SKIP_EVERY == 0:  # what others commit while no one here listens is no one's news: a
                    # listener that comes later hears from here (at most a second's changes before it came)
                    with contextlib.suppress(sqlite3.Error):
                        latest = await _one_value(conn, "SELECT ifnull(max(seq), 0) FROM changes")
                        # but a contact forgotten elsewhere is this process's news: what it kept of its messages
                        # goes (the store lets go when it hears of a forget, or of everything)
                        forgotten = await _one_value(
                            conn,
                            "SELECT count(*) FROM changes WHERE seq > ? AND seq <= ? AND kind = 'forgotten' AND "
                            "origin != ?",
                            (position, latest, origin),
                        )
                        if not wanted():  # still no one: a listener that came during the read misses nothing
                            position = max(position, latest)
                            if forgotten:
                                deliver(EVERYTHING)
                continue
            idle = 0
            try:
                now = await _one_value(conn, "PRAGMA data_version")
                if now == version:
                    continue
                version = now
                found = list(
                    await conn.execute_fetchall(
                        "SELECT seq, org, contact_id, kind, origin, aliases FROM changes WHERE seq > ? ORDER BY seq",
                        (position,),
                    )
                )
            except sqlite3.Error as exc:  # the file went bad under us: say so once, keep following
                logger.warning("could not read the change feed: %s", failed(exc))
                continue
            if found and found[0][0] > position + 1 and position > 0:
                deliver(EVERYTHING)  # the feed was pruned past where this process had read
            for seq, org, contact_id, kind, source, aliases in found:
                position = seq
                if source == origin:  # this process announced its own changes at commit
                    continue
                if contact_id:
                    deliver(Change(org, contact_id, kind, tuple(json.loads(aliases)) if aliases else ()))
                elif kind == "forgotten":  # blanked before this process read it (its store closed at once): whom
                    deliver(EVERYTHING)  # it named is not known here, but what is kept of everyone goes
                # (another blanked row was of a contact forgotten since: its forget told the listeners)
    finally:
        await conn.close()
