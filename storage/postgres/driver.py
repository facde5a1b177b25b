"""Runs the shared SQL logic (storage/sql/ops.py) on an asyncpg connection: each `?` placeholder numbered
($1, $2, ...), each statement awaited, inside the caller's transaction."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ..sql.ops import Ops

T = TypeVar("T")

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


def named(url: str, role: str) -> dict[str, str]:
    """The server settings of a connection chatdock opens: its `application_name` (pg_stat_activity's, and the
    sessions a migration names as in its way): `role` ("chatdock", "chatdock feed", "chatdock migrate"), unless
    the URL or PGAPPNAME names one."""
    if "application_name" in url:
        return {}
    return {"application_name": os.environ.get("PGAPPNAME") or role}  # (asyncpg does not read PGAPPNAME)


@lru_cache(maxsize=2048)
def numbered(sql: str) -> str:
    """`sql` with each `?` outside a quoted string or identifier as `$1`, `$2`, ... in order."""
    if "?" not in sql:
        return sql
    out: list[str] = []
    quote = ""
    number = 0
    for char in sql:
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "?":
            number += 1
            out.append(f"${number}")
            continue
        out.append(char)
    return "".join(out)


def row_count(status: str) -> int:
    """The row count of a command status (`UPDATE 3`, `INSERT 0 1`); 0 for a command without one."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def run(conn: Connection, ops: Ops[T], timeout: float | None) -> T:
    """Run each statement `ops` yields and send it the result it asked for; return what `ops` returns."""
    result: Any = None
    send = ops.send
    try:
        while True:
            sql, params, want = send(result)
            sql = numbered(sql)
            if want == "all":
                result = await conn.fetch(sql, *params, timeout=timeout)
            elif want == "one":
                result = await conn.fetchrow(sql, *params, timeout=timeout)
            elif want == "value":
                result = await conn.fetchval(sql, *params, timeout=timeout)
            else:
                result = row_count(await conn.execute(sql, *params, timeout=timeout))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
