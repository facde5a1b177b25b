"""Two processes opening one SQLite file an older chatdock left: the one that upgrades it says so, and the one
that finds the work done once it holds the migration lock says nothing (it read the file's version before that
other process finished, and said it was upgrading a database it never touched)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from chatdock.storage.sql.migrations import apply_migration
from chatdock.storage.sqlite import driver, schema


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 20000")
    return conn


def test_a_process_that_finds_the_upgrade_done_under_the_lock_says_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.db"
    last = schema.MIGRATIONS[-1]
    with monkeypatch.context() as patched:  # the file as the chatdock before the last migration left it
        patched.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:-1])
        schema.migrate(_connect(path), str(path))
    holder, opener = _connect(path), _connect(path)
    holder.execute("BEGIN IMMEDIATE")  # another process, upgrading it: it holds the lock
    applied: list[list[int]] = []
    caplog.set_level(logging.DEBUG, logger="chatdock.storage.migrations")
    waiting = threading.Thread(target=lambda: applied.append(schema.migrate(opener, "old.db")))
    waiting.start()
    time.sleep(0.5)  # the opener has read the file's version and waits for the lock
    assert waiting.is_alive() and not applied
    driver.run(holder, apply_migration(last))
    holder.execute("COMMIT")
    waiting.join(timeout=30)
    assert applied == [[]]  # nothing left to do once it had the lock
    assert [record.getMessage() for record in caplog.records] == []  # nor anything to say
    assert schema.file_version(opener) == last.version
