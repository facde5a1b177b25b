"""The SQLite backend: `SQLiteBackend` (backend.py) over a writer with group commit (writer.py), the
schema's migrations (migrations.py), the reads' SQL (queries.py), row mapping (rows.py), the
writer-side statements (writes.py), the change feed's follower (feed.py), export's walk (walk.py) and
SQLite's failures in words (failures.py)."""

from .backend import Durability, SQLiteBackend

__all__ = ["Durability", "SQLiteBackend"]
