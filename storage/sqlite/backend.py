"""The SQLite backend: one writer thread with group commit, a small pool of aiosqlite readers.

Reads run on their own WAL connections, one thread hop per operation
(`execute_fetchall`), each a single statement and so one consistent
snapshot. Writes go through `Writer` (writer.py), as functions of writes.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite

from .. import rows
from .. import validation as check
from ..backend import Imported, MessageFilter, StoredKey
from ..changes import Announcer, Deliver
from ..cursor import Position
from ..errors import ChatdockError, InvalidInput, Unavailable, key_name_taken
from ..models import (
    Alias,
    ApiKeyInfo,
    AppendedMessage,
    Chat,
    ChatStatus,
    ContactInfo,
    ForgetResult,
    LinkResult,
    Message,
)
from ..records import AliasRecord, ChatRecord, MessageRecord
from ..search import Query
from ..telemetry import Telemetry
from . import checkpoints, writes
from .checkpoints import Checkpointer
from .failures import DAMAGED, WRITE_BLOCKED, cause, kind, translate
from .feed import follow_feed
from .health import FileWatch, IndexSweep
from .migrations import migrate
from .queries import (
    CHAT_COLUMNS,
    CHAT_FROM,
    CHAT_SELECT,
    CONTACT,
    KEY_SELECT,
    MESSAGE_COLUMNS,
    MESSAGE_WITH_CONTACT,
    ORG,
    bounded_sql,
    fts_expression,
    latest_sql,
    search_sql,
)
from .walk import Walk
from .writer import BUSY_TIMEOUT_MS, Undo, Writer

Durability = Literal["normal", "full"]

MIN_FREE_BYTES = 1024 * 1024  # below this, /healthz says the disk is full

T = TypeVar("T")
logger = logging.getLogger("chatdock.storage")


def _now_us() -> int:
    return rows.to_us(check.utc_now())


def _memory_dir() -> str:
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="chatdock-", dir=base)


def _keys(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> list[ApiKeyInfo]:
    found = conn.execute(f"{KEY_SELECT} WHERE {where} ORDER BY k.id", params).fetchall()
    return [rows.key_info(row) for row in found]


class SQLiteBackend:
    """The `Backend` on one SQLite file; `start()` before use, `close()` after."""

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
        self._announcer = Announcer()
        self.announce_to = self._announcer.announce_to
        self.damaged: str | None = None  # what a query found damaged; writes are refused from then on
        self._write_problem: str | None = None  # why the last write failed (full disk, read-only file)

    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)  # see Writer
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA synchronous = {self.durability.upper()}")
        for _ in range(100):
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:  # another process is creating the file
                if "locked" not in str(exc):
                    raise
        migrate(conn)
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints.py does them, off the writer's path
        conn.execute(f"PRAGMA journal_size_limit = {self.log_limit}")  # a restarted log is cut back to it
        return conn

    async def start(self) -> None:
        try:
            if self._throwaway is None:
                Path(self.path).resolve().parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self._writer.start)
            self._file = FileWatch(self.path)  # the file now open: /healthz and writes notice it removed or replaced
            self._sweep = IndexSweep(self.path)
            self._checkpoints.start()
            for _ in range(self._reader_count):
                reader = await aiosqlite.connect(self.path, isolation_level=None)
                self._all_readers.append(reader)
                await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                await reader.execute("PRAGMA query_only = ON")
                self._readers.put_nowait(reader)
            self._direct = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._direct.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._direct.execute("PRAGMA query_only = ON")
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc
        self.telemetry.database_file(self.path, self.log_limit)

    async def close(self) -> None:
        for reader in self._all_readers:
            await reader.close()
        self._all_readers.clear()
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        await asyncio.to_thread(self._checkpoints.stop)
        await asyncio.to_thread(self._writer.stop)
        if self._throwaway is not None:
            shutil.rmtree(self._throwaway, ignore_errors=True)

    def _failed(self, exc: BaseException) -> BaseException:
        """The clear error for a failure of the database (remembering a damaged file), or `exc` itself."""
        error = translate(exc, self.path)
        if error is None:
            return exc
        self.telemetry.failed(cause(exc))
        if kind(exc).startswith(DAMAGED) and self.damaged is None:
            self.damaged = error.message
            if self._all_readers:  # met while serving (at start, the one-line start-up error says it)
                logger.error("%s", error.message)
        return error

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        if self._direct is not None and self._reading == 0:
            # nobody else reads: the read runs here, without the two thread hops (most reads are one index
            # range); concurrent reads go to the reader threads, where SQLite's work overlaps
            self._reading += 1
            try:
                with self._sql.read(sql):
                    found = self._direct.execute(sql, params).fetchall()
                await asyncio.sleep(0)  # a caller reading in a loop still lets the other tasks run
                return found
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc
            finally:
                self._reading -= 1
        reader = await self._readers.get()
        try:
            with self._sql.read(sql):  # on a reader's thread: the span, here, is the caller's wait for it
                return list(await reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        finally:
            self._readers.put_nowait(reader)

    def _log(self) -> writes.ChangeLog:
        return writes.ChangeLog(self._origin)

    async def _write(self, job: Callable[[sqlite3.Connection], T], log: writes.ChangeLog | None = None) -> T:
        """Run `job` on the writer (one savepoint in a group commit); a failure of the database becomes a clear
        error, and the write problem it shows is kept for /healthz until a write succeeds again. Once committed,
        the changes `log` recorded are announced to this process."""
        if self.damaged is None:
            self.damaged = self._sweep.found  # what a sweep of the indexes found (health.py), if anything
        if self.damaged is not None:
            self.telemetry.failed("damaged")
            raise Unavailable(self.damaged)
        refused = self._file.problem()  # removed, replaced or unwritable: nothing acknowledged into it
        if refused is not None:
            self.telemetry.failed("file_problem")
            raise Unavailable(refused)
        self._sweep.soon()  # while writes come, a bounded look at the indexes each second, on a thread

        def attempt(conn: sqlite3.Connection) -> T:  # run again when the lock was busy: record the changes anew
            if log is not None:
                log.reset()
            return job(conn)

        try:
            result = await self._writer.run(self._sql.on_thread(attempt))  # its span on the writer's thread
        except sqlite3.Error as exc:
            error = self._failed(exc)
            if kind(exc).startswith(WRITE_BLOCKED) and isinstance(error, Unavailable):
                self._write_problem = error.message
            raise error from exc
        lost = self._file.gone()  # removed or replaced while this write ran: its commit went into the old file
        if lost is not None:
            self.telemetry.failed("file_problem")
            raise Unavailable(f"{lost}; this write ran meanwhile and went into the old file, so it is not kept")
        self._write_problem = None
        if log is not None:
            self._announcer.tell(log.changes)
        return result

    async def follow(self, deliver: Deliver, wanted: Callable[[], bool]) -> None:
        await follow_feed(self.path, self._origin, self._failed, deliver, wanted)

    # --- messages ---

    async def insert_message(self, org: str, record: MessageRecord) -> AppendedMessage:
        log = self._log()
        return await self._write(lambda conn: writes.insert_message(conn, org, record, _now_us(), log), log)

    async def insert_messages(self, org: str, records: Sequence[MessageRecord]) -> list[AppendedMessage]:
        log = self._log()

        def job(conn: sqlite3.Connection) -> list[AppendedMessage]:
            now_us = _now_us()
            return [writes.one(conn, writes.insert_message, org, record, now_us, log) for record in records]

        return await self._write(job, log)

    async def latest_messages(
        self, org: str, contact_id: str, only: MessageFilter, limit: int, max_bytes: int
    ) -> list[Message]:
        sql, params = latest_sql(only)
        found = await self._read(bounded_sql(sql), [org, contact_id, *params, limit, max_bytes])
        return rows.messages(found)

    async def message_page(
        self, org: str, contact_id: str, only: MessageFilter, limit: int, after: Position | None, max_bytes: int
    ) -> list[tuple[Message, Position]]:
        sql, params = latest_sql(only, after=after is not None)
        found = await self._read(bounded_sql(sql), [org, contact_id, *params, *(after or ()), limit, max_bytes])
        return list(zip(rows.messages(found), [(row[8], row[9]) for row in found], strict=True))

    async def search(
        self, org: str, query: Query, contact_id: str | None, channel: str | None, role: str | None, window: int
    ) -> list[tuple[int, str]]:
        expression = fts_expression(query)
        params: list[Any] = [org, contact_id, expression] if contact_id is not None else [expression]
        params += [org, *(value for value in (channel, role) if value is not None)]
        sql = search_sql(contact_id is not None, channel is not None, role is not None)
        return [(seq, content) for seq, content in await self._read(sql, [*params, window])]

    async def messages_at(self, org: str, seqs: Sequence[int]) -> list[Message]:
        found = await self._read(
            MESSAGE_WITH_CONTACT + f"m.org_id = {ORG} AND m.seq IN (SELECT value FROM json_each(?))",
            [org, json.dumps(list(seqs))],
        )
        order = {seq: index for index, seq in enumerate(seqs)}
        return rows.messages(sorted(found, key=lambda row: order[row[9]]))

    async def delete_message(self, org: str, message_id: str) -> Message | None:
        def job(conn: sqlite3.Connection) -> Message | None:
            found = writes.find_message(conn, f"m.id = ? AND m.org_id = {ORG}", (message_id, org))
            if found is not None:
                conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
                log.record(conn, org, found.contact_id)
            return found

        log = self._log()
        return await self._write(job, log)

    # --- chats ---

    async def chat(self, org: str, chat_id: str) -> Chat | None:
        found = await self._read(CHAT_SELECT + f" WHERE ch.id = ? AND ch.org_id = {ORG}", (chat_id, org))
        return rows.chat(found[0]) if found else None

    async def insert_chat(self, org: str, record: ChatRecord) -> Chat:
        def job(conn: sqlite3.Connection) -> Chat:
            writes.insert_chat(conn, org, record, log)
            return writes.chat_by_id(conn, record.id)

        log = self._log()
        return await self._write(job, log)

    async def set_chat_status(self, org: str, chat_id: str, status: ChatStatus, now: datetime) -> Chat | None:
        def job(conn: sqlite3.Connection) -> Chat | None:
            cursor = conn.execute(
                f"UPDATE chats SET status = ?, updated_us = ? WHERE id = ? AND org_id = {ORG}",
                (status, rows.to_us(now), chat_id, org),
            )
            if not cursor.rowcount:
                return None
            chat = writes.chat_by_id(conn, chat_id)
            log.record(conn, org, chat.contact_id)
            return chat

        log = self._log()
        return await self._write(job, log)

    async def chats(self, org: str, contact_id: str, limit: int) -> list[Chat]:
        found = await self._read(
            CHAT_SELECT + f" WHERE ch.contact_pk = {CONTACT} ORDER BY ch.created_us DESC, ch.rowid DESC LIMIT ?",
            (org, contact_id, limit),
        )
        return [rows.chat(row) for row in found]

    # --- contacts ---

    async def forget_contact(self, org: str, contact_id: str) -> ForgetResult:
        def job(conn: sqlite3.Connection) -> ForgetResult:
            contact_key = writes.existing_contact_pk(conn, org, contact_id)
            if contact_key is None:
                return ForgetResult(contact_id=contact_id, deleted_messages=0, deleted_chats=0)
            own = conn.execute("SELECT external_id FROM contacts WHERE id = ?", (contact_key,)).fetchone()[0]
            aliases = writes.aliases_of(conn, contact_key, own)
            messages = conn.execute("DELETE FROM messages WHERE contact_pk = ?", (contact_key,)).rowcount
            chats = conn.execute("DELETE FROM chats WHERE contact_pk = ?", (contact_key,)).rowcount
            conn.execute("DELETE FROM channels WHERE contact_pk = ?", (contact_key,))
            identifiers = conn.execute("DELETE FROM identifiers WHERE contact_pk = ?", (contact_key,)).rowcount
            conn.execute("DELETE FROM contacts WHERE id = ?", (contact_key,))
            log.record(conn, org, own, "forgotten", aliases)
            return ForgetResult(
                contact_id=own, deleted_messages=messages, deleted_chats=chats, deleted_identifiers=identifiers
            )

        log = self._log()
        return await self._write(job, log)

    async def resolve(self, org: str, identifier: str) -> str | None:
        found = await self._read(f"SELECT external_id FROM contacts WHERE id = {CONTACT}", (org, identifier))
        return str(found[0][0]) if found else None

    async def contact(self, org: str, contact_id: str) -> ContactInfo | None:
        def job(conn: sqlite3.Connection) -> ContactInfo | None:  # on the writer: one consistent snapshot
            contact_key = writes.existing_contact_pk(conn, org, contact_id)
            return None if contact_key is None else writes.contact_info(conn, contact_key)

        return await self._write(job)

    async def link(self, org: str, contact_id: str, identifier: str) -> LinkResult:
        log = self._log()
        return await self._write(lambda conn: writes.link(conn, org, contact_id, identifier, _now_us(), log), log)

    async def unlink(self, org: str, identifier: str) -> ContactInfo | None:
        log = self._log()
        return await self._write(lambda conn: writes.unlink(conn, org, identifier, log), log)

    async def recent_contacts(self, org: str, limit: int) -> list[str]:
        found = await self._read(
            f"SELECT external_id FROM contacts WHERE org_id = {ORG} ORDER BY last_active_us DESC, id DESC LIMIT ?",
            (org, limit),
        )
        return [row[0] for row in found]

    # --- history ---

    async def export_messages(
        self, org: str | None, contact_id: str | None, batch: int, skipped: list[str] | None = None
    ) -> AsyncIterator[tuple[str, Message]]:
        select = (
            f"SELECT {MESSAGE_COLUMNS}, c.external_id, o.name FROM messages m "
            "JOIN contacts c ON c.id = m.contact_pk JOIN orgs o ON o.id = m.org_id"
        )
        walk = Walk(self._read, lambda: self.damaged is not None, skipped)
        async for row in walk.keyset(select, "m.seq", 9, org, contact_id, "c.external_id", batch):
            yield row[11], rows.message(row, row[10])

    async def export_chats(
        self, org: str | None, contact_id: str | None, batch: int, skipped: list[str] | None = None
    ) -> AsyncIterator[tuple[str, Chat]]:
        select = f"SELECT ch.rowid, o.name, {CHAT_COLUMNS} {CHAT_FROM} JOIN orgs o ON o.id = ch.org_id"
        walk = Walk(self._read, lambda: self.damaged is not None, skipped)
        async for row in walk.keyset(select, "ch.rowid", 0, org, contact_id, "co.external_id", batch):
            yield row[1], rows.chat(row[2:])

    async def count_records(self, org: str | None, contact_id: str | None) -> int:
        where, params = "1", []
        if org is not None:
            where += f" AND t.org_id = {ORG}"
            params.append(org)
        if contact_id is not None:
            where += " AND t.contact_pk IN (SELECT id FROM contacts WHERE external_id = ?)"
            params.append(contact_id)
        aliases = where.replace("t.contact_pk", "i.contact_pk").replace("t.org_id", "i.org_id")
        found = await self._read(
            f"SELECT (SELECT count(*) FROM chats t WHERE {where}) + (SELECT count(*) FROM messages t WHERE {where})"
            f" + (SELECT count(*) FROM identifiers i JOIN contacts c ON c.id = i.contact_pk"
            f" WHERE i.identifier != c.external_id AND {aliases})",
            params * 3,
        )
        return int(found[0][0])

    async def export_aliases(self, org: str | None, contact_id: str | None) -> AsyncIterator[tuple[str, Alias]]:
        where, params = "", []
        if org is not None:
            where += " AND o.name = ?"
            params.append(org)
        if contact_id is not None:
            where += " AND c.external_id = ?"
            params.append(contact_id)
        found = await self._read(
            "SELECT o.name, c.external_id, i.identifier, i.created_us FROM identifiers i "
            "JOIN contacts c ON c.id = i.contact_pk JOIN orgs o ON o.id = i.org_id "
            f"WHERE i.identifier != c.external_id{where} ORDER BY i.created_us, i.identifier",
            params,
        )
        for org_name, owner, identifier, created_us in found:
            yield org_name, Alias(contact_id=owner, identifier=identifier, created_at=rows.from_us(created_us))

    async def import_history(
        self, org: str, records: Sequence[ChatRecord | AliasRecord | MessageRecord | ChatdockError], keep_going: bool
    ) -> list[Imported | ChatdockError]:
        log = self._log()

        def job(conn: sqlite3.Connection) -> list[Imported | ChatdockError]:
            now_us = _now_us()
            outcomes: list[Imported | ChatdockError] = []
            for record in records:
                try:
                    if isinstance(record, ChatdockError):
                        raise record
                    if isinstance(record, ChatRecord):
                        again = not writes.one(conn, writes.insert_chat, org, record, log)
                    elif isinstance(record, AliasRecord):
                        again = not writes.one(conn, writes.import_alias, org, record, log)
                    else:
                        again = writes.one(conn, writes.insert_message, org, record, now_us, log, True).deduplicated
                    outcomes.append("existing" if again else "stored")
                except ChatdockError as exc:
                    outcomes.append(exc)
                    if not keep_going:
                        raise Undo(outcomes) from None
            return outcomes

        return await self._write(job, log)

    async def _by_ids(self, select: str, ids: Sequence[str]) -> list[Any]:
        found: list[Any] = []
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            found += await self._read(f"{select} IN ({', '.join('?' * len(chunk))})", chunk)
        return found

    async def message_orgs(self, message_ids: Sequence[str]) -> dict[str, str]:
        found = await self._by_ids(
            "SELECT m.id, o.name FROM messages m JOIN orgs o ON o.id = m.org_id WHERE m.id", message_ids
        )
        return {row[0]: row[1] for row in found}

    async def chat_owners(self, chat_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        found = await self._by_ids(
            "SELECT ch.id, o.name, co.external_id FROM chats ch JOIN orgs o ON o.id = ch.org_id "
            "JOIN contacts co ON co.id = ch.contact_pk WHERE ch.id",
            chat_ids,
        )
        return {row[0]: (row[1], row[2]) for row in found}

    # --- API keys ---

    async def insert_api_key(self, org: str, prefix: str, name: str | None, key_hash: str) -> ApiKeyInfo:
        def job(conn: sqlite3.Connection) -> ApiKeyInfo:
            now_us = _now_us()
            try:
                conn.execute(
                    "INSERT INTO api_keys (prefix, name, org_id, hash, created_us) VALUES (?, ?, ?, ?, ?)",
                    (prefix, name, writes.org_pk(conn, org, now_us), key_hash, now_us),
                )
            except sqlite3.IntegrityError:
                raise key_name_taken(name) from None
            return _keys(conn, "k.prefix = ?", (prefix,))[0]

        return await self._write(job)

    async def api_keys(self) -> list[ApiKeyInfo]:
        return await self._write(lambda conn: _keys(conn, "1", ()))

    async def api_key(self, prefix: str) -> StoredKey | None:
        found = await self._read(
            "SELECT k.hash, o.name, k.revoked_us, k.last_used_us FROM api_keys k JOIN orgs o ON o.id = k.org_id "
            "WHERE k.prefix = ?",
            (prefix,),
        )
        if not found:
            return None
        key_hash, org, revoked_us, last_used_us = found[0]
        return StoredKey(key_hash, org, revoked_us is not None, rows.optional_from_us(last_used_us))

    async def revoke_api_key(self, prefix_or_name: str) -> ApiKeyInfo | None:
        def job(conn: sqlite3.Connection) -> ApiKeyInfo | None:
            live = _keys(conn, "(k.prefix = ? OR k.name = ?) AND k.revoked_us IS NULL", (prefix_or_name,) * 2)
            if not live:
                return None
            conn.execute("UPDATE api_keys SET revoked_us = ? WHERE prefix = ?", (_now_us(), live[0].prefix))
            return _keys(conn, "k.prefix = ?", (live[0].prefix,))[0]

        return await self._write(job)

    async def touch_api_key(self, prefix: str, now: datetime) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE api_keys SET last_used_us = ? WHERE prefix = ?", (rows.to_us(now), prefix)
            )
        )

    async def ping(self) -> None:
        await self._read("SELECT count(*) FROM schema_migrations", ())

    async def health(self) -> list[str]:
        problems: list[str] = []
        try:
            await self.ping()
        except Unavailable as exc:
            problems.append(exc.message)
        folder = os.path.dirname(os.path.abspath(self.path))
        free = shutil.disk_usage(folder).free
        if free < MIN_FREE_BYTES:
            problems.append(f"the disk is full: {free:,} bytes free on the disk of {self.path}; free space on it")
        if self._write_problem is not None and self.damaged is None and free >= MIN_FREE_BYTES:
            # the last write failed: see whether one works now (one small row), so recovery shows by itself
            try:
                await self._write(
                    lambda conn: conn.execute(
                        "INSERT OR REPLACE INTO health (id, checked_us) VALUES (1, ?)", (_now_us(),)
                    )
                )
            except Unavailable as exc:
                problems.append(exc.message)
        file_problem = self._file.problem()
        if file_problem is not None:
            problems.append(file_problem)
        elif self.damaged is None:
            # a bounded look at the indexes (health.py), off the event loop: damage no query has met yet
            found = await asyncio.to_thread(self._sweep.now) if self._sweep.due() else self._sweep.found
            self.damaged = self.damaged or found
        if self.damaged is not None:
            problems.append(self.damaged)
        return list(dict.fromkeys(problems))


def integrity_check(path: str) -> list[str]:
    """SQLite's full check of the file's structure, read-only: what is damaged, or empty when nothing is."""
    if not os.path.isfile(path):
        raise Unavailable(f"cannot check {path}: there is no such file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            found = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if kind(exc).startswith(DAMAGED):
            return [f"the check itself stopped: {exc}"]
        raise translate(exc, path) or exc from exc
    return [] if found == ["ok"] else found
