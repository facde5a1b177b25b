"""Traces: a tool call with a `traceparent` in its `_meta` and a REST call with the header each continue the
caller's trace, with the store's span beneath the request's and the SQL's beneath the store's (also when the
SQL runs on the writer thread), on both engines and in both eras; exported by OTLP when the OTEL_* variables
say so; and, with none of them, no OpenTelemetry SDK imported at all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import pytest
import uvicorn
from mcp.shared.exceptions import MCPError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from chatdock.server.http.app import build_http_app
from chatdock.server.mcp.app import Settings, build_server
from chatdock.server.ops import tracing
from chatdock.server.ops.metrics import Metrics
from chatdock.server.ops.tracing import exporters
from chatdock.storage import InvalidInput, is_postgres
from tests.transports import call, chatdock_command, create_key, free_port, http_client, http_server, wait_healthy

MODES = ["auto", "legacy"]
CONTACT = "+31612345678"


@pytest.fixture(scope="session")
def spans() -> Iterator[InMemorySpanExporter]:
    """OpenTelemetry's SDK as this test process's tracer provider, keeping spans in memory. It samples only
    beneath a sampled parent (ParentBased, roots off): the other tests' in-process servers, which send none,
    make no span."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
        trace.set_tracer_provider(provider)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()


def caller() -> tuple[int, int]:
    """A caller's trace id and span id, fresh for each test."""
    return int.from_bytes(secrets.token_bytes(16)), int.from_bytes(secrets.token_bytes(8))


def traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


@contextlib.contextmanager
def within(trace_id: int, span_id: int) -> Iterator[None]:
    """The caller's span as the current one, as an instrumented client has it while it calls."""
    remote = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(remote)))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[str, str]]:
    """chatdock's HTTP app on a loopback port in this process (so its spans reach this process's exporter), as
    `serve --http` serves it; (base URL, a key of the organization "acme")."""
    async with settings.open_store() as store:
        key = (await store.create_api_key("acme")).key
        app = build_http_app(settings, build_server(settings, store))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None, lifespan="on"))
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            yield f"http://127.0.0.1:{sock.getsockname()[1]}", key
        finally:
            server.should_exit = True
            await task
            sock.close()


async def finished(memory: InMemorySpanExporter, trace_id: int, name: str) -> list[ReadableSpan]:
    """The spans of the trace once the server's span named `name` has ended (a server ends a request's span as
    it sends the last of the answer, which the client may read first)."""
    for _ in range(500):
        found = [s for s in memory.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id]
        if any(s.name == name and s.kind == SpanKind.SERVER for s in found):
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"no server span {name!r} in the trace; it has {sorted(s.name for s in found)}")


def beneath(spans: list[ReadableSpan], parent: ReadableSpan, prefix: str) -> list[ReadableSpan]:
    """The spans whose parent is `parent` and whose name starts with `prefix`."""
    assert parent.context is not None
    return [
        s
        for s in spans
        if s.parent is not None and s.parent.span_id == parent.context.span_id and s.name.startswith(prefix)
    ]


def engine(db: str) -> str:
    return "postgresql" if is_postgres(db) else "sqlite"


@pytest.mark.parametrize("mode", MODES)
async def test_a_tool_call_continues_the_trace_in_its_meta_with_the_store_and_its_sql_beneath(
    spans: InMemorySpanExporter, db: str, mode: str
) -> None:
    settings = Settings(db=db, durability="full", tracing=True, metrics=Metrics())  # full: writes on the writer thread
    trace_id, span_id = caller()
    async with serving(settings) as (base, key), http_client(base, key, mode=mode) as client:
        with within(trace_id, span_id):  # the SDK's client puts it in the request's _meta.traceparent
            await call(client, "append_message", contact_id=CONTACT, channel="sms", role="user", content="traced")
            await call(client, "get_context", include_messages=True, contact_id=CONTACT)
        found = await finished(spans, trace_id, "tools/call get_context")
    servers = {s.name: s for s in found if s.kind == SpanKind.SERVER}
    assert {"tools/call append_message", "tools/call get_context"} <= set(servers)  # (and the client's tools/list)
    for tool, sql in (("append_message", ("write", "append")), ("get_context", ("read",))):
        request = servers[f"tools/call {tool}"]
        # its parent: the client's span of the call (the caller's child), whose context went in _meta.traceparent
        [sent] = [s for s in found if s.kind == SpanKind.CLIENT and s.name == f"MCP send {request.name}"]
        assert sent.parent is not None and sent.parent.span_id == span_id
        assert sent.context is not None and request.parent is not None
        assert request.parent.span_id == sent.context.span_id
        [store] = beneath(found, request, f"chatdock.store {tool}")
        assert store.attributes is not None and store.attributes["chatdock.org"] == "acme"
        statements = [s for s in beneath(found, store, engine(db)) if s.name.endswith(sql)]
        assert statements, [s.name for s in found]
        for statement in statements:
            assert statement.kind == SpanKind.CLIENT and statement.attributes is not None
            assert statement.attributes["db.system.name"] == engine(db)
            if statement.name == "sqlite write":  # run on the writer thread, beneath the call that asked for it
                assert statement.attributes["thread.name"] == "chatdock-writer"


async def test_a_rest_call_continues_the_trace_in_its_header_with_the_store_and_its_sql_beneath(
    spans: InMemorySpanExporter, db: str
) -> None:
    settings = Settings(db=db, tracing=True, metrics=Metrics())
    trace_id, span_id = caller()
    async with serving(settings) as (base, key), httpx2.AsyncClient(base_url=base, timeout=30) as http:
        headers = {"Authorization": f"Bearer {key}", "traceparent": traceparent(trace_id, span_id)}
        body = {"contact_id": CONTACT, "channel": "sms", "role": "user", "content": "traced"}
        stored = (await http.post("/chats", json=body, headers=headers)).json()
        assert (await http.delete(f"/chats/{stored['id']}", headers=headers)).status_code == 200
        found = await finished(spans, trace_id, "DELETE /chats/{message_id}")
    requests = [s for s in found if s.kind == SpanKind.SERVER]
    assert sorted(s.name for s in requests) == ["DELETE /chats/{message_id}", "POST /chats"]
    for request, tool in zip(sorted(requests, key=lambda s: s.name), ("delete_message", "append_message"), strict=True):
        assert request.parent is not None and request.parent.span_id == span_id  # the caller's span, from the header
        assert request.attributes is not None and request.attributes["http.route"] in ("/chats", "/chats/{message_id}")
        [store] = beneath(found, request, f"chatdock.store {tool}")
        assert beneath(found, store, engine(db)), [s.name for s in found]


async def test_a_read_that_cannot_reach_postgresql_is_an_error_span_beneath_its_request(
    spans: InMemorySpanExporter, postgres_url: str
) -> None:
    """With PostgreSQL refusing connections, a request's 503 had no span beneath it: the read's span began once
    a connection was in hand, and the failure was in getting one (an operator's review). The read's span holds
    the wait for a turn and a connection too, and says the error."""
    settings = Settings(db=postgres_url, tracing=True, metrics=Metrics(), db_timeout=2)
    trace_id, span_id = caller()
    database = postgres_url.rsplit("/", 1)[1]
    async with serving(settings) as (base, key), httpx2.AsyncClient(base_url=base, timeout=30) as http:
        admin = await asyncpg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres")
        try:
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            headers = {"Authorization": f"Bearer {key}", "traceparent": traceparent(trace_id, span_id)}
            answer = await http.get("/chats/context", params={"contact_id": CONTACT}, headers=headers)
            assert answer.status_code == 503, answer.text
            found = await finished(spans, trace_id, "GET /chats/context")
        finally:
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            await admin.close()
    [request] = [s for s in found if s.kind == SpanKind.SERVER]
    reads = [s for s in found if s.name == "postgresql read"]
    assert reads and all(s.status.status_code == StatusCode.ERROR for s in reads), [s.name for s in found]
    assert request.context is not None
    assert any(s.parent is not None and s.parent.span_id == request.context.span_id for s in reads)


async def test_a_tool_or_prompt_the_server_has_not_names_no_span(spans: InMemorySpanExporter, tmp_path: Path) -> None:
    """Span names are bounded as the metrics' labels: a tool or prompt a client names that chatdock does not
    have is `other` (they were named by whatever the client sent: `tools/call evil_tool_0.93`, one each)."""
    settings = Settings(db=str(tmp_path / "traced.db"), tracing=True)
    trace_id, span_id = caller()
    async with serving(settings) as (base, key), http_client(base, key) as client:
        with within(trace_id, span_id):
            assert (await client.call_tool("evil_tool_0.9289858107980965", {})).is_error
            with pytest.raises(MCPError):
                await client.get_prompt("evil_prompt_0.5", {})
            await call(client, "get_context", include_messages=True, contact_id=CONTACT)  # a known one keeps its name
        meta = {  # the 2026-07-28 era's request, as a client of its own sends it: any method may carry a `name`
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        }
        async with httpx2.AsyncClient(timeout=30) as http:
            answer = await http.post(
                base + "/mcp",
                headers={
                    "Authorization": f"Bearer {key}",
                    "Accept": "application/json, text/event-stream",
                    "MCP-Protocol-Version": "2026-07-28",
                    "mcp-method": "tools/list",
                    "traceparent": traceparent(trace_id, span_id),
                },
                json={"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"name": "evil_0.4", "_meta": meta}},
            )
            assert answer.status_code == 200, answer.text
        found = await finished(spans, trace_id, "tools/call get_context")
        found = await finished(spans, trace_id, "tools/list")
    served = [s for s in found if s.kind == SpanKind.SERVER]  # (the client's own spans name what it sent)
    names = sorted(s.name for s in served)
    assert {"tools/call other", "prompts/get other", "tools/call get_context", "tools/list"} <= set(names), names
    assert not any("evil" in s.name or "evil" in str(dict(s.attributes or {})) for s in served), names


async def test_requests_sampled_out_and_the_stores_own_work_make_no_spans(spans: InMemorySpanExporter, db: str) -> None:
    """Beneath a caller's unsampled trace (a sampler left it out), no span is made, store and SQL included."""
    settings = Settings(db=db, tracing=True)
    trace_id, span_id = caller()
    async with serving(settings) as (base, key), httpx2.AsyncClient(base_url=base, timeout=30) as http:
        headers = {"Authorization": f"Bearer {key}", "traceparent": traceparent(trace_id, span_id)[:-2] + "00"}
        body = {"contact_id": CONTACT, "channel": "sms", "role": "user", "content": "not sampled"}
        assert (await http.post("/chats", json=body, headers=headers)).status_code == 201
        assert (await http.get("/chats/context", params={"contact_id": CONTACT}, headers=headers)).status_code == 200
    assert [s for s in spans.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id] == []


# --- the OTEL_* variables, in a real `chatdock serve --http` ---


class Collector(BaseHTTPRequestHandler):
    """An OTLP receiver (POST /v1/traces, protobuf) that keeps what it is sent."""

    received: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        self.server.received.append((self.path, export))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def collector() -> Iterator[tuple[str, list[tuple[str, ExportTraceServiceRequest]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.received  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def clean_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}


@pytest.mark.process
async def test_serve_exports_spans_by_otlp_when_the_otel_variables_say_so(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = create_key(db, "acme", "traced")
    trace_id, span_id = caller()
    header_trace, _ = caller()
    with collector() as (endpoint, received):
        environment = clean_environment() | {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_SERVICE_NAME": "chatdock-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        for name in os.environ:
            if name.startswith("OTEL_"):
                monkeypatch.delenv(name)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)  # http_server starts chatdock with this process's environment
        with http_server(db) as base:
            async with http_client(base, key) as client:
                with within(trace_id, span_id):  # the SDK's client puts it in the request's _meta.traceparent
                    assert not (await client.call_tool("get_context", {"contact_id": CONTACT})).is_error
                    # errors whose message quotes what the request named: a contact's id, a prompt's name
                    with pytest.raises(MCPError, match="31655555555"):
                        await client.read_resource("chatdock://nothing/%2B31655555555")
                    with pytest.raises(MCPError, match="made-up-prompt"):
                        await client.get_prompt("made-up-prompt")
            async with httpx2.AsyncClient(base_url=base, timeout=30) as http:
                headers = {"Authorization": f"Bearer {key}", "traceparent": traceparent(trace_id, span_id)}
                body = {"contact_id": CONTACT, "channel": "sms", "role": "user", "content": "exported"}
                assert (await http.post("/chats", json=body, headers=headers)).status_code == 201
            for mode in MODES:  # a client without OpenTelemetry, whose HTTP client sends the header: no _meta
                script = HEADER_ONLY.format(
                    base=base, key=key, traceparent=traceparent(header_trace, span_id), mode=mode
                )
                run = subprocess.run([sys.executable, "-c", script], env=clean_environment(), capture_output=True)
                assert run.returncode == 0, run.stderr
        # chatdock flushes its spans as it stops
    spans = [
        span
        for _, export in received
        for resources in export.resource_spans
        for scope in resources.scope_spans
        for span in scope.spans
    ]
    exported = {span.name: span for span in spans if span.trace_id == trace_id.to_bytes(16)}
    by_header = [span.name for span in spans if span.trace_id == header_trace.to_bytes(16)]
    assert by_header.count("tools/call get_context") == len(MODES), by_header
    assert by_header.count("chatdock.store get_context") == len(MODES), by_header
    assert {path for path, _ in received} == {"/v1/traces"}
    assert {
        "tools/call get_context",
        "POST /chats",
        "chatdock.store get_context",
        "chatdock.store append_message",
    } <= set(exported), sorted(exported)
    assert exported["POST /chats"].parent_span_id == span_id.to_bytes(8)
    # the MCP SDK wrote each error's message into its span's status: exported, it named the contact and the
    # prompt (an operator's review); the kind of error stays
    failed = [span for span in spans if span.status.code == span.status.STATUS_CODE_ERROR]
    assert {span.name for span in failed} >= {"resources/read", "prompts/get other"}, [s.name for s in failed]
    for span in failed:
        assert span.status.message == "", (span.name, span.status.message)
        assert "error.type" in {attribute.key for attribute in span.attributes}, span.name
    assert b"31655555555" not in b"".join(export.SerializeToString() for _, export in received)
    assert b"made-up-prompt" not in b"".join(export.SerializeToString() for _, export in received)
    assert any(name.startswith(("sqlite ", "postgresql ")) for name in exported)
    services = {
        attribute.value.string_value
        for _, export in received
        for resources in export.resource_spans
        for attribute in resources.resource.attributes
        if attribute.key == "service.name"
    }
    assert services == {"chatdock-test"}


@pytest.mark.process
def test_a_collector_that_never_answers_holds_the_exit_a_bounded_time(tmp_path: Path) -> None:
    """SIGTERM with spans still to export to a collector that takes the connection and never answers: the
    process exits within chatdock's grace plus the tracing's own bound (it took 13 to 19 s: the exporter's
    timeout, for each batch left), and says the spans were dropped."""
    db = str(tmp_path / "traced.db")
    key, port = create_key(db, "acme", "traced"), free_port()
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel takes the connections; nothing answers
        environment = clean_environment() | {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        command = [*chatdock_command(), "serve", "--http", "--db", db, "--port", str(port)]
        process = subprocess.Popen(
            command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(process, base)
            for index in range(20):
                body = json.dumps({"contact_id": CONTACT, "channel": "sms", "role": "user", "content": f"m{index}"})
                request = urllib.request.Request(
                    base + "/chats",
                    body.encode(),
                    {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=30) as answer:
                    assert answer.status == 201
            time.sleep(0.3)  # a batch is on its way to the collector, the rest wait behind it
            began = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _, said = process.communicate(timeout=30)
            took = time.monotonic() - began
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0 and took < 3 + tracing.STOP_SECONDS + 2, (took, said)
    assert "the last spans were not taken by the collector" in said, said


HEADER_ONLY = """
import asyncio, httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

async def main():
    headers = {{"Authorization": "Bearer {key}", "traceparent": "{traceparent}"}}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client("{base}/mcp", http_client=http), mode="{mode}") as client:
            assert not (await client.call_tool("get_context", {{"contact_id": "+31612345678"}})).is_error

asyncio.run(main())
"""

PROBE = """
import sys
from chatdock.server.cli.main import main
code = main(sys.argv[1:])
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))), flush=True)
sys.exit(code)
"""


@pytest.mark.process
async def test_without_otel_variables_serve_imports_no_sdk_and_exports_nothing(tmp_path: Path) -> None:
    """Traced calls to a server the environment asks no traces of: it serves them, imports none of the SDK
    and its exporters, and stops cleanly."""
    db = str(tmp_path / "chatdock.db")
    key = create_key(db, "acme", "untraced")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", PROBE, "serve", "--http", "--db", db, "--port", str(port)],
        env=clean_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx2.AsyncClient(base_url=base, timeout=30) as http:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx2.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                assert time.monotonic() < deadline and process.poll() is None, process.stderr
                await asyncio.sleep(0.05)
            headers = {"Authorization": f"Bearer {key}", "traceparent": traceparent(*caller())}
            body = {"contact_id": CONTACT, "channel": "sms", "role": "user", "content": "untraced"}
            assert (await http.post("/chats", json=body, headers=headers)).status_code == 201
        async with http_client(base, key) as client:
            with within(*caller()):
                assert not (await client.call_tool("get_context", {"contact_id": CONTACT})).is_error
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.strip() == "[]", out


def test_the_otel_variables_that_ask_for_traces_and_those_chatdock_refuses() -> None:
    assert exporters({}) == []
    assert exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == ["otlp"]  # the default exporter
    assert exporters({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == ["otlp"]
    assert exporters({"OTEL_TRACES_EXPORTER": "console"}) == ["console"]
    assert exporters({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == []
    assert exporters({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}) == []
    with pytest.raises(InvalidInput, match="OTEL_TRACES_EXPORTER names zipkin; chatdock exports spans with otlp"):
        exporters({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(InvalidInput, match="OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"):
        exporters({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    with pytest.raises(InvalidInput, match="the OTLP protocol is set to grpc"):  # an endpoint alone asks for OTLP too
        exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def test_serve_refuses_an_otlp_endpoint_in_grpc_with_one_line(tmp_path: Path) -> None:
    """Not exported in another protocol to the gRPC port, where every span would be lost."""
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    command = [*chatdock_command(), "serve", "--http", "--db", str(tmp_path / "x.db"), "--port", str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "the OTLP protocol is set to grpc" in done.stderr, done.stderr
