"""WAL checkpoints off the writer's path, and a write-ahead log that stays bounded.

SQLite copies the write-ahead log back into the database file (a checkpoint, with an fsync) from inside
whichever commit pushes the log past 1,000 pages: that commit, and every caller waiting on it, pays for
the copy. chatdock turns that off on its writing connection and checkpoints from a thread of its own
instead. Durability is unchanged: a commit is in the log either way.

A copy alone never makes the log smaller: SQLite starts writing the log from its beginning again only when
a writer finds every frame copied back and no reader still using it, which under sustained writes and
reads never happens (the log grew by every commit, about 30 KB per append, for ever). So the thread, every
`EVERY` seconds:

- copies what it can, PASSIVE (it never waits for, nor blocks, a writer or a reader);
- when the log file has passed `LIMIT` bytes, asks the writer (writer.py, which also looks at the size
  every few commits of its own) to checkpoint RESTART between two of its batches: on the only writing
  connection there is no other writer to wait for, only readers still using the log (a moment at most,
  `RESTART_WAIT_MS`); it copies the few frames written since the PASSIVE copy and makes the next commit
  start the log from its beginning, and the writing connection's `journal_size_limit` then cuts the file
  back to `LIMIT`. Writers wait only for that short copy, about once per `LIMIT` bytes written;
- when nothing was written for `IDLE` seconds, checkpoints TRUNCATE (without waiting for anyone): the
  file goes back to zero bytes.

The bound: the log file stays under `LIMIT` plus what this process writes in `CHECK_EVERY` commits (about
1 MB; another process's writes: what it adds in one `EVERY`), plus, when a reader holds its snapshot for
longer than `RESTART_WAIT_MS`, what is written until the next try; it shrinks to nothing within `IDLE`
seconds of the last write, and on close it is checkpointed and removed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable

logger = logging.getLogger("chatdock.storage")

EVERY = 0.25  # seconds between checkpoints
LIMIT = 64 * 1024 * 1024  # bytes of log past which the log is restarted (and cut back to, after)
IDLE = 1.0  # seconds without a write after which the log is emptied


class Checkpointer:
    def __init__(self, path: str, busy_timeout_ms: int, restart: Callable[[], None], limit: int | None = None) -> None:
        self._path = path
        self._restart = restart  # asks the writer to restart the log
        self.limit = LIMIT if limit is None else limit  # bytes of log past which the log is restarted
        self._wal = path + "-wal"
        self._busy_timeout_ms = busy_timeout_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="chatdock-checkpoints", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def log_size(self) -> int:
        try:
            return os.path.getsize(self._wal)
        except OSError:
            return 0

    def _main(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            logger.warning("cannot checkpoint the write-ahead log (%s); SQLite's own checkpoints stay off", exc)
            return
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            quiet = 0.0  # seconds since the log last grew
            last_frames = -1
            while not self._stop.wait(EVERY):
                try:
                    frames = self._checkpoint(conn, "PASSIVE")[1]
                    if frames != last_frames:
                        quiet, last_frames = 0.0, frames
                    else:
                        quiet += EVERY
                    if quiet >= IDLE:
                        if self.log_size() > 0:
                            self._checkpoint(conn, "TRUNCATE")  # busy (someone reads or writes): next time
                    elif self.log_size() > self.limit:
                        self._restart()
                except sqlite3.Error as exc:  # a full disk, a damaged file: the writes say so; try again later
                    logger.debug("checkpoint failed: %s", exc)
            try:  # closing: leave no log behind (when another process still uses the file, it keeps it)
                conn.execute(f"PRAGMA busy_timeout = {min(self._busy_timeout_ms, 1000)}")
                self._checkpoint(conn, "TRUNCATE")
            except sqlite3.Error as exc:
                logger.debug("final checkpoint failed: %s", exc)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> tuple[int, int, int]:
        busy, frames, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return int(busy), int(frames), int(copied)
