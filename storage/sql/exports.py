"""An export's reads, written once for both engines: the chats, the aliases and the messages of one snapshot
(`SQLBackend.snapshot`), each table in key order, a batch at a time (walk.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from .. import rows
from ..models import Alias, Chat, Message
from .dialect import Dialect
from .queries import CHAT_FROM, MESSAGE_COLUMNS, scope
from .walk import Read, Walk


class Exports:
    """The history as `read` sees it: each engine gives a `read` that runs in one read transaction."""

    def __init__(self, dialect: Dialect, read: Read, damaged: Callable[[], bool]) -> None:
        self.dialect = dialect
        self.read = read
        self.damaged = damaged  # a damaged file (SQLite's): the walks read around what cannot be read

    async def export_messages(
        self, org: str | None, contact_id: str | None, batch: int, skipped: list[str] | None = None
    ) -> AsyncIterator[tuple[str, Message]]:
        select = (
            f"SELECT {MESSAGE_COLUMNS}, c.external_id, o.name FROM messages m "
            "JOIN contacts c ON c.id = m.contact_pk JOIN orgs o ON o.id = m.org_id"
        )
        walk = Walk(self.read, self.damaged, skipped)
        async for row in walk.keyset(select, "m.seq", 9, org, contact_id, "c.external_id", batch):
            yield row[11], rows.message(row, row[10])

    async def export_chats(
        self, org: str | None, contact_id: str | None, batch: int, skipped: list[str] | None = None
    ) -> AsyncIterator[tuple[str, Chat]]:
        key = f"ch.{self.dialect.chat_order}"
        select = f"SELECT {key}, o.name, {self.dialect.chat_columns} {CHAT_FROM} JOIN orgs o ON o.id = ch.org_id"
        walk = Walk(self.read, self.damaged, skipped)
        async for row in walk.keyset(select, key, 0, org, contact_id, "co.external_id", batch):
            yield row[1], rows.chat(row[2:])

    async def count_records(self, org: str | None, contact_id: str | None) -> int:
        where, params = scope(org, contact_id, "c.external_id")
        joins = "JOIN orgs o ON o.id = t.org_id JOIN contacts c ON c.id = t.contact_pk"
        found = await self.read(
            f"SELECT (SELECT count(*) FROM chats t {joins} WHERE true{where})"
            f" + (SELECT count(*) FROM messages t {joins} WHERE true{where})"
            " + (SELECT count(*) FROM identifiers t JOIN contacts c ON c.id = t.contact_pk JOIN orgs o"
            f" ON o.id = t.org_id WHERE t.identifier <> c.external_id{where})",
            params * 3,
        )
        return int(found[0][0])

    async def export_aliases(self, org: str | None, contact_id: str | None) -> AsyncIterator[tuple[str, Alias]]:
        where, params = scope(org, contact_id, "c.external_id")
        found = await self.read(
            "SELECT o.name, c.external_id, i.identifier, i.created_us FROM identifiers i "
            "JOIN contacts c ON c.id = i.contact_pk JOIN orgs o ON o.id = i.org_id "
            f"WHERE i.identifier <> c.external_id{where} ORDER BY i.created_us, i.identifier",
            params,
        )
        for org_name, owner, identifier, created_us in found:
            yield org_name, Alias(contact_id=owner, identifier=identifier, created_at=rows.from_us(created_us))
