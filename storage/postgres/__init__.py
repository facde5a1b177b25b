"""The PostgreSQL backend: any number of chatdock replicas on one database (asyncpg). `PostgresBackend`
(backend.py, on the shared SQL of storage/sql/, run through driver.py); its batched append (batches.py and
`chatdock_append` in schema.py), dialect and tsvector search (queries.py), change feed through
LISTEN/NOTIFY (feed.py), fair reads (reads.py) and PostgreSQL's failures in words (failures.py)."""

from .backend import DEFAULT_POOL_SIZE, DEFAULT_TIMEOUT, PostgresBackend

__all__ = ["DEFAULT_POOL_SIZE", "DEFAULT_TIMEOUT", "PostgresBackend"]
