"""`Metrics`: what an operator scrapes at /metrics, counted in a registry of this server's own (so that two
servers in one process, as in the tests and the bench, never add up each other's counts; the Prometheus
client's `process_*` and `python_gc_*` families beside them are the whole process's).

Every name of chatdock's own starts with `chatdock_` and says what it counts; docs/operations.md lists them.
No label holds a contact id, a message id or a raw path: the labels are a surface, a REST route's template or
an MCP method, a registered tool, a status, an organization (one per API key), or a word from a fixed list
(the causes of storage/telemetry.py, the reasons of a refused key). The hot path pays a dictionary look-up and
a lock or two: the children of the label sets already seen are kept.

Counted as they happen: requests, appends, commits, waits for a connection, storage errors, events told,
refused keys. Read when scraped (`_Readings`): sessions and listeners by organization, throttled addresses,
the SQLite files and the disk under them, the PostgreSQL pool.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from chatdock.storage.telemetry import CAUSES, PoolReading, Telemetry

# up to 60 s: a request waiting for a hanging database takes --db-timeout (10 s) and more, not all of it +Inf
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
COMMIT_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
WAIT_BUCKETS: Final = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# No `_created` sample beside each counter and histogram series (the time it was first counted, which the text
# format carries as a series of its own): it doubled what a scrape holds, and Prometheus reads the start of a
# counter from its resets, not from it. This process's metrics are all chatdock's.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

# Why a key was refused (http.ApiKeyAuth): the `reason` of chatdock_failed_keys_total.
KEY_REFUSALS: Final = ("missing", "malformed", "unknown", "not_ready", "invalid_token")
MAX_THROTTLED = 10_000  # addresses remembered as throttled, as many as guard.FailedKeys remembers

Sessions = Callable[[], Mapping[str, int]]  # organization: initialize-era sessions open
Listeners = Callable[[], Mapping[str, tuple[int, int]]]  # organization: (listen streams, listening sessions)


class Metrics:
    """This server's metrics: the hooks its layers call, and `exposition()` for a scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        # the process's own: CPU, memory, open files (process_*), and its garbage collections (python_gc_*)
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        self._requests = Counter(
            "chatdock_requests",
            "Requests answered, by surface (rest, mcp), operation (REST: the method and the route's template; "
            "MCP: the method), tool (for tools/call) and status (REST: the HTTP status; MCP: ok, tool_error, "
            "or the JSON-RPC error code)",
            ["surface", "operation", "tool", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "chatdock_request_duration_seconds",
            "Seconds from a request's arrival to its answer, by surface, operation and tool (a listen stream: "
            "its whole life)",
            ["surface", "operation", "tool"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        appends = Counter(
            "chatdock_appends",
            "Messages appended, by outcome: stored, or deduplicated (already stored: the same id, or the same "
            "channel and provider_message_id)",
            ["outcome"],
            registry=registry,
        )
        self._stored, self._deduplicated = appends.labels("stored"), appends.labels("deduplicated")
        self._batches = Histogram(
            "chatdock_commit_batch_size",
            "Writes per commit: SQLite, a group commit of the writer thread; PostgreSQL, a batch of appends",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._commits = Histogram(
            "chatdock_commit_duration_seconds",
            "Seconds from a commit's BEGIN to its COMMIT: SQLite, a group commit of the writer thread with its "
            "writes; PostgreSQL, a batch of appends",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self._waits: Histogram | None = None  # PostgreSQL's, made when its pool opens (StoreMetrics)
        errors = Counter(
            "chatdock_storage_errors",
            "Requests the database failed, by cause (disk_full, read_only, damaged, unreachable, timeout, ...)",
            ["cause"],
            registry=registry,
        )
        self._errors = {cause: errors.labels(cause) for cause in CAUSES}
        self._published = Counter(
            "chatdock_events_published",
            "Change notifications sent to listeners (listen streams and subscribed sessions), by organization",
            ["org"],
            registry=registry,
        )
        self._published_by: dict[str, Counter] = {}
        self._lag = Histogram(
            "chatdock_event_delivery_lag_seconds",
            "Seconds from a change being known to this process (its own commit, or read from the change feed) "
            "to the last of its listeners being told",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        refused = Counter(
            "chatdock_failed_keys",
            "Requests refused for their bearer, by reason: missing, malformed, unknown (a key unknown or revoked), "
            "not_ready, invalid_token (an OAuth token refused)",
            ["reason"],
            registry=registry,
        )
        self._refused = {reason: refused.labels(reason) for reason in KEY_REFUSALS}
        self._throttled = Counter(
            "chatdock_throttled_requests",
            "Requests answered 429 because their address sent too many wrong keys",
            registry=registry,
        )
        self._readings = _Readings()
        registry.register(self._readings)
        self._children: dict[tuple[str, str, str, str], tuple[Counter, Histogram]] = {}

    # --- counted as it happens ---

    def request(self, surface: str, operation: str, tool: str, status: str, seconds: float) -> None:
        """A request answered (every label bounded by its caller: observe.py)."""
        key = (surface, operation, tool, status)
        children = self._children.get(key)
        if children is None:
            children = (self._requests.labels(*key), self._latency.labels(surface, operation, tool))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def told(self, org: str, sends: int, lag: float) -> None:
        """A change was sent to `sends` listeners of `org`, the last `lag` seconds after it was known."""
        child = self._published_by.get(org)
        if child is None:
            child = self._published_by[org] = self._published.labels(org)
        child.inc(sends)
        self._lag.observe(lag)

    def refused_key(self, reason: str) -> None:
        """A request was refused for its key (one of KEY_REFUSALS)."""
        self._refused[reason].inc()

    def throttled(self, address: str, seconds: float) -> None:
        """A request from `address` was answered 429; the address may try again in `seconds`."""
        self._throttled.inc()
        waiting = self._readings.throttled
        waiting[address] = time.monotonic() + seconds
        if len(waiting) > MAX_THROTTLED:
            waiting.pop(next(iter(waiting)))

    def store_telemetry(self, tracing: bool = False) -> Telemetry:
        """What a store opened for this server tells (storage/telemetry.py)."""
        return StoreMetrics(self, tracing)

    # --- read when scraped ---

    def watch_sessions(self, sessions: Sessions) -> None:
        self._readings.sessions = sessions

    def watch_listeners(self, listeners: Listeners) -> None:
        self._readings.listeners = listeners

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The metrics as a scrape asks for them (Prometheus' text format, or OpenMetrics); their content type."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class StoreMetrics(Telemetry):
    """The store's hooks (storage/telemetry.py), counted into a server's `Metrics`."""

    def __init__(self, metrics: Metrics, tracing: bool) -> None:
        super().__init__(tracing)
        self._metrics = metrics

    def appended(self, deduplicated: bool) -> None:
        (self._metrics._deduplicated if deduplicated else self._metrics._stored).inc()

    def committed(self, writes: int, seconds: float) -> None:
        self._metrics._batches.observe(writes)
        self._metrics._commits.observe(seconds)

    def database_file(self, path: str, log_limit: int) -> None:
        self._metrics._readings.database = (path, log_limit)

    def connection_pool(self, pool: PoolReading) -> None:
        self._metrics._readings.pool = pool
        if self._metrics._waits is None:
            self._metrics._waits = Histogram(
                "chatdock_postgres_pool_wait_seconds",
                "Seconds a PostgreSQL statement waited for a connection of the pool (a read: for its turn too)",
                buckets=WAIT_BUCKETS,
                registry=self._metrics.registry,
            )

    def waited(self, seconds: float) -> None:
        if self._metrics._waits is not None:
            self._metrics._waits.observe(seconds)

    def failed(self, cause: str) -> None:
        self._metrics._errors.get(cause, self._metrics._errors["other"]).inc()

    def feed(self, following: bool | None) -> None:
        self._metrics._readings.feed = following


class _Readings:
    """The gauges read when scraped (a prometheus_client collector)."""

    def __init__(self) -> None:
        self.sessions: Sessions | None = None
        self.listeners: Listeners | None = None
        self.database: tuple[str, int] | None = None  # SQLite: the file, and its log's limit
        self.pool: PoolReading | None = None  # PostgreSQL
        self.feed: bool | None = None  # PostgreSQL: the other replicas' change feed followed (None: not followed)
        self.throttled: dict[str, float] = {}  # address: when it may try again (time.monotonic())

    def collect(self) -> Iterator[Metric]:
        sessions = GaugeMetricFamily(
            "chatdock_sessions", "Initialize-era MCP sessions open over HTTP, by organization", labels=["org"]
        )
        for org, count in sorted((self.sessions() if self.sessions is not None else {}).items()):
            sessions.add_metric([org], count)
        yield sessions
        listeners = GaugeMetricFamily(
            "chatdock_listeners",
            "Listeners of change events, by organization and kind: stream (a subscriptions/listen stream) or "
            "session (an initialize-era session subscribed to a resource or to the resource list)",
            labels=["org", "kind"],
        )
        for org, (streams, sessions_listening) in sorted(
            (self.listeners() if self.listeners is not None else {}).items()
        ):
            listeners.add_metric([org, "stream"], streams)
            listeners.add_metric([org, "session"], sessions_listening)
        yield listeners
        now = time.monotonic()
        for address in [address for address, until in self.throttled.items() if until <= now]:
            del self.throttled[address]
        yield GaugeMetricFamily(
            "chatdock_throttled_addresses",
            "Client addresses answered 429 now, for sending too many wrong keys",
            value=len(self.throttled),
        )
        if self.database is not None:
            yield from _sqlite_files(*self.database)
        if self.feed is not None:
            yield GaugeMetricFamily(
                "chatdock_postgres_change_feed_up",
                "1 while this replica hears the other replicas' changes (LISTEN in place), 0 while it has lost them "
                "and connects again (its listeners hear only its own writes)",
                value=1 if self.feed else 0,
            )
        if self.pool is not None:
            connections = GaugeMetricFamily(
                "chatdock_postgres_pool_connections",
                "PostgreSQL connections of the pool, by state: in_use or idle",
                labels=["state"],
            )
            size, idle = self.pool.get_size(), self.pool.get_idle_size()
            connections.add_metric(["in_use"], size - idle)
            connections.add_metric(["idle"], idle)
            yield connections
            yield GaugeMetricFamily(
                "chatdock_postgres_pool_max_connections",
                "The most PostgreSQL connections the pool opens (--pool-size)",
                value=self.pool.get_max_size(),
            )


def _sqlite_files(path: str, log_limit: int) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "chatdock_sqlite_wal_bytes", "Bytes of the SQLite write-ahead log (the -wal file)", value=_size(path + "-wal")
    )
    yield GaugeMetricFamily(
        "chatdock_sqlite_wal_limit_bytes",
        "Bytes past which chatdock restarts the write-ahead log between two commits",
        value=log_limit,
    )
    yield GaugeMetricFamily("chatdock_sqlite_database_bytes", "Bytes of the SQLite database file", value=_size(path))
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:  # not known: no sample, rather than 0 (which an alert on a full disk would take at its word)
        return
    yield GaugeMetricFamily(
        "chatdock_sqlite_disk_free_bytes", "Bytes free on the disk that holds the SQLite database", value=free
    )


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # no log between two restarts, or the file was removed (the health check says so)
        return 0
