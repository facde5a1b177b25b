"""What the store tells an operator of its work: the seam that metrics and traces plug into.

The store and its backends call a `Telemetry`'s hooks at the moments an operator counts: an append answered,
a commit, a wait for a connection, a failure of the database, the files and the pool to read when asked.
The base class does nothing with them, so a store opened without telemetry works and costs as before. The
server's metrics (server/ops/metrics.py) subclass it; storage/ never imports them.

`tracing` asks for spans (tracing.py): one for each call of the store and, beneath it, one for each read and
each write of its SQL, on whichever thread runs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

if TYPE_CHECKING:
    from .store import Store

T = TypeVar("T")
C = TypeVar("C")

# Why the database failed a request: the `cause` a backend names in `Telemetry.failed`, one of a fixed list so
# that a metric labelled by it stays small.
CAUSES: Final = (
    "disk_full",  # the disk under the database is full
    "read_only",  # the database cannot be written (a read-only file, a standby server)
    "damaged",  # SQLite: the file is damaged, or not a database
    "file_problem",  # SQLite: the file cannot be opened, or was removed, replaced or made unwritable
    "io_error",  # SQLite: the disk failed a read or a write
    "locked",  # SQLite: another process kept the database locked
    "access_refused",  # PostgreSQL: the login, the database or a right was refused
    "too_many_connections",  # PostgreSQL: the server has no connection free
    "conflict",  # PostgreSQL: a write stayed in conflict with concurrent ones (deadlock, serialization)
    "timeout",  # PostgreSQL: a statement or a connection took longer than --db-timeout
    "reads_busy",  # PostgreSQL: every connection for reads stayed busy past --db-timeout
    "exports_busy",  # PostgreSQL: the exports a server runs at once stayed under way past --db-timeout
    "unreachable",  # PostgreSQL: the server cannot be reached, or the connection broke
    "outcome_unknown",  # PostgreSQL: the connection broke while a commit was on its way
    "statement_refused",  # PostgreSQL: the server refused a statement (a bug's sign)
    "other",  # anything else the backend translated
)


class PoolReading(Protocol):
    """What a connection pool tells of itself (asyncpg's `Pool` does)."""

    def get_size(self) -> int: ...

    def get_idle_size(self) -> int: ...

    def get_max_size(self) -> int: ...


_UNTRACED: Final = contextlib.nullcontext()


class SqlSpans:
    """The spans of an engine's SQL: none here; tracing.py's `TracedSql` makes them."""

    def read(self, sql: str) -> AbstractContextManager[object]:
        """Around one statement that reads, run in this task."""
        return _UNTRACED

    def write(self, name: str = "write") -> AbstractContextManager[object]:
        """Around a write run in this task (a transaction, an append's statement)."""
        return _UNTRACED

    def on_thread(self, job: Callable[[C], T]) -> Callable[[C], T]:
        """`job`, to run on another thread, as a write beneath the span current here."""
        return job


class Telemetry:
    """The hooks a store calls; each does nothing here. Hooks run on the event loop's thread, but for
    `committed` on SQLite, which the writer thread calls; a hook must be quick and must not raise (it runs
    inside the write it reports)."""

    def __init__(self, tracing: bool = False) -> None:
        self.tracing = tracing

    def trace_calls(self, store: Store) -> None:
        """With `tracing`, put each call of `store` in a span of its own."""
        if self.tracing:
            from .tracing import trace_calls  # OpenTelemetry's API is imported only when traces are wanted

            trace_calls(store)

    def sql(self, system: str, namespace: str, failures: tuple[type[BaseException], ...]) -> SqlSpans:
        """The spans of an engine's SQL (`system`: "sqlite", "postgresql"; `failures`: the exceptions that are
        the database's failures, not answers): real ones with `tracing`."""
        if not self.tracing:
            return SqlSpans()
        from .tracing import TracedSql

        return TracedSql(system, namespace, failures)

    def appended(self, deduplicated: bool) -> None:
        """An append was answered: stored now, or found already stored (same id, or channel and provider id)."""

    def committed(self, writes: int, seconds: float) -> None:
        """A transaction of `writes` writes committed, `seconds` after it began: on SQLite a group commit of the
        writer (on its thread), on PostgreSQL a batch of appends (one statement)."""

    def database_file(self, path: str, log_limit: int) -> None:
        """SQLite: the database file now open, whose write-ahead log (`path` + "-wal") is kept near
        `log_limit` bytes; to be looked at when asked."""

    def connection_pool(self, pool: PoolReading) -> None:
        """PostgreSQL: the pool now open; to be read when asked."""

    def waited(self, seconds: float) -> None:
        """PostgreSQL: a statement waited `seconds` for a connection (a read: for its turn, then the connection)."""

    def failed(self, cause: str) -> None:
        """The database failed a request, for `cause` (one of CAUSES)."""

    def feed(self, following: bool | None) -> None:
        """PostgreSQL: the change feed of the other replicas is in place (True: LISTEN answered), lost and being
        connected again (False), or not followed (None: no one here listens)."""
