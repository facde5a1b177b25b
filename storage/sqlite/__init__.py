"""The SQLite backend: `SQLiteBackend` (backend.py, on the shared SQL of storage/sql/) over a writer with group
commit (writer.py) that runs the shared logic through driver.py; its own append (append.py), dialect and
FTS5 search (queries.py), schema (schema.py), change feed (feed.py), export's walk (walk.py), write-ahead log
upkeep (checkpoints.py), damage and file watch (health.py) and SQLite's failures in words (failures.py)."""

from .backend import Durability, SQLiteBackend

__all__ = ["Durability", "SQLiteBackend"]
