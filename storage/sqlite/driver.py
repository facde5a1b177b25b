"""Runs the shared SQL logic (storage/sql/ops.py) on a `sqlite3` connection, synchronously: on the writer's
thread, inside the caller's transaction."""

from __future__ import annotations

import sqlite3
from typing import Any, TypeVar

from ..sql.ops import Ops

T = TypeVar("T")


def run(conn: sqlite3.Connection, ops: Ops[T]) -> T:
    """Run each statement `ops` yields and send it the result it asked for; return what `ops` returns."""
    result: Any = None
    send = ops.send
    try:
        while True:
            statement = send(result)
            cursor = conn.execute(statement.sql, statement.params)
            want = statement.want
            if want == "count":
                result = cursor.rowcount
                continue
            found = cursor.fetchall()  # all of it: a RETURNING statement is finished before the next one
            if want == "all":
                result = found
            elif want == "one":
                result = found[0] if found else None
            else:
                result = found[0][0] if found else None
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
