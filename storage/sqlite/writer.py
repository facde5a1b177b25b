"""The single writer: one thread, one connection, group commit.

Callers hand the writer a function of a `sqlite3.Connection`. The thread
takes every job waiting in its queue (a lone caller never waits for a batch
to fill), runs them in one `BEGIN IMMEDIATE` transaction, each inside its own
savepoint, and commits once: one fsync serves the whole batch. A job that
fails rolls back its own savepoint only; the others still commit. A job that
raises `Undo` rolls back its savepoint and still returns a value (used for
"already stored" answers that must leave no trace).

A lone caller skips the thread when `inline` is on (synchronous=NORMAL, where a
commit does not wait for the disk): when no other caller waits, nothing is
queued and no batch runs, its job runs at once on the caller's thread, in a transaction of its own, with
no lock wait (a write lock held by another process sends the job to the thread,
which waits for it there). The connection is shared under `_busy`, one user at
a time.

The writer also keeps the write-ahead log within `log_limit` bytes (see checkpoints.py): every
`CHECK_EVERY` commits it looks at the log's size, and past the limit it restarts the log between two batches,
on its own connection, so that no other writer has to be waited for (`restart_log`, which the checkpoint
thread also calls for logs grown by other processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..sql.ops import Undo
from .failures import cause

T = TypeVar("T")
Committed = Callable[[int, float], None]  # told of each commit: its writes, and the seconds since BEGIN


def _untold(writes: int, seconds: float) -> None:
    pass


logger = logging.getLogger("chatdock.storage")

MAX_BATCH = 512
POLL_MS = 5  # the longest one try for the write lock waits before it tries again (`Writer._execute`)
BUSY_TIMEOUT_MS = 10_000
RESTART_WAIT_MS = 200  # the longest a log restart waits for readers still using the log
CHECK_EVERY = 32  # commits between two looks at the log's size (about 1 MB of log)


class _Restart:
    """The queue's marker for "restart the write-ahead log between two batches"."""


@dataclass
class _Job(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "database is locked" in str(exc) or "database is busy" in str(exc)
    )


def _alone(
    conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any], committed: Committed
) -> tuple[bool, Any] | None:
    """Run one job in a transaction of its own, without waiting for the write lock: (ok, value), or None when
    another process holds the lock (nothing was done; the writer thread will wait for it instead)."""
    began = time.perf_counter()
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            return None
        raise
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        value = fn(conn)
    except Undo as undo:
        conn.execute("ROLLBACK")
        return True, undo.value
    except Exception as exc:
        conn.execute("ROLLBACK")
        return False, exc
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return False, exc
    committed(1, time.perf_counter() - began)
    return True, value


class Writer:
    """Owns the only writing connection of this process; see the module docstring."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        inline: bool = False,
        log: tuple[str, int] | None = None,
        committed: Committed = _untold,
    ) -> None:
        self._connect = connect
        self._inline = inline
        self._told = committed  # of each commit (telemetry.py), on the thread that made it
        self._log = log  # (the write-ahead log's path, the size past which it is restarted)
        self._commits = 0
        self._conn: sqlite3.Connection | None = None
        self._busy = threading.Lock()  # held by whoever uses the connection: the thread, or an inline job
        self._callers = 0  # callers of run() now, on the event loop
        self._queue: queue.SimpleQueue[_Job[Any] | _Restart | None] = queue.SimpleQueue()
        self._restart_asked = threading.Event()
        self._closing = threading.Lock()  # a job is queued, or the queue closed, under it
        self._closed = False
        self.restarts = 0  # how often the log was restarted
        # since when the batch at hand has waited for another process's write lock (None: it is not waiting), for
        # /healthz: appends that hang behind a lock held elsewhere are a problem before the first of them fails
        self.waiting_since: float | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="chatdock-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def restart_log(self) -> None:
        """Ask the writer to restart the write-ahead log between two batches (from any thread; once until
        it is done)."""
        if self._thread.is_alive() and not self._restart_asked.is_set():
            self._restart_asked.set()
            self._queue.put(_Restart())

    async def run(self, fn: Callable[[sqlite3.Connection], T], background: bool = False) -> T:
        """`fn`'s value once it committed; a `background` job always runs on the thread, never on the caller's
        (it is longer than a caller's write and nobody waits for it)."""
        if not self._thread.is_alive():
            raise RuntimeError("the store is closed")
        self._callers += 1
        try:
            if (
                self._inline
                and not background
                and self._callers == 1  # alone: concurrent callers share the thread's group commit instead
                and self._queue.empty()
                and self._busy.acquire(blocking=False)
            ):
                try:
                    conn = self._conn  # read under the lock: the thread closes it under the same lock
                    done = None if conn is None else _alone(conn, fn, self._told)
                finally:
                    self._busy.release()
                if done is not None:
                    self._committed()
                    await asyncio.sleep(0)  # a caller writing in a loop still lets the other tasks run
                    ok, value = done
                    if ok:
                        return value  # type: ignore[no-any-return]
                    raise value
            loop = asyncio.get_running_loop()
            future: asyncio.Future[T] = loop.create_future()
            with self._closing:
                if self._closed:
                    raise RuntimeError("the store is closed")
                self._queue.put(_Job(fn, future, loop))
            return await future
        finally:
            self._callers -= 1

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # reported to start(), which raises it in the caller
            self._startup_error = exc
            self._ready.set()
            return
        self._conn = conn
        self._ready.set()
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if first is None:
                    break
                batch: list[_Job[Any]] = []
                restart = isinstance(first, _Restart)
                if not restart:
                    batch.append(first)  # type: ignore[arg-type]
                while len(batch) < MAX_BATCH:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stopping = True
                        break
                    if isinstance(job, _Restart):
                        restart = True
                        continue
                    batch.append(job)
                if batch:
                    with self._busy:
                        outcomes = self._execute(conn, batch)
                    self._committed()
                    for job, (ok, value) in zip(batch, outcomes, strict=True):
                        with contextlib.suppress(RuntimeError):  # the caller's loop is gone; nobody waits
                            job.loop.call_soon_threadsafe(_settle, job.future, ok, value)
                if restart:
                    with self._busy:
                        self._restart(conn)
        finally:
            with self._busy:
                self._conn = None
                conn.close()
            with self._closing:  # what was queued after the last batch: told that the store closed, not left waiting
                self._closed = True
                while True:
                    try:
                        left = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(left, _Job):
                        with contextlib.suppress(RuntimeError):
                            left.loop.call_soon_threadsafe(
                                _settle, left.future, False, RuntimeError("the store is closed")
                            )

    def _committed(self) -> None:
        self._commits += 1
        if self._log is None or self._commits % CHECK_EVERY:
            return
        path, limit = self._log
        try:
            size = os.path.getsize(path)
        except OSError:
            return
        if size > limit:
            self.restart_log()

    def _restart(self, conn: sqlite3.Connection) -> None:
        """Copy the rest of the log back and make the next commit write it from its beginning: no other writer
        to wait for (this is the only one); readers still using the log are waited for a moment at most."""
        self._restart_asked.clear()
        conn.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
            if busy:
                logger.debug("readers kept the write-ahead log busy; restarting it on the next request")
            else:
                self.restarts += 1
        except sqlite3.Error as exc:  # a full disk, a damaged file: the writes say so; the next request retries
            logger.debug("restarting the write-ahead log failed: %s", exc)
        finally:
            self.waiting_since = None
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def _execute(self, conn: sqlite3.Connection, batch: list[_Job[Any]]) -> list[tuple[bool, Any]]:
        """The batch in one transaction, tried again while another process holds the write lock: for
        `BUSY_TIMEOUT_MS` in all, then the lock's error. Each try waits `POLL_MS` at most: SQLite's own wait
        asks again at most every 100 ms, which missed the short gaps between another process's transactions
        (`chatdock import` beside a server kept every append of the server out for 2.7 s)."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        attempt = 0
        conn.execute(f"PRAGMA busy_timeout = {POLL_MS}")
        try:
            while True:
                try:
                    return self._transaction(conn, batch)
                except sqlite3.Error as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    left = deadline - time.monotonic()
                    if is_busy(exc) and left > 0:
                        if self.waiting_since is None:
                            self.waiting_since = time.monotonic()
                        attempt += 1
                        if attempt % 200 == 1:
                            logger.debug("write lock busy, retrying batch of %d (attempt %d)", len(batch), attempt)
                        if left * 1000 < POLL_MS:  # the last try waits only what is left
                            conn.execute(f"PRAGMA busy_timeout = {max(1, int(left * 1000))}")
                        time.sleep(0.001)
                        continue
                    # the machine's failures (a full disk, a read-only file) are the backend's to tell (outage.py),
                    # in words that say what to do; anything else is a bug's sign
                    level = logging.DEBUG if cause(exc) != "other" else logging.ERROR
                    logger.log(level, "write batch of %d failed: %s", len(batch), exc)
                    return [(False, exc)] * len(batch)
        finally:
            self.waiting_since = None
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def _transaction(self, conn: sqlite3.Connection, batch: list[_Job[Any]]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        began = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        for job in batch:
            conn.execute("SAVEPOINT job")
            try:
                value = job.fn(conn)
            except Undo as undo:
                conn.execute("ROLLBACK TO job")
                outcomes.append((True, undo.value))
            except Exception as exc:
                if is_busy(exc):
                    raise
                conn.execute("ROLLBACK TO job")
                outcomes.append((False, exc))
            else:
                outcomes.append((True, value))
            conn.execute("RELEASE job")
        conn.execute("COMMIT")
        self._told(len(batch), time.perf_counter() - began)
        return outcomes
