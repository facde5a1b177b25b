"""`SQLBackend`: the `Backend` methods that are the same on both engines, and the one write lifecycle.

An engine subclasses it and gives: its `Dialect`, `_read` (one statement's rows), `_transact` (run a piece of
logic in one transaction on its connection, again after a busy lock or a deadlock, translating the
database's failures), `_log` (its change log) and what is its own (appends, search, exports, health).

The write lifecycle, for every write of both engines: each try of the transaction records its changes anew
(a retried one forgets what the failed try recorded); a write undone on purpose (`Undo`) clears what it
recorded; once committed, this process is told the changes the write made (`Backend.announce_to`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

from .. import rows
from .. import validation as check
from ..backend import Imported, MessageFilter, StoredKey
from ..changes import Announcer
from ..cursor import Position
from ..errors import ChatdockError, OutcomeUnknown, provider_id_taken
from ..models import (
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
from . import writes
from .dialect import Dialect
from .exports import Exports
from .ops import Ops, Undo
from .ops import rows as ops_rows
from .queries import CONTACT, KEY_SELECT, ORG, chat_select, latest_sql
from .walk import Read
from .writes import ChangeLog, savepoint

T = TypeVar("T")

ID_CHUNK = 500  # ids looked up in one statement


async def settle(work: Coroutine[Any, Any, None]) -> None:
    """`work` (a connection given back, a transaction ended) run to its end even when the caller is cancelled
    meanwhile: the caller's cancellation reaches it at once, while the work goes on by itself."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())  # its failure is not left unread
    await asyncio.shield(task)


def now_us() -> int:
    return rows.to_us(check.utc_now())


CONTACT_ID = f"SELECT external_id FROM contacts WHERE id = {CONTACT}"  # the contact_id an identifier names


def _same_message(org: str, record: MessageRecord, stored: Message) -> Ops[bool]:
    """Whether an imported line is the message stored under its channel and provider id: the same text, for the
    same contact (the line may name it by any of its identifiers). Two contacts' "ok" numbered alike by an old
    gateway are two messages."""
    if stored.content != record.message.content:
        return False
    found = yield ops_rows(CONTACT_ID, org, record.message.contact_id)
    return bool(found) and found[0][0] == stored.contact_id


class SQLBackend:
    dialect: Dialect
    _announcer: Announcer
    _origin: str  # marks this process's changes in the feed

    # --- what each engine gives ---

    def _log(self) -> ChangeLog:
        raise NotImplementedError

    async def _read(
        self, sql: str, params: Sequence[Any], org: str | None = None, *, urgent: bool = False
    ) -> list[Any]:
        """One statement's rows; `org` is whom the read is for, `urgent` a read that must not queue (key and
        health checks)."""
        raise NotImplementedError

    async def _transact(self, attempt: Callable[[], Ops[T]]) -> T:
        """Run `attempt()` in one transaction, calling it again for each retry; an `Undo` rolls the
        transaction back and returns its value."""
        raise NotImplementedError

    def _import_message(self, org: str, record: MessageRecord, now: int, log: ChangeLog) -> Ops[AppendedMessage]:
        """Store one imported message as it was, in the import's transaction: it, or the copy already there."""
        raise NotImplementedError

    # --- the write lifecycle ---

    async def _write(
        self,
        make: Callable[[], Ops[T]],
        log: ChangeLog | None = None,
        transact: Callable[[Callable[[], Ops[T]]], Awaitable[T]] | None = None,
    ) -> T:
        """Run the write `make()` builds (again for each retry, from a clean log) through `transact` (by default
        `_transact`; an engine's own way, such as PostgreSQL's batch of appends); announce what it recorded once
        committed. A write that undoes itself on purpose (`Undo`) after recording changes clears its log first."""

        def attempt() -> Ops[T]:
            if log is not None:
                log.reset()
            return make()

        try:
            result = await (transact or self._transact)(attempt)
        except OutcomeUnknown:
            # it may have been committed: this process's listeners are told (the other processes hear it from
            # the feed if so, while this one skips its own there), and read again: a change that did not happen
            # costs them a read, one that did is not missed
            if log is not None:
                self._announcer.tell(log.changes)
            raise
        if log is not None:
            self._announcer.tell(log.changes)
        return result

    # --- messages ---

    async def latest_messages(
        self, org: str, contact_id: str, only: MessageFilter, limit: int, max_bytes: int
    ) -> tuple[list[Message], int | None]:
        found = await self._newest(org, contact_id, only, limit, None, max_bytes)
        return rows.messages(found), found[0][11] if found else None

    async def message_page(
        self, org: str, contact_id: str, only: MessageFilter, limit: int, after: Position | None, max_bytes: int
    ) -> list[tuple[Message, Position]]:
        found = await self._newest(org, contact_id, only, limit, after, max_bytes)
        return list(zip(rows.messages(found), [(row[8], row[9]) for row in found], strict=True))

    async def _newest(
        self, org: str, contact_id: str, only: MessageFilter, limit: int, after: Position | None, max_bytes: int
    ) -> list[Any]:
        """The rows of `latest_sql`, cut at `max_bytes` by the statement (SQLite may cut them as it reads)."""
        sql, params = latest_sql(self.dialect, org, contact_id, only, limit, max_bytes, after)
        return await self._read(sql, params, org)

    async def delete_message(self, org: str, message_id: str) -> Message | None:
        log = self._log()
        return await self._write(lambda: writes.delete_message(org, message_id, log), log)

    # --- chats ---

    async def chat(self, org: str, chat_id: str) -> Chat | None:
        found = await self._read(
            chat_select(self.dialect) + f" WHERE ch.id = ? AND ch.org_id = {ORG}", (chat_id, org), org
        )
        return rows.chat(found[0]) if found else None

    async def retired_channel(self, org: str, channel_id: str) -> str | None:
        found = await self._read(
            "SELECT r.channel_id FROM retired_channels r JOIN channels ch ON ch.id = r.channel_id "
            f"JOIN contacts c ON c.id = ch.contact_pk WHERE r.id = ? AND c.org_id = {ORG}",
            (channel_id, org),
            org,
        )
        return str(found[0][0]) if found else None

    async def insert_chat(self, org: str, record: ChatRecord) -> Chat:
        log = self._log()
        return await self._write(lambda: writes.new_chat(self.dialect, org, record, log), log)

    async def set_chat_status(self, org: str, chat_id: str, status: ChatStatus, now: datetime) -> Chat | None:
        log = self._log()
        update = lambda: writes.set_chat_status(self.dialect, org, chat_id, status, rows.to_us(now), log)  # noqa: E731
        return await self._write(update, log)

    async def chats(self, org: str, contact_id: str, limit: int) -> list[Chat]:
        order = f"ch.created_us DESC, ch.{self.dialect.chat_order} DESC"
        found = await self._read(
            chat_select(self.dialect) + f" WHERE ch.contact_pk = {CONTACT} ORDER BY {order} LIMIT ?",
            (org, contact_id, limit),
            org,
        )
        return [rows.chat(row) for row in found]

    # --- contacts ---

    async def forget_contact(self, org: str, contact_id: str) -> ForgetResult:
        log = self._log()
        return await self._write(lambda: writes.forget(self.dialect, org, contact_id, log), log)

    async def resolve(self, org: str, identifier: str) -> str | None:
        found = await self._read(CONTACT_ID, (org, identifier), org)
        return str(found[0][0]) if found else None

    async def contact(self, org: str, contact_id: str) -> ContactInfo | None:
        # read as reads are, never waiting for the writer (a file others lock, a read-only one): writes.contact
        # reads until what it read holds together
        return await self._read_ops(writes.contact(org, contact_id), org)

    async def _read_ops(self, ops: Ops[T], org: str) -> T:
        """What the statements `ops` yields read (sql/ops.py), each a read of its own (`_read`), so each sees
        what was committed before it; `ops` check that what they read holds together."""
        result: Any = None
        try:
            while True:
                sql, params, want = ops.send(result)
                assert want != "count", "a read changes nothing"
                found = await self._read(sql, params, org)
                first = found[0] if found else None
                result = found if want == "all" else first if want == "one" or first is None else first[0]
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def link(self, org: str, contact_id: str, identifier: str, key: str | None = None) -> tuple[LinkResult, bool]:
        log = self._log()
        return await self._write(
            lambda: writes.link(self.dialect, org, contact_id, identifier, now_us(), log, key), log
        )

    async def unlink(self, org: str, identifier: str, of: str | None = None) -> ContactInfo | None:
        log = self._log()
        return await self._write(lambda: writes.unlink(self.dialect, org, identifier, log, of), log)

    async def recent_contacts(self, org: str, limit: int, after: Position | None) -> list[tuple[str, Position]]:
        later = "" if after is None else " AND (last_active_us, id) < (?, ?)"  # a row value: the index bounds it
        found = await self._read(
            f"SELECT external_id, last_active_us, id FROM contacts WHERE org_id = {ORG}{later} "
            "ORDER BY last_active_us DESC, id DESC LIMIT ?",
            (org, *(after or ()), limit),
            org,
        )
        return [(contact_id, (last_active_us, key)) for contact_id, last_active_us, key in found]

    # --- history ---

    def _damaged(self) -> bool:
        """Whether the database is known to be damaged: an export then reads around what it cannot read."""
        return False

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Exports]:
        async with self._consistent_read() as read:
            yield Exports(self.dialect, read, self._damaged)

    def _consistent_read(self) -> AbstractAsyncContextManager[Read]:
        """Reads on one connection, in one read transaction (each engine's own)."""
        raise NotImplementedError

    async def import_history(
        self, org: str, records: Sequence[ChatRecord | AliasRecord | MessageRecord | ChatdockError], keep_going: bool
    ) -> list[Imported | ChatdockError]:
        log = self._log()
        d = self.dialect

        def job() -> Ops[list[Imported | ChatdockError]]:
            now = now_us()
            outcomes: list[Imported | ChatdockError] = []
            for record in records:
                try:
                    if isinstance(record, ChatdockError):
                        raise record
                    if isinstance(record, ChatRecord):
                        again = not (yield from savepoint(writes.insert_chat(d, org, record, log)))
                    elif isinstance(record, AliasRecord):
                        again = not (yield from savepoint(writes.import_alias(d, org, record, log)))
                    else:
                        stored = yield from self._import_message(org, record, now, log)
                        again = stored.deduplicated
                        if (
                            again
                            and stored.id != record.message.id
                            and not (yield from _same_message(org, record, stored))
                        ):
                            # another message under its channel and provider id: the line is not that copy
                            raise provider_id_taken(record, stored)
                    outcomes.append("existing" if again else "stored")
                except ChatdockError as exc:
                    outcomes.append(exc)
                    if not keep_going:
                        log.reset()  # nothing of the batch stays: nothing to announce
                        raise Undo(outcomes) from None
            return outcomes

        return await self._write(job, log)

    async def _by_ids(self, select: str, ids: Sequence[str]) -> list[Any]:
        found: list[Any] = []
        for start in range(0, len(ids), ID_CHUNK):
            chunk = list(ids[start : start + ID_CHUNK])
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

    async def secret(self, name: str) -> str | None:
        found = await self._read("SELECT value FROM secrets WHERE name = ?", (name,))
        return str(found[0][0]) if found else None

    # --- API keys ---

    async def insert_api_key(
        self, org: str, prefix: str, name: str | None, key_hash: str, read_only: bool = False
    ) -> ApiKeyInfo:
        return await self._write(lambda: writes.insert_api_key(org, prefix, name, key_hash, read_only, now_us()))

    async def api_keys(self) -> list[ApiKeyInfo]:  # a read: `keys list` works on a read-only file too
        return [rows.key_info(row) for row in await self._read(f"{KEY_SELECT} ORDER BY k.id", ())]

    async def api_key(self, prefix: str) -> StoredKey | None:
        found = await self._read(
            "SELECT k.hash, o.name, k.revoked_us, k.last_used_us, k.read_only "
            "FROM api_keys k JOIN orgs o ON o.id = k.org_id "
            "WHERE k.prefix = ?",
            (prefix,),
            urgent=True,
        )
        if not found:
            return None
        key_hash, org, revoked_us, last_used_us, read_only = found[0]
        return StoredKey(key_hash, org, revoked_us is not None, rows.optional_from_us(last_used_us), bool(read_only))

    async def revoke_api_key(self, prefix_or_name: str, org: str | None = None) -> ApiKeyInfo | None:
        return await self._write(lambda: writes.revoke_api_key(prefix_or_name, org, now_us()))

    async def touch_api_key(self, prefix: str, now: datetime) -> None:
        await self._write(lambda: writes.touch_api_key(prefix, rows.to_us(now)))

    async def ping(self) -> None:
        await self._read("SELECT count(*) FROM schema_migrations", (), urgent=True)
