"""Reading a table in key order, a batch at a time, for exports; in a damaged file (SQLite's), around what cannot
be read.

A batch that fails in a file known to be damaged is read again one row at a time: each row that cannot be
read is named in `skipped`, and where even the keys cannot be read, the walk steps over the damaged stretch
in growing steps. Nothing is ever held in memory beyond one batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from ..errors import Unavailable
from .queries import scope

Read = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]


class Walk:
    def __init__(self, read: Read, damaged: Callable[[], bool], skipped: list[str] | None) -> None:
        self.read = read
        self.damaged = damaged
        self.skipped = skipped

    def _skip(self, what: str) -> None:
        if self.skipped is not None:
            self.skipped.append(what)

    async def keyset(
        self,
        select: str,
        key: str,
        key_index: int,
        org: str | None,
        contact_id: str | None,
        contact: str,
        batch: int,
    ) -> AsyncIterator[Any]:
        """Rows of `select` (which joins `orgs o`) in `key` order, a batch at a time: never all in memory.

        `contact` names the column holding the contact's external id; `key_index` is where the row has `key`.
        In a damaged file, with a `skipped` list, what cannot be read is named there and passed over.
        """
        where, params = scope(org, contact_id, contact)
        last = -1
        while True:
            try:
                found = await self.read(
                    f"{select} WHERE {key} > ?{where} ORDER BY {key} LIMIT ?", [last, *params, batch]
                )
                more, after = len(found) == batch, found[-1][key_index] if found else last
            except Unavailable:
                if self.skipped is None or not self.damaged():
                    raise
                salvaged = await self._salvage(f"{select} WHERE {key} = ?{where}", key, params, last, batch)
                if salvaged is None:
                    return
                found, after = salvaged
                more = True
            for row in found:
                yield row
            if not more:
                return
            last = after

    async def _salvage(
        self, one: str, key: str, params: list[Any], last: int, batch: int
    ) -> tuple[list[Any], int] | None:
        """Read up to `batch` rows after `last` one at a time in a damaged file, naming those that cannot be read
        in `skipped`; where even the keys cannot be read, step over the damaged stretch. None at the end."""
        table, column = ("messages", "seq") if key == "m.seq" else ("chats", "rowid")
        next_key = f"SELECT {column} FROM {table} WHERE {column} > ? ORDER BY {column} LIMIT 1"
        keys: list[int] = []
        position = last
        while len(keys) < batch:
            try:
                found = await self.read(next_key, [position])
            except Unavailable:
                if keys:
                    break  # read what was found first; the damaged stretch is stepped over on the next call
                return await self._step_over(next_key, table, last)
            if not found:
                break
            position = int(found[0][0])
            keys.append(position)
        if not keys:
            return None
        found_rows: list[Any] = []
        for row_key in keys:
            try:
                found_rows += await self.read(one, [row_key, *params])
            except Unavailable:
                self._skip(f"{table} #{row_key}: cannot be read")
        return found_rows, keys[-1]

    async def _step_over(self, next_key: str, table: str, last: int) -> tuple[list[Any], int] | None:
        """Past `last`, the keys cannot be read: find the next key that can, in growing steps."""
        step = 1
        while step < 2**62:
            try:
                found = await self.read(next_key, [last + step])
            except Unavailable:
                step *= 2
                continue
            if not found:
                self._skip(f"{table} after #{last}: the rest cannot be read")
                return None
            first = int(found[0][0])
            self._skip(f"{table} after #{last} and before #{first}: cannot be read")
            return [], first - 1
        return None
