"""SQLite's failures as errors that name the cause and what to do about it (see errors.Unavailable).

A damaged file is remembered by the backend: writes are refused from then on (so nothing is written
into a broken file) and /healthz reports it until chatdock is restarted on a sound file.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

from ..errors import Unavailable

DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
WRITE_BLOCKED = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR")


def kind(exc: BaseException) -> str:
    """SQLite's name for the error (`SQLITE_FULL`, `SQLITE_CORRUPT_VTAB`, ...), or '' for anything else."""
    text = str(exc)
    if "Could not decode to UTF-8" in text:  # a text column's bytes were damaged on disk
        return "SQLITE_CORRUPT"
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str):
        return name
    for fragment, known in (
        ("database or disk is full", "SQLITE_FULL"),
        ("readonly database", "SQLITE_READONLY"),
        ("malformed", "SQLITE_CORRUPT"),
        ("file is not a database", "SQLITE_NOTADB"),
        ("unable to open database", "SQLITE_CANTOPEN"),
        ("disk I/O error", "SQLITE_IOERR"),
        ("database is locked", "SQLITE_BUSY"),
    ):
        if fragment in text:
            return known
    return ""


# SQLite's names for its errors, as the causes an operator counts (telemetry.CAUSES)
_CAUSES = (
    ("SQLITE_FULL", "disk_full"),
    ("SQLITE_READONLY", "read_only"),
    (DAMAGED, "damaged"),
    ("SQLITE_CANTOPEN", "file_problem"),
    ("SQLITE_IOERR", "io_error"),
    (("SQLITE_BUSY", "SQLITE_LOCKED"), "locked"),
)


def cause(exc: BaseException) -> str:
    """Why SQLite or the file system failed, in one word of telemetry.CAUSES."""
    if isinstance(exc, OSError):
        return "file_problem"
    name = kind(exc)
    for names, said in _CAUSES:
        if name.startswith(names):
            return said
    return "other"


def _file_in_the_way(path: str) -> str | None:
    """The first folder of `path` that is a file instead (`/etc/passwd` of `/etc/passwd/x.db`), or None."""
    for folder in reversed(Path(os.path.abspath(path)).parents):
        if folder.exists() and not folder.is_dir():
            return str(folder)
    return None


def _cannot_open(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        return f"cannot open the database: {path} is a folder; pass a file path with --db"
    if not os.path.isdir(folder):
        return f"cannot open the database: the folder {folder} does not exist and could not be created"
    if not os.access(folder, os.W_OK):
        return f"cannot open the database: the folder {folder} is not writable; choose another --db or fix it"
    return f"cannot open the database {path}; check that the file and its folder are readable and writable"


def translate(exc: BaseException, path: str) -> Unavailable | None:
    """The clear error for a failure of SQLite or of the file system, or None for anything else (a bug)."""
    if isinstance(exc, OSError):
        blocking = _file_in_the_way(path) if exc.errno in (errno.EEXIST, errno.ENOTDIR) else None
        if blocking is not None:
            return Unavailable(
                f"cannot open the database {path}: {blocking} is a file, not a folder; choose another --db"
            )
        return Unavailable(f"cannot open the database {path}: {exc.strerror or exc}")
    if not isinstance(exc, sqlite3.Error):
        return None
    name = kind(exc)
    if name.startswith("SQLITE_FULL"):
        return Unavailable(
            f"the disk is full: {path} cannot grow, so nothing was written; free space on that disk and writes "
            "work again (reads still work)"
        )
    if name.startswith("SQLITE_READONLY"):
        return Unavailable(
            f"the database is read-only: {path} cannot be written, so nothing was written; make the file, its "
            "-wal and -shm files and its folder writable by chatdock (reads still work)"
        )
    if name.startswith(DAMAGED):
        return Unavailable(damaged_text(path, name))
    if name.startswith("SQLITE_CANTOPEN"):
        return Unavailable(_cannot_open(path))
    if name.startswith("SQLITE_IOERR"):
        try:
            free: int | None = free_bytes(path)
        except OSError:
            free = None
        if free is not None and free < MIN_FREE_BYTES:  # SQLite could not make or grow its -wal or -shm file
            return Unavailable(
                f"the disk holding {path} is full ({free:,} bytes free), so SQLite could not make or grow the "
                "files it keeps beside it (-wal, -shm); free space on that disk and try again"
            )
        return Unavailable(f"the disk failed while using {path} (I/O error: {exc}); check the disk and try again")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return Unavailable(f"the database {path} stayed locked by another process; try again")
    return None


MIN_FREE_BYTES = 1024 * 1024  # below this the disk is full: /healthz says so, and an I/O error is taken for it


def free_bytes(path: str) -> int:
    """The bytes free (to chatdock) on the disk holding the file `path`; OSError when that cannot be told."""
    return shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free


def damaged_text(path: str, name: str = "SQLITE_CORRUPT") -> str:
    if name.startswith("SQLITE_NOTADB"):
        return f"{path} is not a chatdock database (not a SQLite file, or its first page is damaged); check --db"
    return (
        f"the database file is damaged: {path} ({name}); writes are refused; run `chatdock check --db {path}` "
        "to see what is damaged, and `chatdock export` to save what can still be read"
    )


def lock_wait_text(path: str, waited: float, bound: float) -> str:
    """/healthz's words for writes waiting now for a write lock another process holds."""
    return (
        f"writes to {path} have waited {waited:.1f} s for its write lock, which another process holds (a `chatdock "
        "import`, a backup, the sqlite3 command in a transaction); they are refused if it is not let go within "
        f"{bound:g} s of waiting"
    )
