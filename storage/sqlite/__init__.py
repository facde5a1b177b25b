"""The SQLite backend: `SQLiteBackend` (backend.py) over a writer with group commit (writer.py), the
schema's migrations (migrations.py), the reads' SQL (queries.py), row mapping (rows.py) and the
writer-side statements (writes.py)."""

from .backend import Durability, SQLiteBackend

__all__ = ["Durability", "SQLiteBackend"]
