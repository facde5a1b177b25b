"""What /healthz checks on a SQLite file beyond "a query answers", and what refuses a write before it runs.

- `FileWatch`: the path still names the file chatdock opened (a file removed while open keeps taking writes
  into its unlinked inode, all gone at the next start; a file replaced by another one at the path leaves
  chatdock writing into the old one), and so do the paths of its -wal and -shm files (a log removed takes the
  writes since the last checkpoint with it; a -shm removed lets another process open the file without seeing
  this one's writes, and damage it), and chatdock may still write it (permissions, attributes, a read-only
  mount). Three `stat` calls and one `access` call, cheap enough to run before every write.
- `IndexSweep`: a bounded check that every row is found through each of its table's indexes, a slice of
  rows at a time: the newest rows (whose index entries sit in the pages that writes touch now) and a slice
  that moves through the table from one run to the next. SQLite's `quick_check` does not compare an index
  with its table, and the full `integrity_check` reads the whole file; an index page damaged under appends
  otherwise shows only when a later delete or read happens to need one of its entries. A sweep runs when
  /healthz asks and, while writes come, on a thread of its own: at most one a second, a few milliseconds
  each (its own read-only connection, one snapshot); what it finds is remembered like damage a query met.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass

from . import driver
from .failures import DAMAGED, damaged_text, kind

logger = logging.getLogger("chatdock.storage")

SWEEP_EVERY = 1.0  # seconds from one sweep to the next, at least
SWEEP_ROWS = 500  # rows of each table checked per slice (the newest ones, and the moving slice)


def removed_text(path: str) -> str:
    return (
        f"the database file {path} was removed while chatdock was serving; writes are refused (they would be "
        "lost with it); reads still see the removed file; restore the file from a backup, run "
        f"`chatdock check --db {path}`, then restart chatdock"
    )


def replaced_text(path: str) -> str:
    return (
        f"the database file {path} was replaced by another file while chatdock was serving; writes are "
        "refused (they would go into the old file, not the one at that path); run "
        f"`chatdock check --db {path}` on the new file, then restart chatdock to serve it"
    )


def unwritable_text(path: str) -> str:
    return (
        f"the database file {path} cannot be written by chatdock (its permissions or attributes forbid "
        "it, or it is on a read-only disk); writes are refused (reads still work); make the file, its -wal and "
        "-shm files and its folder writable by chatdock, and writes work again"
    )


def side_file_text(path: str, suffix: str) -> str:
    """A -wal or -shm file that is not the one chatdock opened: removed, or removed and made again by SQLite
    (a connection opened since makes its own), which the path alone cannot tell apart, so both are said."""
    why = {
        "-wal": "it holds the writes since the last checkpoint, which a restart would lose with it",
        "-shm": "another process opening the file would not see this one's writes, and could damage the file",
    }[suffix]
    return (
        f"the database's {suffix} file {path}{suffix} was removed or replaced while chatdock was serving; "
        f"writes are refused ({why}); stop every chatdock using {path}, run `chatdock check --db {path}`, then "
        "start chatdock again"
    )


SIDE_FILES = ("-wal", "-shm")  # SQLite's write-ahead log and its shared index, beside the file while it is open


class FileWatch:
    """The identity (device, inode) of the file chatdock opened at `path`, and of its -wal and -shm files, taken
    once it is open; `problem()` compares them with what the paths name now. A problem is logged when it appears
    and when it clears."""

    def __init__(self, path: str) -> None:
        self.path = path
        opened = os.stat(path)
        self._identity = (opened.st_dev, opened.st_ino)
        self._sides = {suffix: _identity(path + suffix) for suffix in SIDE_FILES}
        self._told: str | None = None

    def problem(self, writes: bool = True) -> str | None:
        """Why a write must not go to the file now (removed, replaced, not writable), or None; without `writes`
        (a server that only reads), why reads would not see the file at the path (removed, replaced). A file
        made read-only is an outage like a full disk (the backend's Outage says so, and when it ends); the
        others are logged here when they appear and when they clear."""
        found = self._problem(writes)
        if found != self._told:
            unwritable = unwritable_text(self.path)
            if found is not None and found != unwritable:
                logger.error("%s", found)
            elif found is None and self._told != unwritable:
                logger.warning("the database file %s is back as chatdock opened it; writes work again", self.path)
            self._told = found
        return found

    def cause(self, problem: str) -> str:
        """The metrics' cause of a problem `problem()` gave: `read_only` for a file chatdock may not write."""
        return "read_only" if problem == unwritable_text(self.path) else "file_problem"

    def gone(self) -> str | None:
        """Why the path no longer names the file chatdock writes (removed, replaced), or its -wal or -shm file
        the one chatdock opened, or None: asked after a write, whose commit then went into a file that is gone."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return removed_text(self.path)
        except OSError:
            return None  # not known to be gone; the next write's check says more
        if (now.st_dev, now.st_ino) != self._identity:
            return replaced_text(self.path)
        return self._side_gone()

    def _side_gone(self) -> str | None:
        for suffix, opened in self._sides.items():
            if opened is None:
                self._sides[suffix] = _identity(self.path + suffix)  # made since (SQLite makes the log on use)
                continue
            try:
                now = os.stat(self.path + suffix)
            except FileNotFoundError:
                now = None  # removed
            except OSError:
                continue  # not known to be gone
            if now is None or (now.st_dev, now.st_ino) != opened:
                return side_file_text(self.path, suffix)
        return None

    def _problem(self, writes: bool) -> str | None:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return removed_text(self.path)
        except OSError as exc:
            return f"cannot see the database file {self.path} ({exc.strerror or exc}); writes are refused; check it"
        if (now.st_dev, now.st_ino) != self._identity:
            return replaced_text(self.path)
        side = self._side_gone()
        if side is not None:
            return side
        if writes and not os.access(self.path, os.W_OK):
            return unwritable_text(self.path)
        return None


def _identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


@dataclass(frozen=True)
class _Index:
    table: str
    name: str
    columns: tuple[str, ...]
    where: str | None  # a partial index's condition


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_PARTIAL = re.compile(r"\bWHERE\b(.*)$", re.IGNORECASE | re.DOTALL)


def _indexes(conn: sqlite3.Connection) -> list[_Index]:
    """The indexes on plain columns of the rowid tables (expression indexes and WITHOUT ROWID tables aside)."""
    found: list[_Index] = []
    tables = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
        "AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name"
    ).fetchall()
    for table, table_sql in tables:
        if re.search(r"WITHOUT\s+ROWID", table_sql or "", re.IGNORECASE):
            continue
        for _, index, *_ in conn.execute(f"PRAGMA index_list({_quoted(table)})").fetchall():
            keys = [row for row in conn.execute(f"PRAGMA index_xinfo({_quoted(index)})") if row[5]]
            if not keys or any(row[1] < 0 for row in keys):  # an expression in the key
                continue
            sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (index,)).fetchone()
            partial = _PARTIAL.search(sql[0]) if sql and sql[0] else None
            where = partial[1].strip() if partial else None
            found.append(_Index(table, index, tuple(str(row[2]) for row in keys), where))
    return found


def _missing_sql(index: _Index, newest: bool) -> str:
    """(the slice's last rowid, how many rows of the slice the index misses) for a slice of `?` rows: the
    newest ones, or the first ones after rowid `?`. A row that a partial index leaves out is not looked for."""
    table, columns = _quoted(index.table), [_quoted(column) for column in index.columns]
    wanted = f"({index.where})" if index.where else "1"
    probe = " AND ".join([*(f"i.{column} IS s.{column}" for column in columns), "i.rowid = s.sweep_rowid"])
    rows = "ORDER BY rowid DESC LIMIT ?" if newest else "WHERE rowid > ? ORDER BY rowid LIMIT ?"
    return (
        f"SELECT max(s.sweep_rowid), ifnull(sum(s.sweep_wanted AND NOT EXISTS (SELECT 1 FROM {table} AS i "
        f"INDEXED BY {_quoted(index.name)} WHERE {probe} AND {wanted})), 0) "
        f"FROM (SELECT rowid AS sweep_rowid, {', '.join(columns)}, {wanted} AS sweep_wanted "
        f"FROM {table} NOT INDEXED {rows}) AS s"
    )


class IndexSweep:
    """See the module docstring. `soon()` starts a sweep on a thread of its own when one is due (at most one
    each `every` seconds, one at a time), `now()` runs one on the caller's thread; `found` keeps what a sweep
    found damaged, logged once."""

    def __init__(self, path: str, every: float = SWEEP_EVERY, rows: int = SWEEP_ROWS) -> None:
        self.path = path
        self.every = every
        self.rows = rows
        self.found: str | None = None
        self._after: dict[str, int] = {}  # index name -> the rowid its moving slice starts after
        self._last = float("-inf")
        self._running = threading.Lock()
        self._stopped = False

    def due(self) -> bool:
        return (
            not self._stopped
            and self.found is None
            and time.monotonic() - self._last >= self.every
            and not self._running.locked()
        )

    def soon(self) -> None:
        if self.due():
            threading.Thread(target=self.now, name="chatdock-index-sweep", daemon=True).start()

    def stop(self) -> None:
        """No sweep from now on, and the one running (if any) finished: its read-only connection must not be the
        file's last one open, which cannot remove the -wal and -shm it leaves (a store closed just after a write
        left them beside the file)."""
        self._stopped = True  # never due again
        with self._running:
            pass

    def now(self) -> str | None:
        """Sweep once if due; what is known damaged. Never raises: a sweep that cannot run (the file busy or
        gone) tries again next time."""
        if not self.due() or not self._running.acquire(blocking=False):
            return self.found
        if self._stopped:  # stopped between the look and the lock (`stop`): no sweep after the store closed
            self._running.release()
            return self.found
        try:
            self._last = time.monotonic()
            found = self._sweep()
        except sqlite3.Error as exc:
            name = kind(exc)
            found = damaged_text(self.path, name) if name.startswith(DAMAGED) else None
            if found is None:
                logger.debug("the index sweep of %s stopped: %s", self.path, exc)
        except Exception as exc:  # a thread of its own: nothing else would hear of it
            logger.warning("the index sweep of %s failed: %s", self.path, exc)
            found = None
        finally:
            self._running.release()
        if found is not None and self.found is None:
            self.found = found
            logger.error("%s", found)
        return self.found

    def _sweep(self) -> str | None:
        # read-only: a path that names no file now is never created anew
        conn = driver.read_only(self.path)
        try:
            conn.execute("PRAGMA busy_timeout = 1000")
            conn.execute("BEGIN")  # one snapshot for the whole sweep: rows and indexes as one commit left them
            for index in _indexes(conn):
                newest = conn.execute(_missing_sql(index, newest=True), (self.rows,)).fetchone()
                moving = conn.execute(_missing_sql(index, newest=False), (self._after.get(index.name, 0), self.rows))
                last, missing = moving.fetchone()
                self._after[index.name] = 0 if last is None else int(last)  # from the start again at the end
                if newest[1] or missing:
                    return damaged_text(self.path, f"SQLITE_CORRUPT_INDEX: rows missing from index {index.name}")
            return None
        finally:
            conn.close()
