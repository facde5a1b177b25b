"""The SQLite backend: one writer thread with group commit, a small pool of aiosqlite readers.

Reads run on their own WAL connections, one thread hop per operation
(`execute_fetchall`), each a single statement and so one consistent
snapshot. Writes go through `Writer` (writer.py): the shared logic of storage/sql/ and the append
(append.py), run by driver.py on the writer's connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite

from .. import rows
from .. import search as rules
from ..backend import Imported, MessageFilter
from ..changes import Announcer, Deliver
from ..cursor import Position
from ..errors import ChatdockError, InvalidInput, Unavailable
from ..models import AppendedMessage, Message
from ..outage import Outage
from ..records import AliasRecord, ChatRecord, MessageRecord
from ..search import Query
from ..sql import writes as shared
from ..sql.backend import SQLBackend, now_us, settle
from ..sql.ops import Ops, count
from ..sql.queries import MESSAGE_WITH_CONTACT, ORG, latest_sql, within
from ..sql.walk import Read
from ..sql.writes import savepoint
from ..telemetry import Telemetry
from . import append, checkpoints, driver
from .checkpoints import Checkpointer
from .failures import (
    DAMAGED,
    MIN_FREE_BYTES,
    WRITE_BLOCKED,
    cause,
    damaged_text,
    free_bytes,
    kind,
    lock_wait_text,
    translate,
)
from .feed import ChangeLog, follow_feed, let_go_of_all
from .health import FileWatch, IndexSweep
from .indexing import SearchIndex, with_an_append
from .queries import DIALECT, candidates_sql, fts_expression, fts_words, narrowed, narrowed_sql, search_sql
from .schema import file_version, migrate, refuse_foreign
from .writer import BUSY_TIMEOUT_MS, Writer

Durability = Literal["normal", "full"]


T = TypeVar("T")
logger = logging.getLogger("chatdock.storage")


def _memory_dir() -> str:
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="chatdock-", dir=base)


def _probe() -> Ops[None]:
    """The smallest write: whether one works now."""
    yield count("INSERT OR REPLACE INTO health (id, checked_us) VALUES (1, ?)", now_us())


LOCKED = ("SQLITE_BUSY", "SQLITE_LOCKED")
LOCK_LOOK_SECONDS = 0.2  # how long /healthz waits for the write lock to see whether it is free
LOCK_WAIT_UNHEALTHY = 1.0  # a write waiting this long for another process's lock makes /healthz say so


def _lock_free(path: str) -> bool | None:
    """Whether the file's write lock can be taken now (taken and given back at once, nothing written): a
    writer of this process holds it for milliseconds, another process's forgotten transaction for ever. None
    when the file cannot be opened to see (removed: the file watch says so)."""
    try:
        conn = driver.existing(path, LOCK_LOOK_SECONDS)
    except sqlite3.Error:
        return None
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.Error:
        return False
    finally:
        conn.close()


# A read made by each connection as it opens: SQLite maps the log's index (-shm) at a connection's first read,
# so that a file removed later (before any request came) is still read by every connection, as the log says.
FIRST_READ = "SELECT count(*) FROM sqlite_schema"


def _create_private(path: str) -> None:
    """The folders and the file of a new database, readable by their owner alone (0700, 0600): the file holds
    every conversation and the keys' hashes. A folder or a file that is there keeps its permissions; the -wal
    and -shm files take the main file's (SQLite gives them its mode). A link is followed: the file made is its
    target (SQLite opens it through the link)."""
    path = os.path.realpath(path)
    parent = Path(path).parent
    missing = []
    folder = parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            each.mkdir(mode=0o700)
    parent.mkdir(parents=True, exist_ok=True)  # there now: nothing to do, or the error of a file in the way
    # an empty file is a new database to SQLite; one that cannot be made here (a read-only folder) is left to
    # SQLite's open, whose failure says why in the words of every other
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class SQLiteBackend(SQLBackend):
    """The `Backend` on one SQLite file; `start()` before use, `close()` after."""

    dialect = DIALECT

    def __init__(
        self, path: str, durability: Durability = "normal", readers: int = 2, telemetry: Telemetry | None = None
    ) -> None:
        self._throwaway: str | None = None
        if path == ":memory:":
            # Separate connections cannot share a private :memory: database, so a
            # throwaway store lives in a fresh folder in RAM (/dev/shm) when there is
            # one, removed on close: the same code path as a file, nothing kept.
            self._throwaway = _memory_dir()
            path = os.path.join(self._throwaway, "chatdock.db")
        else:
            path = str(Path(path).expanduser())
        if durability not in ("normal", "full"):
            raise InvalidInput(f"durability must be 'normal' or 'full', got {durability!r}")
        self.path = path
        self.durability: Durability = durability
        self.telemetry = telemetry or Telemetry()
        self._outage = Outage(f"writes to {path}")
        self._sql = self.telemetry.sql("sqlite", path, (sqlite3.Error, OSError))
        self._reader_count = max(1, readers)
        # a lone write runs on the caller's thread where a commit does not wait for the disk (writer.py)
        self.log_limit = checkpoints.LIMIT  # the write-ahead log is kept near this size (checkpoints.py)
        self._writer = Writer(
            self._connect_writer,
            inline=durability == "normal",
            log=(path + "-wal", self.log_limit),
            committed=self.telemetry.committed,
        )
        self._checkpoints = Checkpointer(path, BUSY_TIMEOUT_MS, self._writer.restart_log, self.log_limit)
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []
        self._direct: sqlite3.Connection | None = None  # reads on the event loop's thread (see _read)
        self._reading = 0  # reads on `_direct` now
        self._origin = secrets.token_hex(8)  # marks this process's rows in the change feed
        self.applied: list[int] = []  # the migrations this process applied as it opened the file
        self._announcer = Announcer()
        self.announce_to = self._announcer.announce_to
        self.damaged: str | None = None  # what a query found damaged; writes are refused from then on
        self._write_problem: str | None = None  # why the last write failed (full disk, read-only file)
        self._locked_out = False  # that write waited out another process's lock
        self._search_index = SearchIndex(self._transact, lambda sql: self._read(sql, ()))
        self._sweep = IndexSweep(self.path)

    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)  # see Writer
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        # what a delete or a forget removes is overwritten in the file, not left in free space (off in
        # SQLite's own builds, on in Debian's: said here, not left to the build)
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute(f"PRAGMA synchronous = {self.durability.upper()}")
        for _ in range(100):
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:  # another process is creating the file
                if "locked" not in str(exc):
                    raise
        self.applied += migrate(conn, self.path)  # (a writer connected again applies nothing)
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints.py does them, off the writer's path
        conn.execute(f"PRAGMA journal_size_limit = {self.log_limit}")  # a restarted log is cut back to it
        return conn

    async def start(self) -> None:
        try:
            if self._throwaway is None:
                _create_private(self.path)
            await asyncio.to_thread(self._writer.start)
            self._file = FileWatch(self.path)  # the file now open: /healthz and writes notice it removed or replaced
            self._checkpoints.start()
            for _ in range(self._reader_count):
                reader = await self._open_reader()
                self._all_readers.append(reader)
                self._readers.put_nowait(reader)
            self._direct = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._direct.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._direct.execute("PRAGMA query_only = ON")
            self._direct.execute(FIRST_READ).fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc
        self.telemetry.database_file(self.path, self.log_limit)

    async def close(self) -> None:
        blanking = let_go_of_all(self._origin)
        if blanking is not None and self._direct is not None:
            try:
                await self._write(blanking)
            except Exception as exc:  # a file that cannot be written now, a writer gone: the rest of the close goes
                # on; the rows are pruned later, or blanked by hand (docs/operations.md, Erasure)
                logger.warning("could not take a forgotten contact's identifiers out of the change feed: %s", exc)
        # the search index reads what is noted and indexes it; a store that failed to start has no reader to ask
        if self._direct is not None:
            await self._search_index.close()
        for reader in self._all_readers:
            await reader.close()
        self._all_readers.clear()
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        await asyncio.to_thread(self._sweep.stop)  # before the writer: the file's last connection removes the log
        await asyncio.to_thread(self._checkpoints.stop)
        await asyncio.to_thread(self._writer.stop)
        if self._throwaway is not None:
            shutil.rmtree(self._throwaway, ignore_errors=True)

    def _failed(self, exc: BaseException) -> BaseException:
        """The clear error for a failure of the database (remembering a damaged file), or `exc` itself."""
        error = translate(exc, self.path)
        if error is None:
            return exc
        why = cause(exc)
        self.telemetry.failed(why)
        if not kind(exc).startswith(DAMAGED):
            if self._all_readers:  # met while serving: in the log too (at start, the start-up error says it)
                self._outage.failed(error.message, why)  # not only in the answers and the metrics
        elif self.damaged is None:
            self.damaged = error.message
            if self._all_readers:  # met while serving (at start, the one-line start-up error says it)
                logger.error("%s", error.message)
        return error

    async def _newest(
        self, org: str, contact_id: str, only: MessageFilter, limit: int, after: Position | None, max_bytes: int
    ) -> list[Any]:
        if self._direct is None or self._reading:  # on a reader's thread: the statement cuts the rows
            return await super()._newest(org, contact_id, only, limit, after, max_bytes)
        # here, the rows are cut as they are read: one pass, and none past the cut is read (50 ordinary
        # messages: 0.09 ms against the statement's 0.14)
        sql, params = latest_sql(self.dialect, org, contact_id, only, limit, None, after)
        return await self._read(sql, params, org, cut=max_bytes)

    async def _open_reader(self) -> aiosqlite.Connection:
        """A connection of reads: it waits for a lock as the writer does, refuses to write, and has read once
        (FIRST_READ)."""
        reader = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await reader.execute("PRAGMA query_only = ON")
            await reader.execute_fetchall(FIRST_READ)
        except BaseException:
            await _close_quietly(reader)
            raise
        return reader

    @contextlib.asynccontextmanager
    async def _consistent_read(self) -> AsyncIterator[Read]:
        """Reads on a connection of their own (the readers stay free for the requests meanwhile), in one read
        transaction: SQLite's write-ahead log keeps the file as it was at its first read (while an export reads,
        checkpoints cannot start the log over). The connection is closed however the reads end."""
        try:
            conn = await self._open_reader()
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        try:
            try:
                await conn.execute("BEGIN")
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc

            async def read(sql: str, params: Sequence[Any]) -> list[Any]:
                try:
                    with self._sql.read(sql):
                        return list(await conn.execute_fetchall(sql, params))
                except sqlite3.Error as exc:
                    raise self._failed(exc) from exc

            yield read
        finally:
            await settle(_close_quietly(conn))  # even when cancelled: a client that left a REST export

    async def _read(
        self, sql: str, params: Sequence[Any], org: str | None = None, *, urgent: bool = False, cut: int | None = None
    ) -> list[Any]:
        """The rows of `sql`; with `cut`, only those `queries.within(cursor, cut)` keeps."""
        if self._direct is not None and self._reading == 0:
            # nobody else reads: the read runs here, without the two thread hops (most reads are one index
            # range); concurrent reads go to the reader threads, where SQLite's work overlaps
            self._reading += 1
            try:
                with self._sql.read(sql):
                    cursor = self._direct.execute(sql, params)
                    try:
                        found = cursor.fetchall() if cut is None else within(cursor, cut)
                    finally:
                        cursor.close()  # a statement left unfinished would hold its snapshot of the file
                await asyncio.sleep(0)  # a caller reading in a loop still lets the other tasks run
                return found
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc
            finally:
                self._reading -= 1
        reader = await self._readers.get()
        try:
            with self._sql.read(sql):  # on a reader's thread: the span, here, is the caller's wait for it
                found = list(await reader.execute_fetchall(sql, params))
            return found if cut is None else within(found, cut)
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        finally:
            self._readers.put_nowait(reader)

    def _log(self) -> ChangeLog:
        return ChangeLog(self._origin)

    async def _transact(self, attempt: Callable[[], Ops[T]], background: bool = False) -> T:
        """Run `attempt()` on the writer (one savepoint in a group commit; again when the lock was busy; always
        on its thread when in the `background`); a failure of the database becomes a clear error, and the write
        problem it shows is kept for /healthz until a write succeeds again."""
        if self.damaged is None:
            self.damaged = self._sweep.found  # what a sweep of the indexes found (health.py), if anything
        if self.damaged is not None:
            self.telemetry.failed("damaged")
            raise Unavailable(self.damaged)
        refused = self._file.problem()  # removed, replaced or unwritable: nothing acknowledged into it
        if refused is not None:
            why = self._file.cause(refused)
            self.telemetry.failed(why)
            if why == "read_only":  # everyone's writes fail until it is writable again: an outage, as a full disk
                self._outage.failed(refused, why)
            raise Unavailable(refused)
        self._sweep.soon()  # while writes come, a bounded look at the indexes each second, on a thread

        def job(conn: sqlite3.Connection) -> T:
            return driver.run(conn, attempt())

        try:
            result = await self._writer.run(self._sql.on_thread(job), background)  # its span on the writer's thread
        except sqlite3.Error as exc:
            error = self._failed(exc)
            if kind(exc).startswith((*WRITE_BLOCKED, *LOCKED)) and isinstance(error, Unavailable):
                self._write_problem = error.message
                self._locked_out = kind(exc).startswith(LOCKED)
            raise error from exc
        lost = self._file.gone()  # removed or replaced while this write ran: its commit went into the old file
        if lost is not None:
            self.telemetry.failed("file_problem")
            raise Unavailable(f"{lost}; this write ran meanwhile and went into the old file, so it is not kept")
        self._write_problem = None
        self._outage.worked()
        return result

    async def follow(self, deliver: Deliver, wanted: Callable[[], bool], ready: Callable[[], None]) -> None:
        await follow_feed(self.path, self._origin, self._failed, deliver, wanted, ready)

    # --- messages ---

    async def insert_message(self, org: str, record: MessageRecord) -> AppendedMessage:
        log = self._log()
        indexing = self._search_index.due()

        def make() -> Ops[AppendedMessage]:
            appending = append.insert_message(org, record, now_us(), log)
            return with_an_append(appending) if indexing else appending

        stored = await self._write(make, log)
        self._search_index.appended(0 if stored.deduplicated else 1)
        return stored

    async def insert_messages(self, org: str, records: Sequence[MessageRecord]) -> list[AppendedMessage]:
        log = self._log()

        def job() -> Ops[list[AppendedMessage]]:
            now = now_us()
            stored: list[AppendedMessage] = []
            for record in records:
                stored.append((yield from savepoint(append.insert_message(org, record, now, log))))  # type: ignore[arg-type]
            return stored

        stored = await self._write(job, log)
        self._search_index.appended(sum(not message.deduplicated for message in stored))
        return stored

    async def import_history(
        self, org: str, records: Sequence[ChatRecord | AliasRecord | MessageRecord | ChatdockError], keep_going: bool
    ) -> list[Imported | ChatdockError]:
        outcomes = await super().import_history(org, records, keep_going)
        self._search_index.appended(outcomes.count("stored"))  # chats and aliases too: an estimate is enough
        return outcomes

    def _import_message(self, org: str, record: MessageRecord, now: int, log: shared.ChangeLog) -> Ops[AppendedMessage]:
        stored = yield from savepoint(append.insert_message(org, record, now, log, True))
        return stored  # type: ignore[return-value]

    async def search(
        self,
        org: str,
        query: Query,
        contact_id: str | None,
        channel: str | None,
        role: str | None,
        window: int,
        upto: int | None = None,
        since: int | None = None,
    ) -> tuple[list[tuple[int, str]], int]:
        await self._search_index.before_search()
        scope: list[Any] = [org, contact_id] if contact_id is not None else [org]
        below = [] if upto is None else [upto]
        filters = [value for value in (channel, role) if value is not None]
        wanted, excluded = fts_expression(query)
        contact, by_channel, by_role = contact_id is not None, channel is not None, role is not None
        bound = since or None  # a later page's: the first page's
        if since is None and narrowed(query):  # among its newest CANDIDATES messages holding its words (search.py)
            sql = candidates_sql(contact, upto is not None)
            found = await self._read(sql, [*scope, fts_words(query), *below, rules.CANDIDATES - 1])
            bound = found[0][0] if found else None
        if bound is None:
            params = [*scope, wanted, "".join(f" NOT {term}" for term in excluded), org, *filters, *below]
            sql = search_sql(contact, by_channel, by_role, upto is not None)
        else:
            params = [*scope, wanted, bound, *below]
            if excluded:
                params += [*scope, wanted, " OR ".join(excluded), bound, *below]
            params += [org, *filters]
            sql = narrowed_sql(contact, by_channel, by_role, upto is not None, bool(excluded))
        return [(seq, content) for seq, content in await self._read(sql, [*params, window])], bound or 0

    async def messages_at(self, org: str, seqs: Sequence[int]) -> list[tuple[int, Message]]:
        found = await self._read(
            MESSAGE_WITH_CONTACT + f"m.org_id = {ORG} AND m.seq IN (SELECT value FROM json_each(?))",
            [org, json.dumps(list(seqs))],
        )
        order = {seq: index for index, seq in enumerate(seqs)}
        found.sort(key=lambda row: order[row[9]])
        return [(row[9], message) for row, message in zip(found, rows.messages(found), strict=True)]

    def _damaged(self) -> bool:
        return self.damaged is not None

    async def health(self, writes: bool = True) -> list[str]:
        problems: list[str] = []  # without `writes`, a file that cannot be written or grow is no problem
        try:
            await self.ping()
        except Unavailable as exc:
            problems.append(exc.message)
        free = free_bytes(self.path)
        if free < MIN_FREE_BYTES and writes:
            problems.append(f"the disk is full: {free:,} bytes free on the disk of {self.path}; free space on it")
        waiting = self._writer.waiting_since
        if writes and waiting is not None and time.monotonic() - waiting >= LOCK_WAIT_UNHEALTHY:
            problems.append(lock_wait_text(self.path, time.monotonic() - waiting, BUSY_TIMEOUT_MS / 1000))
        told = self._write_problem
        if told is not None and self._locked_out and writes:
            # the last write waited out another process's lock: whether the lock is free now, without a write
            # that would wait for it again (recovery shows by itself)
            unlocked = await asyncio.to_thread(_lock_free, self.path)
            if unlocked:
                self._write_problem = None
            elif unlocked is False:
                problems.append(told)
        elif told is not None and self.damaged is None and free >= MIN_FREE_BYTES:
            # the last write failed: see whether one works now (one small row), so recovery shows by itself
            try:
                await self._write(_probe)
            except Unavailable as exc:
                problems.append(exc.message)
        file_problem = self._file.problem(writes)
        if file_problem is not None:
            problems.append(file_problem)
        elif self.damaged is None:
            # a bounded look at the indexes (health.py), off the event loop: damage no query has met yet
            found = await asyncio.to_thread(self._sweep.now) if self._sweep.due() else self._sweep.found
            self.damaged = self.damaged or found
        if self.damaged is not None:
            problems.append(self.damaged)
        return list(dict.fromkeys(problems))


async def _close_quietly(conn: aiosqlite.Connection) -> None:
    """Close a connection of reads (its transaction with it)."""
    with contextlib.suppress(sqlite3.Error):
        await conn.close()


def integrity_check(path: str) -> tuple[list[str], int]:
    """SQLite's full check of the file's structure, read-only: what is damaged (empty when nothing is), and the
    schema version of a sound file (0 for a damaged one)."""
    if os.path.isdir(path):
        raise Unavailable(f"cannot check {path}: it is a folder; pass the database file with --db")
    if not os.path.isfile(path):
        raise Unavailable(f"cannot check {path}: there is no such file")
    if os.path.getsize(path) == 0:
        raise Unavailable(f"cannot check {path}: the file is empty, it holds no database")
    try:
        if not os.path.exists(path + "-wal") and (version := _sound_as_it_is(path)) is not None:
            return [], version
        try:
            found, version = _integrity(path, unchanging=False)
        except sqlite3.OperationalError as exc:
            # a folder it may not write (a backup on read-only media), where SQLite cannot make the -shm it reads
            # a log through: a file whose log is empty holds all it has, and is read as it is
            if kind(exc) not in ("SQLITE_READONLY", "SQLITE_CANTOPEN") or not _settled(path):
                raise
            found, version = _integrity(path, unchanging=True)
    except sqlite3.DatabaseError as exc:
        if kind(exc) == "SQLITE_NOTADB":  # nothing of chatdock's to save from it
            raise Unavailable(damaged_text(path, "SQLITE_NOTADB")) from None
        if kind(exc).startswith(DAMAGED):
            return [f"the check itself stopped: {exc}"], 0
        raise translate(exc, path) or exc from exc
    return found, version


def _sound_as_it_is(path: str) -> int | None:
    """Whether a file no process has open (each one keeps its -wal while it does) is sound, read as it is: making
    nothing beside it (a -wal and -shm a reader cannot remove; no room for them on a full disk). Such a read
    takes no lock, so a process that opens, writes and closes the file meanwhile can make it see damage that is
    not there: whatever it finds but "sound" is left to the usual read, under SQLite's locks. Its schema version
    if it is sound, else None."""
    try:
        found, version = _integrity(path, unchanging=True)
    except sqlite3.DatabaseError:
        return None
    return None if found else version


def _integrity(path: str, unchanging: bool) -> tuple[list[str], int]:
    """SQLite's integrity check of the file, a problem per line (it may put several in one row; none when it is
    sound), and a sound file's schema version."""
    conn = driver.read_only(path, unchanging=unchanging)
    try:
        found = [line for row in conn.execute("PRAGMA integrity_check") for line in str(row[0]).splitlines()]
        if found != ["ok"]:
            return found, 0
        refuse_foreign(conn)  # a sound file of another program is not a sound chatdock database
        return [], file_version(conn)
    finally:
        conn.close()


def _settled(path: str) -> bool:
    """Whether the file holds all it has: no write-ahead log beside it with pages not yet copied in (a file
    closed cleanly, a backup)."""
    try:
        return os.path.getsize(path + "-wal") == 0
    except OSError:
        return True  # no log at all
