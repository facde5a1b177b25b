"""Runs the shared SQL logic (storage/sql/ops.py) on a `sqlite3` connection, synchronously: on the writer's
thread, inside the caller's transaction."""

from __future__ import annotations

import sqlite3
from typing import Any, TypeVar
from urllib.parse import quote

from ..sql.ops import Ops

T = TypeVar("T")


def read_only(path: str, unchanging: bool = False) -> sqlite3.Connection:
    """A connection that reads the file at `path` and never creates one: a URI, in which the path is
    percent-encoded (a '#', '?' or '%' in a file's name would otherwise end the path or be read as an escape,
    and another file be opened, or created). `unchanging`: a file nobody writes while it is read, whose folder
    may not be writable (SQLite then reads it without the -shm file it would make beside it)."""
    return sqlite3.connect(_uri(path, "ro") + ("&immutable=1" if unchanging else ""), uri=True, isolation_level=None)


def existing(path: str, timeout: float) -> sqlite3.Connection:
    """A connection that reads and writes the file at `path` and never creates one (one removed meanwhile is
    not made again at the path); `timeout`: its wait for a lock."""
    return sqlite3.connect(_uri(path, "rw"), uri=True, timeout=timeout, isolation_level=None)


def _uri(path: str, mode: str) -> str:
    """The URI of the file at `path`, percent-encoded (see `read_only`)."""
    return f"file:{quote(path)}?mode={mode}"


def run(conn: sqlite3.Connection, ops: Ops[T]) -> T:
    """Run each statement `ops` yields and send it the result it asked for; return what `ops` returns."""
    result: Any = None
    send = ops.send
    try:
        while True:
            sql, params, want = send(result)
            cursor = conn.execute(sql, params)
            if want == "count":
                result = cursor.rowcount
            elif want == "all":
                result = cursor.fetchall()
            else:  # a RETURNING statement made its changes at its first step; the cursor is dropped after it
                result = cursor.fetchone()
                if want == "value" and result is not None:
                    result = result[0]
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
