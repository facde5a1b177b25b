"""`Settings`: everything a server needs, filled by the CLI (the only place that reads flags and environment)."""

from __future__ import annotations

from dataclasses import dataclass

from chatdock.storage import Durability


@dataclass
class Settings:
    db: str = ":memory:"
    org: str = "default"
    read_only: bool = False
    durability: Durability = "normal"
    max_listens: int = 256  # listen streams, and subscribed initialize-era sessions, per organization
    pool_size: int = 10  # PostgreSQL: connections at most
    db_timeout: float = 10.0  # PostgreSQL: seconds to connect, to get a connection, for one statement
