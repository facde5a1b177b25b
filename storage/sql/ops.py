"""The statements a shared piece of SQL logic yields, and what its engine's driver sends back.

A piece of logic is a generator: `row = yield one("SELECT ... WHERE id = ?", key)` asks for the first row
(or None), `rows(...)` for all of them, `value(...)` for the first column of the first row (or None),
`count(...)` for how many rows a statement changed. Placeholders are `?`; the PostgreSQL driver numbers
them. `yield from` composes pieces. Nothing here touches a connection.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Literal, TypeVar

T = TypeVar("T")

Want = Literal["one", "all", "value", "count"]

# (the SQL, its parameters, what is wanted back): a plain tuple, the cheapest thing to build on a hot path
Statement = tuple[str, tuple[Any, ...], Want]


# A piece of logic: yields statements, is sent each one's result, returns T.
Ops = Generator[Statement, Any, T]


def one(sql: str, *params: Any) -> Statement:
    """Ask for the statement's first row, or None."""
    return (sql, params, "one")


def rows(sql: str, *params: Any) -> Statement:
    """Ask for all of the statement's rows."""
    return (sql, params, "all")


def value(sql: str, *params: Any) -> Statement:
    """Ask for the first column of the statement's first row, or None."""
    return (sql, params, "value")


def count(sql: str, *params: Any) -> Statement:
    """Run a statement that changes rows; ask how many it changed."""
    return (sql, params, "count")


class Undo(Exception):
    """Raised by a write to roll back its own changes and still return `value` (an "already stored" answer that
    must leave no trace, an import that stops at its first bad record)."""

    def __init__(self, value: object) -> None:
        super().__init__("undo")
        self.value = value
