"""The PostgreSQL backend: an asyncpg pool shared by any number of chatdock replicas on one database.

Appends are batched: while earlier appends are in flight, the ones arriving meanwhile go out together as one
statement (`chatdock_append`, schema.py) in one transaction, so concurrent callers share round trips and
commits, as group commit does for SQLite; a lone caller never waits for a batch to fill. Every other write is
one transaction of its own (writes.py). Changes reach the other replicas through LISTEN/NOTIFY (feed.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from .. import rows
from .. import validation as check
from ..backend import Imported, MessageFilter, StoredKey
from ..changes import Announcer, Change, Deliver
from ..cursor import Position
from ..errors import (
    ChatdockError,
    Unavailable,
    chat_not_found,
    key_name_taken,
    message_id_taken,
    outcome_unknown,
)
from ..ids import uuid7
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
    appended,
    channel_kind,
)
from ..records import AliasRecord, ChatRecord, MessageRecord
from ..search import Query
from ..telemetry import Telemetry
from . import writes
from .batches import Batches
from .failures import FAILURES, RETRYABLE, broken, cause, database_name, translate, where
from .feed import follow_notifications
from .queries import (
    CHAT_COLUMNS,
    CHAT_FROM,
    CHAT_SELECT,
    CONTACT,
    KEY_SELECT,
    MESSAGE_COLUMNS,
    ORG,
    latest_sql,
    search_sql,
    tsquery_text,
)
from .reads import Reads
from .schema import migrate
from .wordstats import WordStats

T = TypeVar("T")
logger = logging.getLogger("chatdock.storage")

DEFAULT_POOL_SIZE = 10
DEFAULT_TIMEOUT = 10.0  # seconds: to connect, to get a connection from the pool, for one statement
RETRIES = 5  # a batch that met a deadlock or serialization failure is tried again this many times


def _now_us() -> int:
    return rows.to_us(check.utc_now())


class _Rollback(Exception):
    """Raised inside a transaction to undo it and still return `value`."""

    def __init__(self, value: object) -> None:
        super().__init__("rollback")
        self.value = value


def _append_item(org: str, record: MessageRecord, now_us: int, importing: bool) -> dict[str, Any]:
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
        "now": now_us,
        "importing": importing,
    }


def _outcome(record: MessageRecord, found: dict[str, Any]) -> AppendedMessage | ChatdockError:
    """One result of `chatdock_append` as what the caller gets."""
    status = found["s"]
    m = record.message
    if status == "stored":
        if found["c"] != m.contact_id:  # an alias: the message belongs to, and is named by, its contact
            m = m.model_copy(update={"contact_id": found["c"]})
        return appended(m, False)
    if status == "existing":
        stored = found["m"]
        return appended(rows.message(stored, stored[10]), True)
    if status == "no_chat":
        return chat_not_found(str(m.chat_id), m.contact_id)
    return message_id_taken(m.id)


async def _init_connection(conn: writes.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class PostgresBackend:
    """The `Backend` on one PostgreSQL database; `start()` before use, `close()` after."""

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
        self._sql = self.telemetry.sql("postgresql", database_name(url), FAILURES)
        self._pool: asyncpg.Pool | None = None
        self._origin = secrets.token_hex(8)  # marks this process's notifications
        self._announcer = Announcer()
        self.announce_to = self._announcer.announce_to
        # appends in flight at once: the pool keeps room for reads and for the other writes
        writers = max(1, self.pool_size // 2)
        self._appends = Batches(self._append_batch, writers)
        # reads take at most the other half less one, so a burst of readers never starves the appends of
        # connections, and one connection stays for key and health checks and the other writes (reads.py)
        self._reads = Reads(self.pool_size - writers - 1, timeout, self.place, self.telemetry.failed)
        self._words = WordStats(self._read)  # how common a search's words are (wordstats.py)

    async def start(self) -> None:
        try:
            conn = await asyncpg.connect(self.url, timeout=self.timeout)
            try:
                applied = await migrate(conn)
            finally:
                await conn.close()
            if applied:
                logger.info("%s: applied migrations %s", self.place, applied)
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.timeout,
                command_timeout=self.timeout,
                init=_init_connection,
            )
        except FAILURES as exc:
            text = translate(exc, self.url, starting=True)
            if text is not None:
                self.telemetry.failed(cause(exc))
            raise exc if text is None else Unavailable(text) from exc
        except ValueError as exc:  # asyncpg's parse of the URL
            raise Unavailable(f"cannot read the PostgreSQL URL in --db: {exc}") from exc
        self.telemetry.connection_pool(self._pool)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except FAILURES:
                pool.terminate()

    def _failed(self, exc: BaseException) -> BaseException:
        text = translate(exc, self.url)
        if text is None:
            return exc
        self.telemetry.failed(cause(exc))
        return Unavailable(text)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise Unavailable(f"the store on {self.place} is closed")
        return self._pool

    async def _read(
        self, sql: str, params: Sequence[Any], org: str | None = None, *, urgent: bool = False
    ) -> list[Any]:
        """One statement's rows, in a turn for `org` (reads.py); `urgent` (key and health checks) skips the
        turns and takes the connection the pool keeps in reserve, so it never waits behind reads."""
        asked = time.monotonic()
        try:
            if urgent:
                return await self._fetch(sql, params, asked)
            async with self._reads.slot(org):
                return await self._fetch(sql, params, asked)
        except FAILURES as exc:
            raise self._failed(exc) from exc

    async def _fetch(self, sql: str, params: Sequence[Any], asked: float) -> list[Any]:
        """One statement's rows, on a connection of the pool; how long it waited since `asked` is told."""
        async with self.pool.acquire() as conn:
            self.telemetry.waited(time.monotonic() - asked)
            with self._sql.read(sql):
                return list(await conn.fetch(sql, *params, timeout=self.timeout))

    def _write_failed(self, exc: BaseException, stage: str) -> BaseException:
        """The error for a write that failed at `stage` ("connecting", "writing", "committing"): a connection
        that broke while its commit was on the way leaves the outcome unknown; before that, the server undid
        the transaction (or never began it)."""
        if stage == "committing" and broken(exc):
            self.telemetry.failed("outcome_unknown")
            return outcome_unknown(self.place, str(exc) or type(exc).__name__)
        return self._failed(exc)

    async def _transaction(
        self, job: Callable[[writes.Connection], Awaitable[T]], log: writes.ChangeLog | None = None
    ) -> T:
        """Run `job` in one transaction, again on a deadlock (each try records its changes anew); once
        committed, announce what `log` recorded. A failure after the commit (releasing the connection) does
        not undo it: the caller gets its result."""
        for attempt in range(RETRIES + 1):
            stage = "connecting"
            if log is not None:
                log.reset()
            try:
                with self._sql.write():
                    asked = time.monotonic()
                    async with self.pool.acquire(timeout=self.timeout) as conn:
                        self.telemetry.waited(time.monotonic() - asked)
                        stage = "writing"
                        async with conn.transaction():
                            result = await job(conn)
                            stage = "committing"
                        stage = "committed"
                break
            except _Rollback as undone:
                return undone.value  # type: ignore[return-value]
            except RETRYABLE as exc:
                if attempt == RETRIES:
                    raise self._failed(exc) from exc
            except FAILURES as exc:
                if stage != "committed":
                    raise self._write_failed(exc, stage) from exc
                logger.warning("%s: a connection failed after its commit (%s); the write stands", self.place, exc)
                break
        if log is not None:
            self._announcer.tell(log.changes)
        return result

    def _log(self) -> writes.ChangeLog:
        return writes.ChangeLog(self._origin)

    async def follow(self, deliver: Deliver, wanted: Callable[[], bool]) -> None:
        await follow_notifications(self.url, self._origin, self.timeout, deliver, wanted)

    # --- messages ---

    async def _append(self, conn: writes.Connection, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found = await conn.fetch("SELECT chatdock_append($1::jsonb, $2)", items, self._origin, timeout=self.timeout)
        return [row[0] for row in found]

    def _stored(self, org: str, outcomes: Sequence[dict[str, Any]]) -> None:
        """Announce to this process the contacts that the committed appends changed."""
        self._announcer.tell(
            [Change(org, found["c"], found["k"], tuple(found["a"])) for found in outcomes if found["s"] == "stored"]
        )

    async def _append_batch(self, batch: list[tuple[str, MessageRecord]]) -> list[AppendedMessage | ChatdockError]:
        """Appends of independent callers, one statement and one commit; in contact order, so two batches
        lock rows in the same order."""
        now_us = _now_us()
        order = sorted(range(len(batch)), key=lambda i: (batch[i][0], batch[i][1].message.contact_id))
        items = [_append_item(batch[i][0], batch[i][1], now_us, False) for i in order]
        for attempt in range(RETRIES + 1):
            stage = "connecting"
            try:
                asked = time.monotonic()
                async with self.pool.acquire(timeout=self.timeout) as conn:
                    began = time.monotonic()
                    self.telemetry.waited(began - asked)
                    stage = "committing"  # one statement: its own transaction, committed as it ends
                    found = await self._append(conn, items)
                    stage = "committed"
                    self.telemetry.committed(len(items), time.monotonic() - began)
                break
            except RETRYABLE as exc:
                if attempt == RETRIES:
                    raise self._failed(exc) from exc
            except FAILURES as exc:
                if stage != "committed":
                    raise self._write_failed(exc, stage) from exc
                logger.warning("%s: a connection failed after its commit (%s); the write stands", self.place, exc)
                break
        outcomes: list[AppendedMessage | ChatdockError] = [Unavailable("not run")] * len(batch)
        for index, result in zip(order, found, strict=True):
            org, record = batch[index]
            outcomes[index] = _outcome(record, result)
            self._stored(org, [result])
        return outcomes

    async def insert_message(self, org: str, record: MessageRecord) -> AppendedMessage:
        with self._sql.write("append"):  # the wait for a batch, its statement and its commit
            outcome = await self._appends.submit((org, record))
        if isinstance(outcome, ChatdockError):
            raise outcome
        return outcome

    async def insert_messages(self, org: str, records: Sequence[MessageRecord]) -> list[AppendedMessage]:
        now_us = _now_us()
        items = [_append_item(org, record, now_us, False) for record in records]

        async def job(conn: writes.Connection) -> list[AppendedMessage]:
            stored.clear()  # a retried transaction records anew
            found = await self._append(conn, items)
            results: list[AppendedMessage] = []
            for record, result in zip(records, found, strict=True):
                outcome = _outcome(record, result)
                if isinstance(outcome, ChatdockError):
                    raise outcome  # all or none: the transaction is rolled back
                results.append(outcome)
            stored.extend(found)
            return results

        stored: list[dict[str, Any]] = []
        results = await self._transaction(job)
        self._stored(org, stored)
        return results

    async def latest_messages(
        self, org: str, contact_id: str, only: MessageFilter, limit: int, max_bytes: int
    ) -> list[Message]:
        sql, params = latest_sql(org, contact_id, only, limit, max_bytes)
        return rows.messages(await self._read(sql, params, org))

    async def message_page(
        self, org: str, contact_id: str, only: MessageFilter, limit: int, after: Position | None, max_bytes: int
    ) -> list[tuple[Message, Position]]:
        sql, params = latest_sql(org, contact_id, only, limit, max_bytes, after)
        found = await self._read(sql, params, org)
        return list(zip(rows.messages(found), [(row[8], row[9]) for row in found], strict=True))

    async def search(
        self, org: str, query: Query, contact_id: str | None, channel: str | None, role: str | None, window: int
    ) -> list[tuple[int, str]]:
        text = tsquery_text(query)

        async def newest(how: str) -> list[tuple[int, str]]:
            sql, params = search_sql(org, text, contact_id, channel, role, window, how)
            return [(seq, content) for seq, content in await self._read(sql, params, org)]

        if contact_id is not None:
            return await newest("newest")
        found = await newest("walk")  # a word common lately: its newest matches are among the newest messages
        if len(found) < window:
            found = await newest("newest" if await self._words.common(query) else "index")
        return found

    async def messages_at(self, org: str, seqs: Sequence[int]) -> list[Message]:
        sql = (
            f"SELECT {MESSAGE_COLUMNS}, c.external_id FROM unnest($2::bigint[]) WITH ORDINALITY AS wanted(seq, n) "
            f"JOIN messages m ON m.seq = wanted.seq JOIN contacts c ON c.id = m.contact_pk "
            f"WHERE m.org_id = {ORG} ORDER BY wanted.n"
        )
        return rows.messages(await self._read(sql, [org, list(seqs)], org))

    async def delete_message(self, org: str, message_id: str) -> Message | None:
        async def job(conn: writes.Connection) -> Message | None:
            row = await conn.fetchrow(
                "WITH gone AS (DELETE FROM messages m WHERE m.id = $1 AND m.org_id = (SELECT id FROM orgs WHERE "
                f"name = $2) RETURNING m.*) SELECT {MESSAGE_COLUMNS}, c.external_id FROM gone m "
                "JOIN contacts c ON c.id = m.contact_pk",
                message_id,
                org,
            )
            if row is None:
                return None
            await log.record(conn, org, row[10])
            return rows.message(row, row[10])

        log = self._log()
        return await self._transaction(job, log)

    # --- chats ---

    async def chat(self, org: str, chat_id: str) -> Chat | None:
        found = await self._read(CHAT_SELECT + f" WHERE ch.id = $2 AND ch.org_id = {ORG}", (org, chat_id), org)
        return rows.chat(found[0]) if found else None

    async def insert_chat(self, org: str, record: ChatRecord) -> Chat:
        async def job(conn: writes.Connection) -> Chat:
            await writes.insert_chat(conn, org, record, log)
            return await writes.chat_by_id(conn, record.id)

        log = self._log()
        return await self._transaction(job, log)

    async def set_chat_status(self, org: str, chat_id: str, status: ChatStatus, now: datetime) -> Chat | None:
        async def job(conn: writes.Connection) -> Chat | None:
            updated = await conn.fetchval(
                f"UPDATE chats SET status = $3, updated_us = $4 WHERE id = $2 AND org_id = {ORG} RETURNING id",
                org,
                chat_id,
                status,
                rows.to_us(now),
            )
            if updated is None:
                return None
            chat = await writes.chat_by_id(conn, chat_id)
            await log.record(conn, org, chat.contact_id)
            return chat

        log = self._log()
        return await self._transaction(job, log)

    async def chats(self, org: str, contact_id: str, limit: int) -> list[Chat]:
        found = await self._read(
            CHAT_SELECT + f" WHERE ch.contact_pk = {CONTACT} ORDER BY ch.created_us DESC, ch.seq DESC LIMIT $3",
            (org, contact_id, limit),
            org,
        )
        return [rows.chat(row) for row in found]

    # --- contacts ---

    async def forget_contact(self, org: str, contact_id: str) -> ForgetResult:
        async def job(conn: writes.Connection) -> ForgetResult:
            own, messages, chats, identifiers = await writes.forget(conn, org, contact_id, log)
            if not identifiers:
                return ForgetResult(contact_id=own, deleted_messages=0, deleted_chats=0)
            return ForgetResult(
                contact_id=own, deleted_messages=messages, deleted_chats=chats, deleted_identifiers=identifiers
            )

        log = self._log()
        return await self._transaction(job, log)

    async def resolve(self, org: str, identifier: str) -> str | None:
        found = await self._read(f"SELECT external_id FROM contacts WHERE id = {CONTACT}", (org, identifier), org)
        return str(found[0][0]) if found else None

    async def contact(self, org: str, contact_id: str) -> ContactInfo | None:
        async def job(conn: writes.Connection) -> ContactInfo | None:
            contact_key = await writes.existing_contact_pk(conn, org, contact_id)
            return None if contact_key is None else await writes.contact_info(conn, contact_key)

        return await self._transaction(job)  # one transaction: one consistent view of the contact

    async def link(self, org: str, contact_id: str, identifier: str) -> LinkResult:
        log = self._log()
        return await self._transaction(lambda conn: writes.link(conn, org, contact_id, identifier, _now_us(), log), log)

    async def unlink(self, org: str, identifier: str) -> ContactInfo | None:
        log = self._log()
        return await self._transaction(lambda conn: writes.unlink(conn, org, identifier, log), log)

    async def recent_contacts(self, org: str, limit: int) -> list[str]:
        found = await self._read(
            f"SELECT external_id FROM contacts WHERE org_id = {ORG} ORDER BY last_active_us DESC, id DESC LIMIT $2",
            (org, limit),
            org,
        )
        return [row[0] for row in found]

    # --- history ---

    def _scope(self, org: str | None, contact_id: str | None, contact_column: str) -> tuple[str, list[Any]]:
        where, params = "", []
        if org is not None:
            params.append(org)
            where += f" AND o.name = ${len(params)}"
        if contact_id is not None:
            params.append(contact_id)
            where += f" AND {contact_column} = ${len(params)}"
        return where, params

    async def _keyset(
        self, select: str, key: str, org: str | None, contact_id: str | None, contact_column: str, batch: int
    ) -> AsyncIterator[Any]:
        where, params = self._scope(org, contact_id, contact_column)
        last = 0
        while True:
            found = await self._read(
                f"{select} WHERE {key} > ${len(params) + 1}{where} ORDER BY {key} LIMIT ${len(params) + 2}",
                [*params, last, batch],
            )
            for row in found:
                yield row
            if len(found) < batch:
                return
            last = found[-1][0]

    async def export_messages(
        self, org: str | None, contact_id: str | None, batch: int, skipped: list[str] | None = None
    ) -> AsyncIterator[tuple[str, Message]]:
        select = (
            f"SELECT m.seq, {MESSAGE_COLUMNS}, c.external_id, o.name FROM messages m "
            "JOIN contacts c ON c.id = m.contact_pk JOIN orgs o ON o.id = m.org_id"
        )
        async for row in self._keyset(select, "m.seq", org, contact_id, "c.external_id", batch):
            yield row[12], rows.message(row[1:], row[11])

    async def export_chats(
        self, org: str | None, contact_id: str | None, batch: int, skipped: list[str] | None = None
    ) -> AsyncIterator[tuple[str, Chat]]:
        select = f"SELECT ch.seq, o.name, {CHAT_COLUMNS} {CHAT_FROM} JOIN orgs o ON o.id = ch.org_id"
        async for row in self._keyset(select, "ch.seq", org, contact_id, "co.external_id", batch):
            yield row[1], rows.chat(row[2:])

    async def count_records(self, org: str | None, contact_id: str | None) -> int:
        where, params = self._scope(org, contact_id, "c.external_id")
        found = await self._read(
            f"SELECT (SELECT count(*) FROM chats t JOIN orgs o ON o.id = t.org_id JOIN contacts c "
            f"ON c.id = t.contact_pk WHERE true{where}) + (SELECT count(*) FROM messages t JOIN orgs o "
            f"ON o.id = t.org_id JOIN contacts c ON c.id = t.contact_pk WHERE true{where}) + (SELECT count(*) "
            f"FROM identifiers i JOIN contacts c ON c.id = i.contact_pk JOIN orgs o ON o.id = i.org_id "
            f"WHERE i.identifier <> c.external_id{where})",
            params,
        )
        return int(found[0][0])

    async def export_aliases(self, org: str | None, contact_id: str | None) -> AsyncIterator[tuple[str, Alias]]:
        where, params = self._scope(org, contact_id, "c.external_id")
        found = await self._read(
            "SELECT o.name, c.external_id, i.identifier, i.created_us FROM identifiers i "
            "JOIN contacts c ON c.id = i.contact_pk JOIN orgs o ON o.id = i.org_id "
            f"WHERE i.identifier <> c.external_id{where} ORDER BY i.created_us, i.identifier",
            params,
        )
        for org_name, owner, identifier, created_us in found:
            yield org_name, Alias(contact_id=owner, identifier=identifier, created_at=rows.from_us(created_us))

    async def import_history(
        self, org: str, records: Sequence[ChatRecord | AliasRecord | MessageRecord | ChatdockError], keep_going: bool
    ) -> list[Imported | ChatdockError]:
        async def job(conn: writes.Connection) -> list[Imported | ChatdockError]:
            now_us = _now_us()
            outcomes: list[Imported | ChatdockError] = []
            for record in records:
                try:
                    if isinstance(record, ChatdockError):
                        raise record
                    if isinstance(record, MessageRecord):  # nothing is written for an outcome but "stored"
                        [found] = await self._append(conn, [_append_item(org, record, now_us, True)])
                        outcome = _outcome(record, found)
                        if isinstance(outcome, ChatdockError):
                            raise outcome
                        if found["s"] == "stored":
                            stored.append(found)
                        outcomes.append("existing" if outcome.deduplicated else "stored")
                        continue
                    async with conn.transaction():  # a savepoint: a failed record leaves nothing
                        if isinstance(record, ChatRecord):
                            again = not await writes.insert_chat(conn, org, record, log)
                        else:
                            again = not await writes.import_alias(conn, org, record, log)
                    outcomes.append("existing" if again else "stored")
                except ChatdockError as exc:
                    outcomes.append(exc)
                    if not keep_going:
                        raise _Rollback(outcomes) from None
            return outcomes

        log = self._log()
        stored: list[dict[str, Any]] = []
        outcomes = await self._transaction(job, log)
        if not any(isinstance(outcome, ChatdockError) for outcome in outcomes) or keep_going:
            self._stored(org, stored)
        return outcomes

    async def message_orgs(self, message_ids: Sequence[str]) -> dict[str, str]:
        found = await self._read(
            "SELECT m.id, o.name FROM messages m JOIN orgs o ON o.id = m.org_id WHERE m.id = ANY($1::text[])",
            [list(message_ids)],
        )
        return {row[0]: row[1] for row in found}

    async def chat_owners(self, chat_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        found = await self._read(
            "SELECT ch.id, o.name, co.external_id FROM chats ch JOIN orgs o ON o.id = ch.org_id "
            "JOIN contacts co ON co.id = ch.contact_pk WHERE ch.id = ANY($1::text[])",
            [list(chat_ids)],
        )
        return {row[0]: (row[1], row[2]) for row in found}

    # --- API keys ---

    async def _keys(self, conn: writes.Connection, where: str, *params: Any) -> list[ApiKeyInfo]:
        found = await conn.fetch(f"{KEY_SELECT} WHERE {where} ORDER BY k.id", *params)
        return [rows.key_info(row) for row in found]

    async def insert_api_key(self, org: str, prefix: str, name: str | None, key_hash: str) -> ApiKeyInfo:
        async def job(conn: writes.Connection) -> ApiKeyInfo:
            now_us = _now_us()
            org_key = await writes.org_pk(conn, org, now_us)
            try:
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO api_keys (prefix, name, org_id, hash, created_us) VALUES ($1, $2, $3, $4, $5)",
                        prefix,
                        name,
                        org_key,
                        key_hash,
                        now_us,
                    )
            except asyncpg.UniqueViolationError:
                raise key_name_taken(name) from None
            return (await self._keys(conn, "k.prefix = $1", prefix))[0]

        return await self._transaction(job)

    async def api_keys(self) -> list[ApiKeyInfo]:
        return await self._transaction(lambda conn: self._keys(conn, "true"))

    async def api_key(self, prefix: str) -> StoredKey | None:
        found = await self._read(
            "SELECT k.hash, o.name, k.revoked_us, k.last_used_us FROM api_keys k JOIN orgs o ON o.id = k.org_id "
            "WHERE k.prefix = $1",
            (prefix,),
            urgent=True,
        )
        if not found:
            return None
        key_hash, org, revoked_us, last_used_us = found[0]
        return StoredKey(key_hash, org, revoked_us is not None, rows.optional_from_us(last_used_us))

    async def revoke_api_key(self, prefix_or_name: str) -> ApiKeyInfo | None:
        async def job(conn: writes.Connection) -> ApiKeyInfo | None:
            live = await self._keys(conn, "(k.prefix = $1 OR k.name = $1) AND k.revoked_us IS NULL", prefix_or_name)
            if not live:
                return None
            await conn.execute("UPDATE api_keys SET revoked_us = $1 WHERE prefix = $2", _now_us(), live[0].prefix)
            return (await self._keys(conn, "k.prefix = $1", live[0].prefix))[0]

        return await self._transaction(job)

    async def touch_api_key(self, prefix: str, now: datetime) -> None:
        async def job(conn: writes.Connection) -> None:
            await conn.execute("UPDATE api_keys SET last_used_us = $1 WHERE prefix = $2", rows.to_us(now), prefix)

        await self._transaction(job)

    async def ping(self) -> None:
        await self._read("SELECT count(*) FROM schema_migrations", (), urgent=True)

    async def health(self) -> list[str]:
        try:
            await self.ping()
        except Unavailable as exc:
            return [exc.message]
        return []
