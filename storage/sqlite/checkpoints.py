"""WAL checkpoints off the writer's path.

SQLite copies the write-ahead log back into the database file (a checkpoint, with an fsync) from inside
whichever commit pushes the log past 1,000 pages: that commit, and every caller waiting on it, pays for
the copy. chatdock turns that off on its writing connection and checkpoints from a thread of its own
instead, PASSIVE (it never waits for, nor blocks, a writer or a reader), a few times a second while the
log holds anything. Durability is unchanged: a commit is in the log either way.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

logger = logging.getLogger("chatdock.storage")

EVERY = 0.25  # seconds between checkpoints


class Checkpointer:
    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="chatdock-checkpoints", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _main(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            logger.warning("cannot checkpoint the write-ahead log (%s); SQLite's own checkpoints stay off", exc)
            return
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            while not self._stop.wait(EVERY):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # a full disk, a damaged file: the writes say so; try again later
                    logger.debug("checkpoint failed: %s", exc)
        finally:
            conn.close()
