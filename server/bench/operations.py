"""`chatdock bench` rows for operations: what metrics and traces cost the served path.

The same REST load, on the same database, against `serve --http` processes started one after the other: one
that observes nothing, one with its metrics (every request, append and commit counted for /metrics), and two
with metrics and traces (a REST call's span, the store's and its SQL's beneath, exported by OTLP to a
stand-in collector on loopback as an operator's would be): one sampling a tenth of the traces (the sampler
an operator sets, OTEL_TRACES_SAMPLER=parentbased_traceidratio), one every trace (OpenTelemetry's default).
Each row sets its figure beside the unobserved server's; the goal is to stay within 5%.

`python -m chatdock.server.bench.operations --serve-http DB PORT MODE` is that server (MODE: one of MODES).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2

from chatdock.server.bench.over_http import serving
from chatdock.server.bench.rows import CONVERSATION, Row, percentile
from chatdock.server.settings import Settings
from chatdock.storage import open_store

MODES = ("unobserved", "with metrics", "with metrics, 1 in 10 traced", "with metrics, every request traced")
SAMPLERS = {  # the OTEL_* variables of each traced mode
    MODES[2]: {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    MODES[3]: {},
}
CLIENTS = 32
WARM_UP = 50  # requests each server answers before it is measured


class _Collector(BaseHTTPRequestHandler):
    """A stand-in OpenTelemetry Collector: takes each OTLP export (POST /v1/traces) and says it is done."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet: the bench prints its own lines
        pass


@contextlib.contextmanager
def collector() -> Iterator[str]:
    """A stand-in collector on a free loopback port, in a thread; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, name="bench-collector", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextlib.asynccontextmanager
async def served(path: str, mode: str, endpoint: str) -> AsyncIterator[str]:
    """The server of `mode` on a free port, once /healthz answers; its base URL."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    if mode in SAMPLERS:
        env |= {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, **SAMPLERS[mode]}
    here = [sys.executable, "-m", "chatdock.server.bench.operations", "--serve-http", path]
    async with serving(lambda port: [*here, str(port), mode], env) as base:
        yield base


async def figures(path: str, count: int) -> dict[str, float]:
    """For each mode: REST appends/s with 32 clients, and get_context's p50 and p99 (ms)."""
    async with open_store(path) as store:
        key = (await store.create_api_key("bench")).key
    found: dict[str, float] = {}
    with collector() as endpoint:
        for mode in MODES:
            async with served(path, mode, endpoint) as base:
                rate, p50, p99 = await measure(base, key, count)
            found[f"ops_append {mode}"] = rate
            found[f"ops_context_p50 {mode}"] = p50
            found[f"ops_context_p99 {mode}"] = p99
    return found


async def measure(base: str, key: str, count: int) -> tuple[float, float, float]:
    """After a warm-up: REST appends/s with 32 clients, and get_context's p50 and p99 (ms), one at a time."""
    from chatdock.server.bench.over_http import calls_per_second

    limits = httpx2.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30, limits=limits) as http:

        async def append(index: int) -> None:
            body = {"contact_id": f"+3186{index % 500:07d}", "channel": "sms", "role": "user", "content": "observed"}
            (await http.post(base + "/chats", json=body)).raise_for_status()

        async def context() -> float:
            began = time.perf_counter()
            (await http.get(base + "/chats/context", params={"contact_id": CONVERSATION})).raise_for_status()
            return (time.perf_counter() - began) * 1000

        for index in range(WARM_UP):
            await append(index)
            await context()
        rate = await calls_per_second(append, CLIENTS, count)
        samples = [await context() for _ in range(count)]
    return rate, percentile(samples, 0.5), percentile(samples, 0.99)


def rows(m: dict[str, float]) -> list[Row]:

    made = []
    for figure, name, unit, goal in (
        ("ops_append", f"REST append, {CLIENTS} clients", "msg/s", ">= 0.95x"),
        ("ops_context_p50", "REST get_context p50", "ms", "<= 1.05x"),
        ("ops_context_p99", "REST get_context p99", "ms", ""),
    ):
        floor = m[f"{figure} {MODES[0]}"]
        made.append(Row(f"{name}, {MODES[0]}", floor, unit, section="operations"))
        for mode in MODES[1:]:
            value = m[f"{figure} {mode}"]
            ratio = value / floor
            met = None if not goal else (ratio >= 0.95 if unit == "msg/s" else ratio <= 1.05)
            made.append(Row(f"{name}, {mode}", value, unit, floor, ratio, goal, met, "operations"))
    return made


def serve(path: str, port: int, mode: str) -> None:
    """The bench's server of `mode`, as `chatdock serve --http` runs (its tracing from the OTEL_* variables)."""
    from chatdock.server.http.app import serve_http
    from chatdock.server.ops import tracing
    from chatdock.server.ops.metrics import Metrics

    stop = tracing.start(os.environ) if mode in SAMPLERS else None
    settings = Settings(db=path, org="bench", metrics=None if mode == MODES[0] else Metrics(), tracing=stop is not None)
    try:
        serve_http(settings, "127.0.0.1", port, [])
    finally:
        if stop is not None:
            stop()


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--serve-http":
    serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
