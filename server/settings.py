"""`Settings`: everything a server needs, filled by the CLI (the only place that reads flags and environment)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from chatdock.storage import Durability, Store, open_store


@dataclass
class Settings:
    db: str = ":memory:"
    org: str = "default"
    read_only: bool = False
    durability: Durability = "normal"
    max_listens: int = 256  # listen streams, and subscribed initialize-era sessions, per organization
    pool_size: int = 10  # PostgreSQL: connections at most
    db_timeout: float = 10.0  # PostgreSQL: seconds to connect, to get a connection, for one statement
    # HTTP: addresses of proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (none: the socket's)
    trusted_proxies: list[str] = field(default_factory=list)

    def open_store(self) -> AbstractAsyncContextManager[Store]:
        """The one door from settings to an open store: every command and transport comes through here, so
        every store setting takes effect everywhere."""
        return open_store(self.db, self.durability, self.pool_size, self.db_timeout)
