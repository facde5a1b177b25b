"""The PostgreSQL backend: any number of chatdock replicas on one database (asyncpg)."""

from .backend import DEFAULT_POOL_SIZE, DEFAULT_TIMEOUT, PostgresBackend

__all__ = ["DEFAULT_POOL_SIZE", "DEFAULT_TIMEOUT", "PostgresBackend"]
