"""Statements run straight on a test's database, past chatdock: to make a database as an older or newer
chatdock, or another program, would have left it."""

from __future__ import annotations

import re
import sqlite3

import asyncpg


async def run_sql(db: str, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Run statements ($1-style parameters) straight on the database `db` names, in one transaction."""
    if db.startswith("postgres"):
        conn = await asyncpg.connect(db)
        try:
            async with conn.transaction():
                for sql, args in statements:
                    await conn.execute(sql, *args)
        finally:
            await conn.close()
        return
    with sqlite3.connect(db) as lite:
        for sql, args in statements:
            lite.execute(re.sub(r"\$(\d+)", r"?\1", sql), args)
    lite.close()


async def fetch(db: str, sql: str) -> list[tuple[object, ...]]:
    """The rows of one query run straight on the database `db` names."""
    if db.startswith("postgres"):
        conn = await asyncpg.connect(db)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()
    lite = sqlite3.connect(db)
    try:
        return list(lite.execute(sql))
    finally:
        lite.close()
