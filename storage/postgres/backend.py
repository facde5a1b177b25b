"""The PostgreSQL backend: an asyncpg pool shared by any number of chatdock replicas on one database.

Appends are batched: while earlier appends are in flight, the ones arriving meanwhile go out together as one
statement (`chatdock_append`, schema.py) in one transaction, so concurrent callers share round trips and
commits, as group commit does for SQLite; a lone caller never waits for a batch to fill. Every other write is
one transaction of its own, through the shared SQL (storage/sql/). Changes reach the other replicas through
LISTEN/NOTIFY (feed.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import random
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from .. import rows
from .. import search as rules
from ..changes import Announcer, Change, Deliver
from ..errors import (
    UNREADABLE_URL,
    ChatdockError,
    OutcomeUnknown,
    Unavailable,
    chat_not_found,
    message_id_taken,
    outcome_unknown,
)
from ..ids import uuid7
from ..models import AppendedMessage, Message, appended, channel_kind
from ..outage import Outage
from ..records import MessageRecord
from ..search import Query
from ..sql import writes as shared
from ..sql.backend import SQLBackend, now_us, settle
from ..sql.ops import Ops, Undo
from ..sql.ops import rows as all_rows
from ..sql.queries import MESSAGE_COLUMNS
from ..sql.walk import Read
from ..sql.writes import ORG_KEY
from ..telemetry import Telemetry
from . import driver
from .batches import Batches
from .failures import FAILURES, RETRYABLE, broken, cause, database_name, read_only, translate, where
from .feed import ChangeLog, follow_notifications
from .queries import DIALECT, ORG, candidates_text, search_sql, tsquery_text
from .reads import Reads
from .schema import migrate
from .wordstats import COMMON_SHARE, ERA_SHARE, WordStats

T = TypeVar("T")
logger = logging.getLogger("chatdock.storage")

DEFAULT_POOL_SIZE = 10
DEFAULT_TIMEOUT = 10.0  # seconds: to connect, to get a connection from the pool, for one statement
EXPORTS = 4  # exports under way at once on one replica, each on a connection of its own (outside the pool)
RETRIES = 5  # a transaction that met a deadlock or serialization failure is tried again this many times
BACKOFF = 0.005  # seconds: before retry n a transaction waits a random part of BACKOFF * 2**n
# /healthz's question: the schema readable (the database there and chatdock's), and whether it takes writes
# the tables every append and read needs are named too (read nothing of them: `WHERE false`), so that a lock that
# holds them up (a LOCK TABLE, a migration's ALTER behind a long transaction) makes the check wait as their
# requests do, and /healthz says so (it read the schema's version alone and said ok: an operator's review)
HEALTH_SQL = (
    "SELECT current_setting('transaction_read_only'), (SELECT count(*) FROM schema_migrations), "
    "(SELECT 1 FROM messages, contacts WHERE false)"
)


LOCK_WAIT = 0.25  # seconds a batch of appends waits for a row another transaction holds (`_append_batch`)
HELD_AT_ONCE = 2  # contacts whose held appends wait for their rows at once, a connection each (`_append_held`)


class _Held(Unavailable):
    """A batch's answer for an append whose contact's row another transaction holds: it waits on its own."""


def _append_item(org: str, record: MessageRecord, now: int, importing: bool) -> dict[str, Any]:
    m = record.message
    return {
        "org": org,
        "id": m.id,
        "contact": m.contact_id,
        "agent": m.agent_id,
        "chat": m.chat_id,
        "channel": m.channel,
        "channel_id": uuid7(),
        "channel_kind": channel_kind(m.channel),
        "role": m.role,
        "content": m.content,
        "parts": rows.parts_json(m.parts, record.plain),
        "metadata": rows.metadata_json(m.metadata),
        "provider": record.provider_message_id,
        "created": rows.to_us(m.created_at),
        "now": now,
        "importing": importing,
    }


def _outcome(record: MessageRecord, found: dict[str, Any]) -> AppendedMessage | ChatdockError:
    """One result of `chatdock_append` as what the caller gets."""
    status = found["s"]
    m = record.message
    if status == "stored":
        if found["c"] != m.contact_id:  # an alias: the message belongs to, and is named by, its contact
            m = m.model_copy(update={"contact_id": found["c"]})
        return appended(m, False, found.get("v"))
    if status == "existing":
        stored = found["m"]
        return appended(rows.message(stored, stored[10]), True)
    if status == "no_chat":
        return chat_not_found(str(m.chat_id), m.contact_id)
    return message_id_taken(m.id)


def _append(
    items: list[dict[str, Any]], log: shared.ChangeLog, lock_wait: float | None = None
) -> Ops[list[dict[str, Any]]]:
    """Appends as one statement (`chatdock_append`, schema.py, which NOTIFYs what it stores); each stored
    message's change is kept in `log` to be announced here. With `lock_wait`, a row another transaction holds
    is waited for that many seconds at most (then asyncpg's LockNotAvailableError)."""
    if lock_wait is None:
        query = all_rows("SELECT chatdock_append(?::jsonb, ?)", items, log.origin)
    else:
        # the statement's own lock_timeout (its transaction's: it is one), set before the append runs; a shorter
        # one the server sets (a DBA's) is kept
        wait = f"{int(lock_wait * 1000)}ms"
        query = all_rows(
            "SELECT chatdock_append(?::jsonb, ?) FROM (SELECT set_config('lock_timeout', CASE WHEN "
            "current_setting('lock_timeout')::interval > interval '0' AND current_setting('lock_timeout')::interval "
            "< ?::text::interval THEN current_setting('lock_timeout') ELSE ? END, true) AS waiting) w "
            "WHERE w.waiting IS NOT NULL",
            items,
            log.origin,
            wait,
            wait,
        )
    found = [row[0] for row in (yield query)]
    for item, result in zip(items, found, strict=True):
        if result["s"] == "stored":
            log.written(Change(item["org"], result["c"], result["k"], tuple(result["a"])))
    return found


async def _undone(conn: driver.Connection, exc: BaseException, timeout: float) -> None:
    """The end of a write that failed (`exc`): its transaction rolled back, or its connection dropped when the
    server did not answer (asyncpg would cancel the statement first and wait for the hung server to hear it, as
    long again: a write took twice --db-timeout, found by an operator's review), when the write was cancelled,
    or when the rollback fails. A dropped connection's transaction is undone by the server."""
    if conn.is_closed():
        return
    if isinstance(exc, Exception) and not isinstance(exc, TimeoutError):
        try:
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK", timeout=timeout)
            return
        except BaseException as failed:  # a cancel meanwhile too: never a connection handed back mid-transaction
            conn.terminate()
            if not isinstance(failed, Exception):
                raise
            return
    conn.terminate()


async def _close_quietly(conn: asyncpg.Connection) -> None:
    """Close a connection of its own (its transaction ends with it); one that cannot say goodbye is dropped."""
    try:
        await asyncio.wait_for(conn.close(), 1.0)
    except FAILURES:
        conn.terminate()


async def _init_connection(conn: driver.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: driver.Connection) -> None:
    """What a pooled connection needs before its next user: nothing. chatdock leaves no session state on one
    (no SET, LISTEN or advisory lock: the feed and the migrations have connections of their own), and asyncpg
    still rolls back a transaction left open. Its default reset sends four statements at every release, a
    round trip as long as a read's own."""


class PostgresBackend(SQLBackend):
    """The `Backend` on one PostgreSQL database; `start()` before use, `close()` after."""

    dialect = DIALECT

    def __init__(
        self,
        url: str,
        pool_size: int = DEFAULT_POOL_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.url = url
        self.place = where(url)
        self.pool_size = max(2, pool_size)
        self.timeout = timeout
        self.telemetry = telemetry or Telemetry()
        # an outage of the reads and one of the writes: a read that works again does not end the writes' (a
        # read-only database, a locked table: each probe's read said "work again" while every write failed)
        self._outages = {False: Outage(f"reads from {self.place}"), True: Outage(f"writes to {self.place}")}
        self._sql = self.telemetry.sql("postgresql", database_name(url), FAILURES)
        self._pool: asyncpg.Pool | None = None
        self._origin = secrets.token_hex(8)  # marks this process's notifications
        self.applied: list[int] = []  # the migrations this process applied as it opened the database
        self._announcer = Announcer()
        self.announce_to = self._announcer.announce_to
        # appends in flight at once: the pool keeps room for reads and for the other writes
        writers = max(1, self.pool_size // 2)
        self._appends = Batches(self._append_batch, writers)
        # appends waiting for a row another transaction holds (`_append_held`): contacts at once, each one's turns
        self._held = asyncio.Semaphore(HELD_AT_ONCE)
        self._held_turns: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        # reads take at most the other half less one, so a burst of readers never starves the appends of
        # connections, and one connection stays for key and health checks and the other writes (reads.py)
        self._reads = Reads(self.pool_size - writers - 1, timeout, self.place, self.telemetry.failed)
        self._words = WordStats(self._read)  # how common a prefix search's words are (wordstats.py)
        self._org_keys: dict[str, int] = {}  # organizations' keys, once read: an organization keeps its key
        self._exports = asyncio.Semaphore(EXPORTS)

    async def start(self) -> None:
        try:
            conn = await asyncpg.connect(
                self.url, timeout=self.timeout, server_settings=driver.named(self.url, "chatdock migrate")
            )
            try:
                self.applied = await migrate(conn, self.place)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.timeout,
                command_timeout=self.timeout,
                init=_init_connection,
                reset=_keep_session,
                server_settings=driver.named(self.url, "chatdock"),
            )
        except FAILURES as exc:
            text = translate(exc, self.url, starting=True)
            if text is not None:
                self.telemetry.failed(cause(exc))
            raise exc if text is None else Unavailable(text) from exc
        except ValueError as exc:  # asyncpg's parse of the URL
            raise Unavailable(f"{UNREADABLE_URL}: {exc}") from exc
        self.telemetry.connection_pool(self._pool)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except FAILURES:
                pool.terminate()

    def _failed(self, exc: BaseException, writing: bool = False) -> BaseException:
        text = translate(exc, self.url, writing=writing)
        if text is None:
            return exc
        why = cause(exc)
        self.telemetry.failed(why)
        if why != "statement_refused":  # that one is logged as an error, with its trace (failures.py)
            # in the log too, not only in the answers and the metrics (outage.py)
            self._outages[writing].failed(text, why)
        return Unavailable(text)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise Unavailable(f"the store on {self.place} is closed")
        return self._pool

    @contextlib.asynccontextmanager
    async def _export_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of its own, not one of the pool's: an export lasts as long as its reader takes, and slow
        downloads held the pool's connections from every request (the one kept for health and key checks
        included). At most EXPORTS at once; a further one waits `timeout`, then 503. Closed however it ends."""
        try:
            await asyncio.wait_for(self._exports.acquire(), self.timeout)
        except TimeoutError:
            self.telemetry.failed("exports_busy")
            raise Unavailable(
                f"{EXPORTS} exports are under way on this server, the most at once; try again when one has ended"
            ) from None
        try:
            try:
                conn = await asyncpg.connect(
                    self.url,
                    timeout=self.timeout,
                    command_timeout=self.timeout,
                    server_settings=driver.named(self.url, "chatdock export"),
                )
            except FAILURES as exc:
                raise self._failed(exc) from exc
            try:
                yield conn
            finally:
                await settle(_close_quietly(conn))  # even when cancelled: a client that left a REST export
        finally:
            self._exports.release()

    @contextlib.asynccontextmanager
    async def _consistent_read(self) -> AsyncIterator[Read]:
        """Reads on an export's connection (`_export_connection`), in one REPEATABLE READ, READ ONLY transaction:
        each sees the database as it was at the transaction's first statement."""
        async with self._export_connection() as conn:
            try:
                await _init_connection(conn)
                await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", timeout=self.timeout)
            except FAILURES as exc:
                raise self._failed(exc) from exc

            async def read(sql: str, params: Sequence[Any]) -> list[Any]:
                try:
                    with self._sql.read(sql):
                        return list(await conn.fetch(driver.numbered(sql), *params, timeout=self.timeout))
                except FAILURES as exc:
                    raise self._failed(exc) from exc

            yield read

    async def _read(
        self, sql: str, params: Sequence[Any], org: str | None = None, *, urgent: bool = False, replan: bool = False
    ) -> list[Any]:
        """One statement's rows, in a turn for `org` (reads.py); `urgent` (key and health checks) skips the
        turns and takes the connection the pool keeps in reserve, so it never waits behind reads; `replan`: the
        statement is planned for these parameters, never from a plan kept for it."""
        asked = time.monotonic()
        # the span holds the wait for a turn and a connection too: a read that could not connect, or got no
        # turn, is an error span beneath its request (it had none: a 503 of a PostgreSQL away showed no cause)
        with self._sql.read(sql):
            try:
                if urgent:
                    found = await self._fetch(sql, params, asked, replan)
                else:
                    try:
                        async with self._reads.slot(org):
                            found = await self._fetch(sql, params, asked, replan)
                    except Unavailable:  # no turn within --db-timeout: the longest of waits, told as one
                        self.telemetry.waited(time.monotonic() - asked)
                        raise
            except FAILURES as exc:
                raise self._failed(exc) from exc
        self._outages[False].worked()
        return found

    async def _fetch(self, sql: str, params: Sequence[Any], asked: float, replan: bool) -> list[Any]:
        """One statement's rows, on a connection of the pool; how long it waited since `asked` is told."""
        async with self.pool.acquire() as conn:
            self.telemetry.waited(time.monotonic() - asked)
            try:
                if replan:  # a statement of its own, outside the connection's cache: planned for these
                    statement = await conn.prepare(driver.numbered(sql), timeout=self.timeout)
                    return list(await statement.fetch(*params, timeout=self.timeout))
                return list(await conn.fetch(driver.numbered(sql), *params, timeout=self.timeout))
            except TimeoutError:
                # unanswered: the connection is dropped, not handed back, where asyncpg would wait for a server that
                # does not answer to hear the statement cancelled (as long again: a read took twice --db-timeout)
                conn.terminate()
                raise

    def _write_failed(self, exc: BaseException, stage: str) -> BaseException:
        """The error for a write that failed at `stage` ("connecting", "writing", "committing"): a connection
        that broke while its commit was on the way leaves the outcome unknown; before that, the server undid
        the transaction (or never began it)."""
        if stage == "committing" and broken(exc):
            self.telemetry.failed("outcome_unknown")
            waited = self.timeout if isinstance(exc, TimeoutError) else None  # (asyncio's is the builtin one)
            return outcome_unknown(self.place, str(exc) or type(exc).__name__, waited)
        failed = self._failed(exc, writing=True)
        if isinstance(exc, TimeoutError) and isinstance(failed, Unavailable):  # undone before its commit was sent
            return Unavailable(f"{failed.message}; nothing was written")
        return failed

    async def _transact(
        self, attempt: Callable[[], Ops[T]], batch: int | None = None, passing: tuple[type[BaseException], ...] = ()
    ) -> T:
        """Run `attempt()` in one transaction, again on a deadlock or serialization failure. A `batch` (of
        appends) is one statement, committed as it ends, and told to telemetry as that many writes. A failure
        after the commit (releasing the connection) does not undo it: the caller gets its result. The failures
        `passing` reach the caller as they are, neither failures of the database nor an outage: the caller's own
        bound (a batch's wait for a row lock)."""
        for tries in range(RETRIES + 1):
            stage = "connecting"
            try:
                with self._sql.write() if batch is None else contextlib.nullcontext():
                    asked = time.monotonic()
                    async with self.pool.acquire(timeout=self.timeout) as conn:
                        began = time.monotonic()
                        self.telemetry.waited(began - asked)
                        try:
                            if batch is None:
                                stage = "writing"
                                await conn.execute("BEGIN", timeout=self.timeout)
                                result = await driver.run(conn, attempt(), self.timeout)
                                stage = "committing"
                                await conn.execute("COMMIT", timeout=self.timeout)
                            else:
                                stage = "committing"
                                result = await driver.run(conn, attempt(), self.timeout)
                                self.telemetry.committed(batch, time.monotonic() - began)
                        except BaseException as exc:
                            await _undone(conn, exc, self.timeout)
                            raise
                        stage = "committed"
                self._outages[True].worked()
                return result
            except Undo as undone:
                return undone.value  # type: ignore[return-value]
            except passing:
                raise
            except RETRYABLE as exc:
                if tries == RETRIES:
                    raise self._failed(exc, writing=True) from exc
                logger.debug("%s: %s; the transaction is tried again", self.place, type(exc).__name__)
                await asyncio.sleep(random.uniform(0, BACKOFF * 2**tries))  # two that met do not meet again at once
            except FAILURES as exc:
                if stage != "committed":
                    raise self._write_failed(exc, stage) from exc
                logger.warning("%s: a connection failed after its commit (%s); the write stands", self.place, exc)
                return result
        raise AssertionError("unreachable")

    def _log(self) -> ChangeLog:
        return ChangeLog(self._origin)

    async def follow(self, deliver: Deliver, wanted: Callable[[], bool], ready: Callable[[], None]) -> None:
        await follow_notifications(self.url, self._origin, self.timeout, deliver, ready, self.telemetry.feed)

    # --- messages ---

    async def _append_batch(self, batch: list[tuple[str, MessageRecord]]) -> list[AppendedMessage | ChatdockError]:
        """Appends of independent callers, one statement and one commit; in contact order, so two batches
        lock rows in the same order. A batch waits at most LOCK_WAIT for a row another transaction holds (a
        contact being linked or forgotten, a session outside chatdock): then each contact's appends go on their
        own, with the same bound, and those of a contact still held are answered `_Held`, for `insert_message`
        to wait for it outside the batches. Only they wait: the whole batch, other organizations' appends among
        them, waited or failed with it, and the batches after it waited for its place."""
        now = now_us()
        order = sorted(range(len(batch)), key=lambda i: (batch[i][0], batch[i][1].message.contact_id))
        outcomes: list[AppendedMessage | ChatdockError] = [Unavailable("not run")] * len(batch)
        try:
            await self._append_group(batch, order, now, outcomes, LOCK_WAIT)
            return outcomes
        except asyncpg.LockNotAvailableError:
            logger.debug("%s: a batch of appends met a row held elsewhere; each contact's go on their own", self.place)
        contacts = itertools.groupby(order, key=lambda i: (batch[i][0], batch[i][1].message.contact_id))
        for _, indexes in contacts:
            group = list(indexes)
            try:
                await self._append_group(batch, group, now, outcomes, LOCK_WAIT)
            except asyncpg.LockNotAvailableError:
                for index in group:
                    outcomes[index] = _Held("held")
            except ChatdockError as exc:  # this contact's appends hear it; the others' are stored on their own
                for index in group:
                    outcomes[index] = exc
        return outcomes

    async def _append_held(self, org: str, record: MessageRecord) -> AppendedMessage | ChatdockError:
        """An append whose contact's row another transaction holds: on its own, outside the batches, waiting for
        the row until --db-timeout from now, then refused with nothing written. A contact's held appends take
        turns (one connection waits on a row, not one per append), and HELD_AT_ONCE contacts wait at most at once,
        so the pool stays the batches' and the reads'."""
        deadline = time.monotonic() + self.timeout
        key = (org, record.message.contact_id)
        turn = self._held_turns.get(key)  # kept while an append of the contact holds or waits for it
        if turn is None:
            turn = self._held_turns[key] = asyncio.Lock()
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await turn.acquire()
        except TimeoutError:
            return self._held_too_long(record)
        try:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._held.acquire()
            except TimeoutError:
                return self._held_too_long(record)
            try:
                outcomes: list[AppendedMessage | ChatdockError] = [Unavailable("not run")]
                # the row, for what is left of --db-timeout: less than the statement's own bound, so that it ends
                # as a lock not had (nothing written), never as a statement unanswered (its outcome unknown)
                waits = max(0.05, min(deadline - time.monotonic(), self.timeout * 0.9))
                await self._append_group([(org, record)], [0], now_us(), outcomes, waits)
                return outcomes[0]
            except asyncpg.LockNotAvailableError:
                return self._held_too_long(record)
            finally:
                self._held.release()
        finally:
            turn.release()

    def _held_too_long(self, record: MessageRecord) -> Unavailable:
        self.telemetry.failed("timeout")
        return Unavailable(
            f"{self.place}: the write waited --db-timeout ({self.timeout:g} s, or the server's lock_timeout if "
            f"shorter) for a lock another transaction holds (contact {record.message.contact_id}'s row, or its "
            "table: a link or forget of a long history, a migration, or a session outside chatdock); nothing was "
            "written; try again"
        )

    async def _append_group(
        self,
        batch: list[tuple[str, MessageRecord]],
        indexes: list[int],
        now: int,
        outcomes: list[AppendedMessage | ChatdockError],
        lock_wait: float | None,
    ) -> None:
        """The appends of `batch` at `indexes`, one statement and one commit, their outcomes put in `outcomes`;
        with `lock_wait`, a row lock waited for at most that long (LockNotAvailableError, nothing written)."""
        items = [_append_item(batch[i][0], batch[i][1], now, False) for i in indexes]
        log = self._log()
        passing = () if lock_wait is None else (asyncpg.LockNotAvailableError,)
        try:
            found = await self._write(
                lambda: _append(items, log, lock_wait),
                log,
                functools.partial(self._transact, batch=len(items), passing=passing),
            )
        except OutcomeUnknown:  # maybe stored, the contacts unknown (its answer says them): every listener of
            # each organization reads again, as `_write` tells them of any other write that may have been made
            self._announcer.tell(
                [Change(batch[i][0], batch[i][1].message.contact_id, aliases_unknown=True) for i in indexes]
            )
            raise
        for index, result in zip(indexes, found, strict=True):
            outcomes[index] = _outcome(batch[index][1], result)

    async def insert_message(self, org: str, record: MessageRecord) -> AppendedMessage:
        with self._sql.write("append"):  # the wait for a batch, its statement and its commit
            outcome = await self._appends.submit((org, record))
            if isinstance(outcome, _Held):
                outcome = await self._append_held(org, record)
        if isinstance(outcome, ChatdockError):
            raise outcome
        return outcome

    async def insert_messages(self, org: str, records: Sequence[MessageRecord]) -> list[AppendedMessage]:
        now = now_us()
        items = [_append_item(org, record, now, False) for record in records]
        log = self._log()

        def job() -> Ops[list[AppendedMessage]]:
            found = yield from _append(items, log)
            results: list[AppendedMessage] = []
            for record, result in zip(records, found, strict=True):
                outcome = _outcome(record, result)
                if isinstance(outcome, ChatdockError):
                    raise outcome  # all or none: the transaction is rolled back
                results.append(outcome)
            return results

        return await self._write(job, log)

    def _import_message(self, org: str, record: MessageRecord, now: int, log: shared.ChangeLog) -> Ops[AppendedMessage]:
        # nothing is written for an outcome but "stored": no savepoint needed
        [found] = yield from _append([_append_item(org, record, now, True)], log)
        outcome = _outcome(record, found)
        if isinstance(outcome, ChatdockError):
            raise outcome
        return outcome

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
        text = tsquery_text(query)
        prefixed = any(term.prefix for term in (*query.wanted, *query.excluded))
        candidates = None if prefixed else candidates_text(query)  # a prefix's search checks what it walks
        key = self._org_keys.get(org)
        if key is None:
            found_key = await self._read(ORG_KEY, [org], org)
            if not found_key:
                return [], 0  # an organization that has stored nothing
            key = self._org_keys[org] = int(found_key[0][0])

        async def newest(how: str, bound: bool = False) -> list[Any]:
            sql, params = search_sql(
                key, text, contact_id, channel, role, window, how, upto, candidates, rules.CANDIDATES, since or 0, bound
            )
            # planned for its words each time: a prepared statement's generic plan, blind to them, took a
            # contact's search through every match of a common word in the organization (42 ms at 1M)
            return list(await self._read(sql, params, org, replan=True))

        if contact_id is not None:
            return [(seq, content) for seq, content in await newest("newest")], 0
        if prefixed:
            # a prefix is asked of the index by reading every word it starts, for each look-up: never era by era
            how = "walk"  # a prefix common lately: its newest matches are among the newest messages
            found = await newest(how)
            if len(found) < window:
                how = "newest" if await self._words.share(query) >= COMMON_SHARE else "index"
                found = await newest(how)
            return [(seq, content) for seq, content in found], 0
        # a word common lately is found in the newest eras; a rarer one (by the statistics) is read through
        # the index at once, its matches being few, and a common one era by era down to the first
        found = await newest("recent eras")
        how = "recent eras"
        if len(found) < window:
            how = "eras" if await self._words.share(query) >= ERA_SHARE else "index"
            found = await newest(how)
        oldest = since or 0
        if candidates is not None and since is None and len(found) < window:
            # every message it could check was checked: the later pages check those (the oldest is their bound),
            # not the messages of the words before the newest match, which they would count again
            ((first, checked),) = await newest(how, bound=True)
            oldest = first if checked >= rules.CANDIDATES else 0
        return [(seq, content) for seq, content in found], oldest

    async def messages_at(self, org: str, seqs: Sequence[int]) -> list[tuple[int, Message]]:
        sql = (
            f"SELECT {MESSAGE_COLUMNS}, c.external_id FROM unnest($2::bigint[]) WITH ORDINALITY AS wanted(seq, n) "
            f"JOIN messages m ON m.seq = wanted.seq JOIN contacts c ON c.id = m.contact_pk "
            f"WHERE m.org_id = {ORG} ORDER BY wanted.n"
        )
        found = await self._read(sql, [org, list(seqs)], org)
        return [(row[9], message) for row, message in zip(found, rows.messages(found), strict=True)]

    async def health(self, writes: bool = True) -> list[str]:
        """What keeps the database from serving: unreachable, or taking no writes (reads go on; for a server that
        takes none, without `writes`, that is no problem)."""
        try:
            found = await self._read(HEALTH_SQL, (), urgent=True)
        except Unavailable as exc:
            return [exc.message]
        if writes and found[0][0] == "on":
            return [f"{read_only(self.place)}: writes are refused, reads still work"]
        return []
