"""The SQLite store: one writer thread with group commit, a small pool of aiosqlite readers.

Reads run on their own WAL connections, one thread hop per operation
(`execute_fetchall`), each a single statement and so one consistent
snapshot. Writes go through `Writer` (see `writer.py`).

Organization scoping lives here, in the SQL fragments `_ORG` and `_CONTACT`
and in the writer's `_org_pk`/`_contact_pk`: every query names the
organization by one of them, and nothing else reaches a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite

from . import validation as check
from .base import Imported
from .errors import ChatdockError, Conflict, InvalidInput, NotFound
from .ids import uuid7
from .migrations import migrate
from .models import (
    ApiKeyInfo,
    AppendedMessage,
    ChannelRef,
    Chat,
    Context,
    ForgetResult,
    Message,
    MessagePage,
    NewApiKey,
    NewChat,
    NewMessage,
    Part,
    channel_kind,
)
from .transcript import fit_transcript
from .writer import Undo, Writer

logger = logging.getLogger("chatdock.storage")

T = TypeVar("T")

Durability = Literal["normal", "full"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BUSY_TIMEOUT_MS = 10_000
KEY_TOUCH_INTERVAL_US = 60_000_000

_ORG = "(SELECT id FROM orgs WHERE name = ?)"
_CONTACT = f"(SELECT id FROM contacts WHERE org_id = {_ORG} AND external_id = ?)"

_MESSAGE_COLUMNS = "m.id, m.agent_id, m.chat_id, m.channel, m.role, m.content, m.parts, m.metadata, m.created_us, m.seq"

_CHAT_COLUMNS = """ch.id, co.external_id, ch.agent_id, ch.status, ch.created_us, ch.updated_us,
    (SELECT json_group_array(json_array(id, name, kind)) FROM (
        SELECT c.id AS id, c.name AS name, c.kind AS kind
        FROM chat_channels cc JOIN channels c ON c.id = cc.channel_id
        WHERE cc.chat_id = ch.id ORDER BY cc.attached_us, c.name))"""
_CHAT_FROM = "FROM chats ch JOIN contacts co ON co.id = ch.contact_pk"
_CHAT_SELECT = f"SELECT {_CHAT_COLUMNS} {_CHAT_FROM}"


def to_us(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _now_us() -> int:
    return to_us(check.utc_now())


def _message(row: Sequence[Any], contact_id: str) -> Message:
    message_id, agent_id, chat_id, channel, role, content, parts, metadata, created_us = row[:9]
    return Message(
        id=message_id,
        contact_id=contact_id,
        agent_id=agent_id,
        chat_id=chat_id,
        channel=channel,
        role=role,
        content=content,
        parts=json.loads(parts) if parts is not None else [Part(text=content)],
        metadata=json.loads(metadata) if metadata is not None else {},
        created_at=from_us(created_us),
    )


def _chat(row: Sequence[Any]) -> Chat:
    chat_id, contact_id, agent_id, status, created_us, updated_us, channels = row
    return Chat(
        id=chat_id,
        contact_id=contact_id,
        agent_id=agent_id,
        status=status,
        channels=[ChannelRef(id=c[0], name=c[1], kind=c[2]) for c in json.loads(channels)],
        created_at=from_us(created_us),
        updated_at=from_us(updated_us),
    )


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _key_info(row: Sequence[Any]) -> ApiKeyInfo:
    prefix, name, org, created_us, last_used_us, revoked_us = row
    return ApiKeyInfo(
        prefix=prefix,
        name=name,
        org=org,
        created_at=from_us(created_us),
        last_used_at=None if last_used_us is None else from_us(last_used_us),
        revoked_at=None if revoked_us is None else from_us(revoked_us),
    )


# --- writer-side helpers: each runs on the writer thread, inside the caller's savepoint ---


def _org_pk(conn: sqlite3.Connection, org: str) -> int:
    row = conn.execute("SELECT id FROM orgs WHERE name = ?", (org,)).fetchone()
    if row is not None:
        return int(row[0])
    cursor = conn.execute("INSERT INTO orgs (name, created_us) VALUES (?, ?)", (org, _now_us()))
    return int(cursor.lastrowid or 0)


def _existing_contact_pk(conn: sqlite3.Connection, org: str, contact_id: str) -> int | None:
    row = conn.execute(f"SELECT {_CONTACT}", (org, contact_id)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _contact_pk(conn: sqlite3.Connection, org_pk: int, contact_id: str, now_us: int) -> int:
    row = conn.execute("SELECT id FROM contacts WHERE org_id = ? AND external_id = ?", (org_pk, contact_id)).fetchone()
    if row is not None:
        return int(row[0])
    cursor = conn.execute(
        "INSERT INTO contacts (org_id, external_id, created_us, last_active_us) VALUES (?, ?, ?, ?)",
        (org_pk, contact_id, now_us, now_us),
    )
    return int(cursor.lastrowid or 0)


def _channel_id(conn: sqlite3.Connection, contact_pk: int, name: str, wanted: str | None = None) -> str:
    """The contact's channel of that name, created on first use (with the `wanted` id when it is still free)."""
    row = conn.execute("SELECT id FROM channels WHERE contact_pk = ? AND name = ?", (contact_pk, name)).fetchone()
    if row is not None:
        return str(row[0])
    free = wanted is not None and conn.execute("SELECT 1 FROM channels WHERE id = ?", (wanted,)).fetchone() is None
    channel_id = wanted if free and wanted is not None else uuid7()
    conn.execute(
        "INSERT INTO channels (id, contact_pk, name, kind) VALUES (?, ?, ?, ?)",
        (channel_id, contact_pk, name, channel_kind(name)),
    )
    return channel_id


def _attach(conn: sqlite3.Connection, chat_id: str, channel_id: str, now_us: int) -> None:
    conn.execute(
        "INSERT INTO chat_channels (chat_id, channel_id, attached_us) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (chat_id, channel_id, now_us),
    )


def _chat_by_id(conn: sqlite3.Connection, chat_id: str) -> Chat:
    row = conn.execute(_CHAT_SELECT + " WHERE ch.id = ?", (chat_id,)).fetchone()
    assert row is not None
    return _chat(row)


def _chat_not_found(chat_id: str, contact_id: str) -> NotFound:
    return NotFound(f"chat {chat_id} not found for contact {contact_id}; list the contact's chats with list_chats")


def _chat_of_contact(conn: sqlite3.Connection, org_pk: int, chat_id: str, contact_pk: int, contact_id: str) -> None:
    row = conn.execute("SELECT contact_pk FROM chats WHERE id = ? AND org_id = ?", (chat_id, org_pk)).fetchone()
    if row is None or row[0] != contact_pk:
        raise _chat_not_found(chat_id, contact_id)


def _find_message(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> Message | None:
    row = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS}, c.external_id FROM messages m JOIN contacts c ON c.id = m.contact_pk "
        f"WHERE {where}",
        params,
    ).fetchone()
    return None if row is None else _message(row, row[10])


class _Prepared:
    """A message checked in full before the writer sees it."""

    __slots__ = (
        "agent_id",
        "channel",
        "chat_id",
        "contact_id",
        "content",
        "created_us",
        "id",
        "message",
        "metadata_json",
        "parts_json",
        "provider_message_id",
        "role",
    )

    def __init__(self, new: NewMessage, now: datetime) -> None:
        self.contact_id = check.contact_id(new.contact_id)
        self.channel = check.channel(new.channel)
        self.role = check.role(new.role)
        self.agent_id = check.optional_identifier(new.agent_id, "agent_id")
        self.chat_id = check.optional_uuid(new.chat_id, "chat_id")
        if new.parts is not None:
            if new.content is not None:
                raise InvalidInput("give either content or parts, not both")
            parts, self.content = check.parts(new.parts)
        elif new.content is not None:
            self.content = check.content(new.content)
            parts = [Part(text=self.content)]
        else:
            raise InvalidInput("content must not be empty; send the message's text")
        metadata, self.provider_message_id = check.metadata(new.metadata)
        created = check.created_at(new.created_at, now)
        self.created_us = to_us(created)
        self.id = uuid7() if new.id is None else check.uuid_text(new.id, "id")
        plain = len(parts) == 1 and parts[0].start_timestamp is None and parts[0].end_timestamp is None
        self.parts_json = None if plain else json.dumps([p.model_dump(exclude_none=True) for p in parts])
        self.metadata_json = json.dumps(metadata, ensure_ascii=False, separators=(",", ":")) if metadata else None
        self.message = Message(
            id=self.id,
            contact_id=self.contact_id,
            agent_id=self.agent_id,
            chat_id=self.chat_id,
            channel=self.channel,
            role=self.role,
            content=self.content,
            parts=parts,
            metadata=metadata,
            created_at=created,
        )


def _insert(conn: sqlite3.Connection, org: str, p: _Prepared, importing: bool = False) -> AppendedMessage:
    """Store one checked message; an already stored one (same id, or channel and provider id) comes back instead.

    `importing` keeps history as it was: the chat's updated_at is not moved to now.
    """
    now_us = p.created_us if importing else _now_us()
    org_pk = _org_pk(conn, org)
    contact_pk = _contact_pk(conn, org_pk, p.contact_id, p.created_us)
    channel_id = _channel_id(conn, contact_pk, p.channel)
    if p.chat_id is not None:
        _chat_of_contact(conn, org_pk, p.chat_id, contact_pk, p.contact_id)
        _attach(conn, p.chat_id, channel_id, now_us)
        if not importing:
            conn.execute("UPDATE chats SET updated_us = ? WHERE id = ?", (now_us, p.chat_id))
    cursor = conn.execute(
        "INSERT INTO messages (id, org_id, contact_pk, agent_id, chat_id, channel, role, content, parts, metadata,"
        " provider_message_id, created_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (
            p.id,
            org_pk,
            contact_pk,
            p.agent_id,
            p.chat_id,
            p.channel,
            p.role,
            p.content,
            p.parts_json,
            p.metadata_json,
            p.provider_message_id,
            p.created_us,
        ),
    )
    if cursor.rowcount == 0:
        existing = None
        if p.provider_message_id is not None:
            existing = _find_message(
                conn,
                "m.org_id = ? AND m.channel = ? AND m.provider_message_id = ?",
                (org_pk, p.channel, p.provider_message_id),
            )
        if existing is None:
            existing = _find_message(conn, "m.org_id = ? AND m.id = ?", (org_pk, p.id))
        if existing is None:
            raise Conflict(f"message id {p.id} is already used in another organization; leave id out to get a new one")
        raise Undo(AppendedMessage(**existing.model_dump(), deduplicated=True))
    conn.execute("UPDATE contacts SET last_active_us = max(last_active_us, ?) WHERE id = ?", (p.created_us, contact_pk))
    return AppendedMessage(**p.message.model_dump(), deduplicated=False)


def _one(conn: sqlite3.Connection, write: Callable[..., T], *args: Any) -> T:
    """One record of a batch in its own savepoint: an `Undo` rolls it back and returns its value, an error
    rolls it back and propagates, so the other records of the batch stay."""
    conn.execute("SAVEPOINT one")
    try:
        return write(conn, *args)
    except Undo as undo:
        conn.execute("ROLLBACK TO one")
        return undo.value  # type: ignore[return-value]
    except ChatdockError:
        conn.execute("ROLLBACK TO one")
        raise
    finally:
        conn.execute("RELEASE one")


class _PreparedChat:
    """An imported chat checked in full before the writer sees it."""

    __slots__ = ("agent_id", "channels", "contact_id", "created_us", "id", "status", "updated_us")

    def __init__(self, new: NewChat) -> None:
        self.id = check.uuid_text(new.id, "id")
        self.contact_id = check.contact_id(new.contact_id)
        self.agent_id = check.optional_identifier(new.agent_id, "agent_id")
        self.status = check.chat_status(new.status)
        if not new.channels:
            raise InvalidInput("channels must name at least one channel: a chat is opened on a channel")
        if len(new.channels) > 64:
            raise InvalidInput(f"a chat may have at most 64 channels, got {len(new.channels)}")
        self.channels: list[tuple[str | None, str]] = []
        for ref in new.channels:
            name = check.channel(ref.name, "channels[].name")
            if ref.kind is not None and ref.kind != channel_kind(name):
                raise InvalidInput(f"channel {name!r} is a {channel_kind(name)} channel; kind {ref.kind!r} is wrong")
            self.channels.append((check.optional_uuid(ref.id, "channels[].id"), name))
        if len({name for _, name in self.channels}) != len(self.channels):
            raise InvalidInput("channels must not name the same channel twice")
        now = check.utc_now()
        self.created_us = to_us(check.created_at(new.created_at, now))
        updated = new.updated_at if new.updated_at is not None else new.created_at
        self.updated_us = to_us(check.created_at(updated, now, "updated_at"))
        if self.updated_us < self.created_us:
            raise InvalidInput("updated_at must not be before created_at")


def _insert_chat(conn: sqlite3.Connection, org: str, c: _PreparedChat) -> bool:
    """Store one imported chat with its channels; False when it is already there (same id, same contact)."""
    org_pk = _org_pk(conn, org)
    contact_pk = _contact_pk(conn, org_pk, c.contact_id, c.created_us)
    row = conn.execute("SELECT org_id, contact_pk FROM chats WHERE id = ?", (c.id,)).fetchone()
    if row is not None:
        if tuple(row) != (org_pk, contact_pk):
            raise Conflict(f"chat id {c.id} is already used by another contact or organization")
        return False
    conn.execute(
        "INSERT INTO chats (id, org_id, contact_pk, agent_id, status, created_us, updated_us)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (c.id, org_pk, contact_pk, c.agent_id, c.status, c.created_us, c.updated_us),
    )
    for offset, (wanted, name) in enumerate(c.channels):
        # attached one microsecond apart, so the channels keep their listed order
        _attach(conn, c.id, _channel_id(conn, contact_pk, name, wanted), c.created_us + offset)
    return True


def _memory_dir() -> str:
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="chatdock-", dir=base)


class SQLiteStore:
    """The `Store` on one SQLite file. Use `async with SQLiteStore.open(path) as store:`."""

    def __init__(self, path: str, durability: Durability = "normal", readers: int = 2) -> None:
        self._throwaway: str | None = None
        if path == ":memory:":
            # Separate connections cannot share a private :memory: database, so a
            # throwaway store lives in a fresh folder in RAM (/dev/shm) when there is
            # one, removed on close: the same code path as a file, nothing kept.
            self._throwaway = _memory_dir()
            path = os.path.join(self._throwaway, "chatdock.db")
        else:
            parent = Path(path).expanduser().resolve().parent
            parent.mkdir(parents=True, exist_ok=True)
            path = str(Path(path).expanduser())
        if durability not in ("normal", "full"):
            raise InvalidInput(f"durability must be 'normal' or 'full', got {durability!r}")
        self.path = path
        self.durability: Durability = durability
        self._reader_count = max(1, readers)
        self._writer = Writer(self._connect_writer)
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, path: str, durability: Durability = "normal", readers: int = 2) -> AsyncIterator[SQLiteStore]:
        store = cls(path, durability, readers)
        await store.start()
        try:
            yield store
        finally:
            await store.close()

    def _pragmas(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA synchronous = {self.durability.upper()}")

    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        self._pragmas(conn)
        for _ in range(100):
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:  # another process is creating the file
                if "locked" not in str(exc):
                    raise
        migrate(conn)
        return conn

    async def start(self) -> None:
        await asyncio.to_thread(self._writer.start)
        for _ in range(self._reader_count):
            reader = await aiosqlite.connect(self.path, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await reader.execute("PRAGMA query_only = ON")
            self._all_readers.append(reader)
            self._readers.put_nowait(reader)

    async def close(self) -> None:
        for reader in self._all_readers:
            await reader.close()
        self._all_readers.clear()
        await asyncio.to_thread(self._writer.stop)
        if self._throwaway is not None:
            shutil.rmtree(self._throwaway, ignore_errors=True)

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        reader = await self._readers.get()
        try:
            return list(await reader.execute_fetchall(sql, params))
        finally:
            self._readers.put_nowait(reader)

    # --- messages ---

    async def append_message(self, org: str, message: NewMessage) -> AppendedMessage:
        prepared = _Prepared(message, check.utc_now())
        return await self._writer.run(lambda conn: _insert(conn, org, prepared))

    async def import_messages(self, org: str, messages: Sequence[NewMessage]) -> list[AppendedMessage]:
        now = check.utc_now()
        prepared = [_Prepared(message, now) for message in messages]

        def job(conn: sqlite3.Connection) -> list[AppendedMessage]:
            return [_one(conn, _insert, org, p) for p in prepared]

        return await self._writer.run(job)

    @staticmethod
    def check_record(record: NewChat | NewMessage) -> None:
        """Raise InvalidInput when a history record could not be imported whatever the database holds."""
        if isinstance(record, NewChat):
            _PreparedChat(record)
        else:
            _Prepared(record, check.utc_now())

    async def import_history(
        self, org: str, records: Sequence[NewChat | NewMessage], keep_going: bool = False
    ) -> list[Imported | ChatdockError]:
        """Import chats and messages as they were (ids, timestamps, status), in one transaction.

        Each record comes back as "stored", "existing" (already there: re-importing stores nothing
        twice) or the error that kept it out. Without `keep_going` the first error undoes the whole
        batch and the outcomes stop at it.
        """
        org = check.identifier(org, "org")
        now = check.utc_now()
        prepared: list[_Prepared | _PreparedChat | ChatdockError] = []
        for record in records:
            try:
                prepared.append(_PreparedChat(record) if isinstance(record, NewChat) else _Prepared(record, now))
            except ChatdockError as exc:
                prepared.append(exc)

        def job(conn: sqlite3.Connection) -> list[Imported | ChatdockError]:
            outcomes: list[Imported | ChatdockError] = []
            for p in prepared:
                if isinstance(p, ChatdockError):
                    outcomes.append(p)
                elif isinstance(p, _PreparedChat):
                    try:
                        outcomes.append("stored" if _one(conn, _insert_chat, org, p) else "existing")
                    except ChatdockError as exc:
                        outcomes.append(exc)
                else:
                    try:
                        again = _one(conn, _insert, org, p, True).deduplicated
                        outcomes.append("existing" if again else "stored")
                    except ChatdockError as exc:
                        outcomes.append(exc)
                if isinstance(outcomes[-1], ChatdockError) and not keep_going:
                    raise Undo(outcomes)
            return outcomes

        return await self._writer.run(job)

    async def import_conflicts(
        self, org: str, records: Sequence[NewChat | NewMessage], chats_in_file: dict[str, tuple[str, str]]
    ) -> dict[int, str]:
        """What the database would refuse in these records, by index: ids taken elsewhere, unknown chats.

        `chats_in_file` maps the chat ids the same import brings in (earlier records) to their
        (organization, contact).
        """
        message_ids = [r.id for r in records if isinstance(r, NewMessage) and r.id is not None]
        chat_ids = {r.id for r in records if isinstance(r, NewChat)}
        chat_ids |= {r.chat_id for r in records if isinstance(r, NewMessage) and r.chat_id is not None}
        taken: dict[str, str] = {}
        for start in range(0, len(message_ids), 500):
            chunk = [check.uuid_text(i, "id") for i in message_ids[start : start + 500]]
            rows = await self._read(
                f"SELECT m.id, o.name FROM messages m JOIN orgs o ON o.id = m.org_id "
                f"WHERE m.id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            taken.update({row[0]: row[1] for row in rows})
        owners: dict[str, tuple[str, str]] = {}
        wanted = sorted(chat_ids)
        for start in range(0, len(wanted), 500):
            chunk = [check.uuid_text(i, "chat_id") for i in wanted[start : start + 500]]
            rows = await self._read(
                "SELECT ch.id, o.name, co.external_id FROM chats ch JOIN orgs o ON o.id = ch.org_id "
                f"JOIN contacts co ON co.id = ch.contact_pk WHERE ch.id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            owners.update({row[0]: (row[1], row[2]) for row in rows})
        problems: dict[int, str] = {}
        for index, record in enumerate(records):
            if isinstance(record, NewChat):
                owner = owners.get(check.uuid_text(record.id, "id"))
                if owner is not None and owner != (org, record.contact_id):
                    problems[index] = f"chat id {record.id} is already used by another contact or organization"
                continue
            if record.id is not None and taken.get(check.uuid_text(record.id, "id"), org) != org:
                problems[index] = f"message id {record.id} is already used in another organization"
            elif record.chat_id is not None:
                chat_id = check.uuid_text(record.chat_id, "chat_id")
                owner = owners.get(chat_id)
                in_file = chats_in_file.get(chat_id)
                if in_file is None and owner is None:
                    problems[index] = (
                        f"chat {chat_id} is neither in the database nor on an earlier line; "
                        "put the chat's line before its messages"
                    )
                elif (in_file or owner) != (org, record.contact_id):
                    problems[index] = f"chat {chat_id} is not a chat of contact {record.contact_id}"
        return problems

    async def post_as_contact(
        self, org: str, contact_id: str, chat_id: str, parts: Sequence[Part], channel_id: str | None = None
    ) -> Message:
        contact_id = check.contact_id(contact_id)
        chat_id = check.uuid_text(chat_id, "chat_id")
        wanted = check.optional_uuid(channel_id, "channel_id")
        checked_parts, _ = check.parts(parts)
        now = check.utc_now()

        def job(conn: sqlite3.Connection) -> Message:
            contact_pk = _existing_contact_pk(conn, org, contact_id)
            row = conn.execute(
                "SELECT contact_pk FROM chats WHERE id = ? AND org_id = " + _ORG, (chat_id, org)
            ).fetchone()
            if contact_pk is None or row is None or row[0] != contact_pk:
                raise _chat_not_found(chat_id, contact_id)
            channels = _chat_by_id(conn, chat_id).channels
            custom = [c for c in channels if c.kind == "custom"]
            listed = ", ".join(f"{c.id} ({c.name})" for c in custom)
            if not custom:
                names = ", ".join(c.name for c in channels) or "none"
                raise InvalidInput(
                    f"post_as_contact supports only custom channels (voice, widget, web, ...); chat {chat_id} has "
                    f"only provider channels ({names}), whose messages arrive from the provider's webhook"
                )
            if wanted is None:
                if len(custom) > 1:
                    raise InvalidInput(
                        f"chat {chat_id} has several custom channels; pass channel_id as one of: {listed}"
                    )
                chosen = custom[0]
            else:
                matches = [c for c in custom if c.id == wanted]
                if not matches:
                    raise InvalidInput(
                        f"channel_id {wanted} is not a custom channel of chat {chat_id}; use one of: {listed}"
                    )
                chosen = matches[0]
            prepared = _Prepared(
                NewMessage(
                    contact_id=contact_id, channel=chosen.name, role="user", parts=checked_parts, chat_id=chat_id
                ),
                now,
            )
            _insert(conn, org, prepared)
            return prepared.message

        return await self._writer.run(job)

    def _message_filters(
        self,
        agent_id: str | None,
        chat_id: str | None,
        roles: Sequence[str] | None = None,
        channels: Sequence[str] | None = None,
    ) -> tuple[str, list[Any]]:
        where = ""
        params: list[Any] = []
        if agent_id is not None:
            where += " AND m.agent_id = ?"
            params.append(agent_id)
        if chat_id is not None:
            where += " AND m.chat_id = ?"
            params.append(chat_id)
        if roles:
            where += f" AND m.role IN ({', '.join('?' * len(roles))})"
            params.extend(roles)
        if channels:
            where += f" AND m.channel IN ({', '.join('?' * len(channels))})"
            params.extend(channels)
        return where, params

    async def _require_chat(self, org: str, contact_id: str, chat_id: str | None) -> None:
        if chat_id is None:
            return
        rows = await self._read(
            f"SELECT 1 FROM chats WHERE id = ? AND contact_pk = {_CONTACT}", (chat_id, org, contact_id)
        )
        if not rows:
            raise _chat_not_found(chat_id, contact_id)

    def context_sql(
        self,
        agent_id: str | None = None,
        chat_id: str | None = None,
        roles: Sequence[str] | None = None,
        channels: Sequence[str] | None = None,
    ) -> tuple[str, list[Any]]:
        """The statement behind get_context (also read by the query-plan tests), and its filter parameters."""
        where, params = self._message_filters(agent_id, chat_id, roles, channels)
        sql = (
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE m.contact_pk = {_CONTACT}{where} "
            "ORDER BY m.created_us DESC, m.seq DESC LIMIT ?"
        )
        return sql, params

    async def get_context(
        self,
        org: str,
        contact_id: str,
        *,
        agent_id: str | None = None,
        chat_id: str | None = None,
        limit: int = 50,
        roles: Sequence[str] | None = None,
        channels: Sequence[str] | None = None,
        max_chars: int | None = None,
    ) -> Context:
        contact_id = check.contact_id(contact_id)
        agent_id = check.optional_identifier(agent_id, "agent_id")
        chat_id = check.optional_uuid(chat_id, "chat_id")
        limit = check.limit(limit)
        checked_roles = check.roles(roles)
        checked_channels = check.channels(channels)
        budget = check.max_chars(max_chars)
        await self._require_chat(org, contact_id, chat_id)
        sql, params = self.context_sql(agent_id, chat_id, checked_roles, checked_channels)
        rows = await self._read(sql, [org, contact_id, *params, limit])
        messages = [_message(row, contact_id) for row in reversed(rows)]
        kept, formatted, truncated = fit_transcript(messages, budget)
        return Context(
            contact_id=contact_id, agent_id=agent_id, messages=kept, formatted=formatted, truncated=truncated
        )

    def page_sql(
        self, agent_id: str | None = None, chat_id: str | None = None, channel: str | None = None, after: bool = False
    ) -> tuple[str, list[Any]]:
        """The statement behind list_messages (also read by the query-plan tests), and its filter parameters."""
        where, params = self._message_filters(agent_id, chat_id, None, None if channel is None else [channel])
        if after:
            where += " AND (m.created_us, m.seq) < (?, ?)"
        sql = (
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE m.contact_pk = {_CONTACT}{where} "
            "ORDER BY m.created_us DESC, m.seq DESC LIMIT ?"
        )
        return sql, params

    async def list_messages(
        self,
        org: str,
        contact_id: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        agent_id: str | None = None,
        chat_id: str | None = None,
        channel: str | None = None,
    ) -> MessagePage:
        contact_id = check.contact_id(contact_id)
        limit = check.limit(limit)
        agent_id = check.optional_identifier(agent_id, "agent_id")
        chat_id = check.optional_uuid(chat_id, "chat_id")
        channel = None if channel is None else check.channel(channel)
        position = None if cursor is None else check.decode_cursor(cursor)
        await self._require_chat(org, contact_id, chat_id)
        sql, params = self.page_sql(agent_id, chat_id, channel, after=position is not None)
        if position is not None:
            params.extend(position)
        rows = await self._read(sql, [org, contact_id, *params, limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        messages = [_message(row, contact_id) for row in rows]
        next_cursor = check.encode_cursor(rows[-1][8], rows[-1][9]) if more else None
        return MessagePage(messages=messages, next_cursor=next_cursor)

    async def delete_message(self, org: str, message_id: str) -> Message:
        message_id = check.uuid_text(message_id, "message_id")

        def job(conn: sqlite3.Connection) -> Message:
            found = _find_message(conn, f"m.id = ? AND m.org_id = {_ORG}", (message_id, org))
            if found is None:
                raise NotFound(f"message {message_id} not found; list_messages shows the ids of a contact's messages")
            conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            return found

        return await self._writer.run(job)

    # --- chats ---

    async def open_chat(self, org: str, contact_id: str, channel: str, agent_id: str | None = None) -> Chat:
        contact_id = check.contact_id(contact_id)
        channel = check.channel(channel)
        agent_id = check.optional_identifier(agent_id, "agent_id")

        def job(conn: sqlite3.Connection) -> Chat:
            now_us = _now_us()
            org_pk = _org_pk(conn, org)
            contact_pk = _contact_pk(conn, org_pk, contact_id, now_us)
            chat_id = uuid7()
            conn.execute(
                "INSERT INTO chats (id, org_id, contact_pk, agent_id, status, created_us, updated_us)"
                " VALUES (?, ?, ?, ?, 'RUNNING', ?, ?)",
                (chat_id, org_pk, contact_pk, agent_id, now_us, now_us),
            )
            _attach(conn, chat_id, _channel_id(conn, contact_pk, channel), now_us)
            return _chat_by_id(conn, chat_id)

        return await self._writer.run(job)

    async def update_chat(self, org: str, chat_id: str, status: str) -> Chat:
        chat_id = check.uuid_text(chat_id, "chat_id")
        new_status = check.chat_status(status)

        def job(conn: sqlite3.Connection) -> Chat:
            cursor = conn.execute(
                f"UPDATE chats SET status = ?, updated_us = ? WHERE id = ? AND org_id = {_ORG}",
                (new_status, _now_us(), chat_id, org),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"chat {chat_id} not found; list_chats shows a contact's chats")
            return _chat_by_id(conn, chat_id)

        return await self._writer.run(job)

    async def list_chats(self, org: str, contact_id: str, limit: int = 50) -> list[Chat]:
        contact_id = check.contact_id(contact_id)
        limit = check.limit(limit)
        rows = await self._read(
            _CHAT_SELECT + f" WHERE ch.contact_pk = {_CONTACT} ORDER BY ch.created_us DESC, ch.rowid DESC LIMIT ?",
            (org, contact_id, limit),
        )
        return [_chat(row) for row in rows]

    # --- contacts ---

    async def forget_contact(self, org: str, contact_id: str) -> ForgetResult:
        contact_id = check.contact_id(contact_id)

        def job(conn: sqlite3.Connection) -> ForgetResult:
            contact_pk = _existing_contact_pk(conn, org, contact_id)
            if contact_pk is None:
                return ForgetResult(contact_id=contact_id, deleted_messages=0, deleted_chats=0)
            messages = conn.execute("DELETE FROM messages WHERE contact_pk = ?", (contact_pk,)).rowcount
            chats = conn.execute("DELETE FROM chats WHERE contact_pk = ?", (contact_pk,)).rowcount
            conn.execute("DELETE FROM channels WHERE contact_pk = ?", (contact_pk,))
            conn.execute("DELETE FROM contacts WHERE id = ?", (contact_pk,))
            return ForgetResult(contact_id=contact_id, deleted_messages=messages, deleted_chats=chats)

        return await self._writer.run(job)

    async def recent_contacts(self, org: str, limit: int = 50) -> list[str]:
        limit = check.limit(limit)
        rows = await self._read(
            f"SELECT external_id FROM contacts WHERE org_id = {_ORG} ORDER BY last_active_us DESC, id DESC LIMIT ?",
            (org, limit),
        )
        return [row[0] for row in rows]

    async def _keyset(
        self, select: str, key: str, key_index: int, org: str | None, contact_id: str | None, contact: str, batch: int
    ) -> AsyncIterator[Any]:
        """Rows of `select` (which joins `orgs o`) in `key` order, a batch at a time: never all in memory.

        `contact` names the column holding the contact's external id; `key_index` is where the row has `key`.
        """
        where, params = "", []
        if org is not None:
            where += " AND o.name = ?"
            params.append(org)
        if contact_id is not None:
            where += f" AND {contact} = ?"
            params.append(check.contact_id(contact_id))
        last = -1
        while True:
            rows = await self._read(f"{select} WHERE {key} > ?{where} ORDER BY {key} LIMIT ?", [last, *params, batch])
            for row in rows:
                yield row
            if len(rows) < batch:
                return
            last = rows[-1][key_index]

    async def export_messages(
        self, org: str | None = None, contact_id: str | None = None, batch: int = 1000
    ) -> AsyncIterator[tuple[str, Message]]:
        """Every message as (organization, message), oldest first, a batch at a time (never all in memory)."""
        select = (
            f"SELECT {_MESSAGE_COLUMNS}, c.external_id, o.name FROM messages m "
            "JOIN contacts c ON c.id = m.contact_pk JOIN orgs o ON o.id = m.org_id"
        )
        async for row in self._keyset(select, "m.seq", 9, org, contact_id, "c.external_id", batch):
            yield row[11], _message(row, row[10])

    async def export_chats(
        self, org: str | None = None, contact_id: str | None = None, batch: int = 1000
    ) -> AsyncIterator[tuple[str, Chat]]:
        """Every chat as (organization, chat), in the order they were stored, a batch at a time."""
        select = f"SELECT ch.rowid, o.name, {_CHAT_COLUMNS} {_CHAT_FROM} JOIN orgs o ON o.id = ch.org_id"
        async for row in self._keyset(select, "ch.rowid", 0, org, contact_id, "co.external_id", batch):
            yield row[1], _chat(row[2:])

    async def count_history(self, org: str | None = None, contact_id: str | None = None) -> int:
        """How many chats and messages `export_chats` and `export_messages` would yield."""
        where, params = "1", []
        if org is not None:
            where += f" AND t.org_id = {_ORG}"
            params.append(org)
        if contact_id is not None:
            where += " AND t.contact_pk IN (SELECT id FROM contacts WHERE external_id = ?)"
            params.append(check.contact_id(contact_id))
        rows = await self._read(
            f"SELECT (SELECT count(*) FROM chats t WHERE {where}) + (SELECT count(*) FROM messages t WHERE {where})",
            params * 2,
        )
        return int(rows[0][0])

    # --- API keys ---

    async def create_api_key(self, org: str, name: str | None = None) -> NewApiKey:
        org = check.identifier(org, "org")
        if name is not None:
            name = check.identifier(name, "name")
            if name.startswith("cdk_"):
                raise InvalidInput("name must not start with 'cdk_' (that is how key prefixes start); choose another")
        prefix = "cdk_" + secrets.token_hex(4)
        key = f"{prefix}_{secrets.token_urlsafe(32)}"

        def job(conn: sqlite3.Connection) -> ApiKeyInfo:
            org_pk = _org_pk(conn, org)
            try:
                conn.execute(
                    "INSERT INTO api_keys (prefix, name, org_id, hash, created_us) VALUES (?, ?, ?, ?, ?)",
                    (prefix, name, org_pk, _key_hash(key), _now_us()),
                )
            except sqlite3.IntegrityError:
                raise Conflict(
                    f"a live key is already named {name!r}; choose another name or revoke that key"
                ) from None
            return self._key_row(conn, "k.prefix = ?", (prefix,))[0]

        return NewApiKey(key=key, info=await self._writer.run(job))

    @staticmethod
    def _key_row(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> list[ApiKeyInfo]:
        rows = conn.execute(
            "SELECT k.prefix, k.name, o.name, k.created_us, k.last_used_us, k.revoked_us "
            f"FROM api_keys k JOIN orgs o ON o.id = k.org_id WHERE {where} ORDER BY k.id",
            params,
        ).fetchall()
        return [_key_info(row) for row in rows]

    async def list_api_keys(self) -> list[ApiKeyInfo]:
        return await self._writer.run(lambda conn: self._key_row(conn, "1", ()))

    async def revoke_api_key(self, prefix_or_name: str) -> ApiKeyInfo:
        def job(conn: sqlite3.Connection) -> ApiKeyInfo:
            found = self._key_row(
                conn, "(k.prefix = ? OR k.name = ?) AND k.revoked_us IS NULL", (prefix_or_name, prefix_or_name)
            )
            if not found:
                raise NotFound(
                    f"no live key has the prefix or name {prefix_or_name!r}; `chatdock keys list` shows them"
                )
            conn.execute("UPDATE api_keys SET revoked_us = ? WHERE prefix = ?", (_now_us(), found[0].prefix))
            return self._key_row(conn, "k.prefix = ?", (found[0].prefix,))[0]

        return await self._writer.run(job)

    async def verify_api_key(self, key: str) -> str | None:
        """The organization of a live key, or None for a malformed, unknown or revoked one."""
        parts = key.split("_")
        if len(parts) < 3 or parts[0] != "cdk" or len(key) > 200:
            return None
        prefix = f"cdk_{parts[1]}"
        rows = await self._read(
            "SELECT k.hash, k.revoked_us, k.last_used_us, o.name FROM api_keys k JOIN orgs o ON o.id = k.org_id "
            "WHERE k.prefix = ?",
            (prefix,),
        )
        presented = _key_hash(key)
        if not rows:
            hmac.compare_digest(presented, presented)  # same work as a known prefix
            return None
        stored, revoked_us, last_used_us, org = rows[0]
        if not hmac.compare_digest(presented, stored) or revoked_us is not None:
            return None
        now_us = _now_us()
        if last_used_us is None or now_us - last_used_us > KEY_TOUCH_INTERVAL_US:
            await self._writer.run(
                lambda conn: conn.execute("UPDATE api_keys SET last_used_us = ? WHERE prefix = ?", (now_us, prefix))
            )
        return str(org)

    async def ping(self) -> None:
        await self._read("SELECT count(*) FROM schema_migrations", ())
