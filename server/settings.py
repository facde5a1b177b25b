"""`Settings`: everything a server needs, filled by the CLI (the only place that reads flags and environment)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatdock.storage import Durability, Store, Telemetry, open_store

if TYPE_CHECKING:
    from chatdock.server.http.oauth import OAuthSettings
    from chatdock.server.ops.metrics import Metrics


# the client networks /metrics answers on the main listener by default: loopback, private and link-local ones
METRICS_CLIENTS = (
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
)


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
    # where the server counts its work for /metrics (metrics.py): a registry of its own; None: not counted
    metrics: Metrics | None = None
    # HTTP: the client networks /metrics answers on the main listener (it names organizations): loopback and
    # private ones unless the operator names others (--metrics-allow); the metrics port answers any
    metrics_clients: tuple[str, ...] = METRICS_CLIENTS
    # spans of REST calls, store calls and their SQL, recorded by OpenTelemetry's global tracer provider (tracing.py)
    tracing: bool = False
    # HTTP: OAuth access tokens accepted beside the API keys (oauth.py); None: keys only
    oauth: OAuthSettings | None = None

    def open_store(self, create: bool = True) -> AbstractAsyncContextManager[Store]:
        """The one door from settings to an open store: every command and transport comes through here, so
        every store setting takes effect everywhere. Without `create`, for a command that only reads, a SQLite
        path with no file is an error instead of a new database."""
        return open_store(self.db, self.durability, self.pool_size, self.db_timeout, self.telemetry(), create)

    def telemetry(self) -> Telemetry:
        """What the store tells of its work: to the metrics, with spans when tracing."""
        return Telemetry(self.tracing) if self.metrics is None else self.metrics.store_telemetry(self.tracing)
