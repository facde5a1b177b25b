"""PostgreSQL's failures as errors that name the cause and what to do about it (see errors.Unavailable).

A server that goes away is not remembered: the pool connects again on the next request, so chatdock
recovers by itself when the server is back.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import asyncpg

logger = logging.getLogger("chatdock.storage")


def where(url: str) -> str:
    """The server and database a URL names, without its password, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: asyncpg says so when it connects
        port = ""
    database = parts.path.lstrip("/") or "(default database)"
    return f"PostgreSQL at {host}{port}, database {database}"


RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# what the connection itself may raise, rather than the server: the link broke, timed out, or the driver lost
# track of the connection's state (asyncpg's "cannot switch to state 15; another operation is in progress")
BROKEN = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
# every failure of the driver or the server: each is translated, none reaches a caller as a bare error
FAILURES = (*BROKEN, asyncpg.PostgresError)


def database_name(url: str) -> str:
    """The database a URL names (for a trace's `db.namespace`)."""
    return urlsplit(url).path.lstrip("/") or "postgres"


# the failures, in translate's order, as the causes an operator counts (telemetry.CAUSES)
_CAUSES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (
        (
            asyncpg.InvalidPasswordError,
            asyncpg.InvalidAuthorizationSpecificationError,
            asyncpg.InvalidCatalogNameError,
            asyncpg.InsufficientPrivilegeError,
        ),
        "access_refused",
    ),
    (asyncpg.TooManyConnectionsError, "too_many_connections"),
    (asyncpg.DiskFullError, "disk_full"),
    (asyncpg.ReadOnlySQLTransactionError, "read_only"),
    (RETRYABLE, "conflict"),
    ((asyncpg.QueryCanceledError, asyncpg.LockNotAvailableError, TimeoutError), "timeout"),
    (BROKEN, "unreachable"),
    (asyncpg.PostgresError, "statement_refused"),
)


def cause(exc: BaseException) -> str:
    """Why the server or the way to it failed, in one word of telemetry.CAUSES."""
    for kinds, said in _CAUSES:
        if isinstance(exc, kinds):
            return said
    return "other"


def broken(exc: BaseException) -> bool:
    """Whether the connection failed (rather than the server answering with an error)."""
    return isinstance(exc, BROKEN)


def translate(exc: BaseException, url: str, starting: bool = False, writing: bool = False) -> str | None:
    """`_translated` on one line: PostgreSQL's own texts may hold a `DETAIL:` on a line of its own, which split
    a log line and an error's message in two (an operator's review)."""
    text = _translated(exc, url, starting, writing)
    return None if text is None else " ".join(line.strip() for line in text.splitlines() if line.strip())


def _translated(exc: BaseException, url: str, starting: bool, writing: bool) -> str | None:
    """The clear text for a failure of the server or of the way to it, or None for anything else (a bug);
    `starting`: met while opening the store, where there is nothing yet to recover; `writing`: met by a write
    before its commit was sent, which says that nothing was written (a read does not: an operator's review
    found a read after a stored write answered "nothing was written")."""
    place = where(url)
    undone = "; nothing was written" if writing else ""
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return f"{place} refused the login: {exc}; check the user and password in --db"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{place} has no such database: {exc}; create it (createdb) or fix --db"
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return f"{place} refused: {exc}; grant chatdock's user the rights it needs on its database"
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return f"{place} has no free connection ({exc}); lower --pool-size or raise the server's max_connections"
    if isinstance(exc, asyncpg.DiskFullError):
        return f"the disk of {place} is full, so nothing was written; free space on it and writes work again"
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return f"{read_only(place)}, so nothing was written"
    if isinstance(exc, RETRYABLE):  # still conflicting after chatdock's own retries
        return f"{place} kept this write in conflict with concurrent ones ({exc}); nothing was written; try again"
    # chatdock's own --db-timeout is a TimeoutError, below; a lock_timeout is a lock not available (55P03)
    if isinstance(exc, asyncpg.QueryCanceledError | asyncpg.LockNotAvailableError):
        return (
            f"{place} cancelled the statement ({exc}): a statement_timeout or lock_timeout set on the server, or "
            "an administrator; a write so cancelled wrote nothing; try again"
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        if starting:
            return f"{place} did not answer in time; check that the server runs and is reachable from here"
        return (
            f"{place} did not answer within --db-timeout: a lock another session holds, a server too busy, or the "
            "way to it"
        )
    if isinstance(exc, BROKEN):
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if starting:
            return f"cannot reach {place}: {reason}; check that the server runs and that --db is right"
        return (
            f"cannot reach {place}: {reason}{undone}; chatdock reconnects by itself when the "
            "server is back (check that it runs and that --db is right)"
        )
    if isinstance(exc, asyncpg.PostgresError):  # the server refused the statement: its transaction is undone
        logger.error("%s refused a statement chatdock sent", place, exc_info=exc)  # not expected: keep the trace
        return f"{place} refused the request ({type(exc).__name__}: {exc}){undone}"
    return None


def read_only(place: str) -> str:
    """What a database that takes no writes is, as a write's error and /healthz say it."""
    return f"{place} is read-only (a standby, or default_transaction_read_only)"
