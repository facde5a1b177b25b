"""GET /metrics, scraped from a real `chatdock serve --http` during a real workload (REST, and MCP over HTTP in
both eras, on both engines) and read with the Prometheus client's own parser: every family is there, each
count is the workload's, and no label holds a contact id or a message id however many contacts write."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml
from mcp.client import Client
from mcp.client.subscriptions import ResourceUpdated
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import INTERNAL_ERROR
from prometheus_client.parser import text_string_to_metric_families

from chatdock.server.mcp.app import Settings, build_server
from chatdock.server.mcp.resources import TRANSCRIPT_URI, contact_uri
from chatdock.server.ops.metrics import Metrics
from chatdock.storage import Unavailable, is_postgres, open_store
from chatdock.storage.sqlite import checkpoints
from chatdock.storage.telemetry import CAUSES
from tests.postgres import PostgresServer
from tests.transports import (
    call,
    create_key,
    error,
    free_port,
    http_client,
    http_server,
    http_transport,
    run_cli,
    unwritable,
)

ROOT = Path(__file__).resolve().parents[2]
CONTACTS = 1_000
WATCHED, QUIET = "+31600000000", "+31600000001"  # two of the contacts; QUIET is never written while listened to
MCP_APPENDS = {"auto": 4, "legacy": 3}
EVENTS = 3
RETRIES = 5

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def contact(index: int) -> str:
    return f"+3160{index:07d}"


def message(contact_id: str, content: str = "hello", **more: Any) -> dict[str, Any]:
    return {"contact_id": contact_id, "channel": "sms", "role": "user", "content": content, **more}


def scrape(url: str) -> tuple[set[str], Samples]:
    """The families and samples of a scrape, as Prometheus' client parses them."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    families = list(text_string_to_metric_families(text))
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}
    return {f.name for f in families}, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@asynccontextmanager
async def listening(base: str, key: str, uri: str) -> AsyncIterator[list[str]]:
    """A 2026-07-28 era listen stream on `uri`; yields what it has heard so far."""
    heard: list[str] = []
    async with http_client(base, key) as client, client.listen(resource_subscriptions=[uri]) as events:

        async def collect() -> None:
            async for event in events:
                if isinstance(event, ResourceUpdated):
                    heard.append(event.uri)

        async with anyio.create_task_group() as group:
            group.start_soon(collect)
            yield heard
            group.cancel_scope.cancel()


@asynccontextmanager
async def subscribed_session(base: str, key: str, uri: str) -> AsyncIterator[Client]:
    """An initialize-era session (it holds an mcp-session-id) subscribed to `uri`."""
    async with Client(http_transport(base, key), mode="legacy") as client:
        with warnings.catch_warnings():  # resources/subscribe is the initialize era's, used here on purpose
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await client.subscribe_resource(uri)
        yield client


async def heard_within(heard: list[str], count: int) -> None:
    with anyio.fail_after(10):
        while len(heard) < count:
            await anyio.sleep(0.01)


async def workload(base: str, key: str) -> dict[str, Any]:
    """REST and MCP of both eras, every outcome counted; returns, while a listen stream and a subscribed
    session are still open, the scrape taken then."""
    async with httpx2.AsyncClient(base_url=base, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
        gate = asyncio.Semaphore(16)

        async def post(body: dict[str, Any], expected: int) -> dict[str, Any]:
            async with gate:
                answer = await http.post("/chats", json=body)
            assert answer.status_code == expected, answer.text
            return dict(answer.json())

        stored = await asyncio.gather(*(post(message(contact(i)), 201) for i in range(CONTACTS)))
        retried = message(WATCHED, "a webhook", metadata={"provider_message_id": "wamid.HBgLMzE2MTIzNDU2Nzg"})
        await post(retried, 201)
        for _ in range(RETRIES):
            assert (await post(retried, 200))["deduplicated"] is True
        assert (await http.delete(f"/chats/{stored[-1]['id']}")).status_code == 200
        assert (await http.get(f"/contacts/{WATCHED}")).status_code == 200
        assert (await http.get("/nowhere")).status_code == 404
        assert (await http.request("PROPFIND", "/chats")).status_code == 405  # a method chatdock does not know

        async with http_client(base, key) as modern:
            for index in range(MCP_APPENDS["auto"]):
                await call(modern, "append_message", **message(contact(index + 2), "over MCP"))
            await error(modern, "get_context", contact_id=WATCHED, chat_id="01a24468-f4d6-78df-954c-09b07e48c692")
        async with http_client(base, key, mode="legacy") as legacy:
            for index in range(MCP_APPENDS["legacy"]):
                await call(legacy, "append_message", **message(contact(index + 2), "over MCP, initialize era"))

        refused = {"missing": {}, "malformed": {"Authorization": "Basic x"}, "unknown": {"Authorization": "Bearer no"}}
        async with httpx2.AsyncClient(base_url=base, timeout=30) as stranger:
            statuses = [
                (await stranger.post("/chats", json=message(WATCHED), headers=refused[reason])).status_code
                for reason in ["missing", "malformed", *["unknown"] * 23]
            ]
        assert statuses == [401] * 22 + [429] * 3  # the limit counts the wrong keys, not the requests without one

        async with (
            subscribed_session(base, key, contact_uri(TRANSCRIPT_URI, QUIET)),
            listening(base, key, contact_uri(TRANSCRIPT_URI, WATCHED)) as heard,
        ):
            for count in range(1, EVENTS + 1):  # one at a time, so that no two changes are told as one
                await post(message(WATCHED, f"event {count}"), 201)
                await heard_within(heard, count)
            families, samples = await asyncio.to_thread(scrape, base + "/metrics")
    return {"families": families, "samples": samples}


@pytest.mark.process
async def test_metrics_count_a_real_workload_with_bounded_labels(db: str) -> None:
    key = create_key(db, "acme", "ops")
    with http_server(db) as base:
        scraped = await workload(base, key)
    families: set[str] = scraped["families"]
    samples: Samples = scraped["samples"]

    every = {
        "chatdock_requests",
        "chatdock_request_duration_seconds",
        "chatdock_appends",
        "chatdock_commit_batch_size",
        "chatdock_commit_duration_seconds",
        "chatdock_storage_errors",
        "chatdock_events_published",
        "chatdock_event_delivery_lag_seconds",
        "chatdock_failed_keys",
        "chatdock_throttled_requests",
        "chatdock_throttled_addresses",
        "chatdock_sessions",
        "chatdock_listeners",
    }
    engine = {
        "chatdock_postgres_pool_connections",
        "chatdock_postgres_pool_max_connections",
        "chatdock_postgres_pool_wait_seconds",
    }
    other = {
        "chatdock_sqlite_wal_bytes",
        "chatdock_sqlite_wal_limit_bytes",
        "chatdock_sqlite_database_bytes",
        "chatdock_sqlite_disk_free_bytes",
    }
    if not is_postgres(db):
        engine, other = other, engine
    assert every | engine <= families, sorted((every | engine) - families)
    assert not other & families

    # appends, by outcome: exactly what was sent
    appended = CONTACTS + 1 + sum(MCP_APPENDS.values()) + EVENTS
    assert value(samples, "chatdock_appends_total", outcome="stored") == appended
    assert value(samples, "chatdock_appends_total", outcome="deduplicated") == RETRIES

    # requests by surface, route template or MCP method, tool and status
    def requests(surface: str, operation: str, status: str, tool: str = "") -> float:
        labels = {"surface": surface, "operation": operation, "tool": tool, "status": status}
        return value(samples, "chatdock_requests_total", **labels)

    assert requests("rest", "POST /chats", "201") == CONTACTS + 1 + EVENTS
    assert requests("rest", "POST /chats", "200") == RETRIES
    assert requests("rest", "POST /chats", "401") == 22
    assert requests("rest", "POST /chats", "429") == 3
    assert requests("rest", "DELETE /chats/{message_id}", "200") == 1
    assert requests("rest", "GET /contacts/{contact_id}", "200") == 1
    assert requests("rest", "unmatched", "404") == 1
    assert requests("rest", "other", "405") == 1  # as the docs name it
    assert requests("mcp", "tools/call", "ok", "append_message") == sum(MCP_APPENDS.values())
    assert requests("mcp", "tools/call", "tool_error", "get_context") == 1
    posted = CONTACTS + 1 + EVENTS + RETRIES + 22 + 3
    timed = {"surface": "rest", "operation": "POST /chats", "tool": ""}
    assert value(samples, "chatdock_request_duration_seconds_count", **timed) == posted
    assert value(samples, "chatdock_request_duration_seconds_bucket", **timed, le="+Inf") == posted
    # buckets past --db-timeout (10 s): a request that waited for a hanging database is not all +Inf
    assert value(samples, "chatdock_request_duration_seconds_bucket", **timed, le="60.0") == posted

    # keys refused, and the address answered 429
    assert value(samples, "chatdock_failed_keys_total", reason="missing") == 1
    assert value(samples, "chatdock_failed_keys_total", reason="malformed") == 1
    assert value(samples, "chatdock_failed_keys_total", reason="unknown") == 23
    assert value(samples, "chatdock_throttled_requests_total") == 3
    assert value(samples, "chatdock_throttled_addresses") == 1

    # listeners and sessions by organization, events and their lag
    assert value(samples, "chatdock_sessions", org="acme") == 1
    assert value(samples, "chatdock_listeners", org="acme", kind="stream") == 1
    assert value(samples, "chatdock_listeners", org="acme", kind="session") == 1
    assert value(samples, "chatdock_events_published_total", org="acme") == EVENTS
    assert value(samples, "chatdock_event_delivery_lag_seconds_count") == EVENTS

    # commits, storage errors (none), and the engine's own
    assert value(samples, "chatdock_commit_batch_size_sum") >= appended
    assert value(samples, "chatdock_commit_duration_seconds_count") >= 1
    assert all(value(samples, "chatdock_storage_errors_total", cause=cause) == 0 for cause in CAUSES)
    if is_postgres(db):
        assert value(samples, "chatdock_postgres_pool_max_connections") == 10
        in_use, idle = (value(samples, "chatdock_postgres_pool_connections", state=s) for s in ("in_use", "idle"))
        assert in_use >= 0 and idle >= 0 and 1 <= in_use + idle <= 10
        batches = value(samples, "chatdock_commit_batch_size_count")  # each batch of appends took a connection
        assert value(samples, "chatdock_postgres_pool_wait_seconds_count") >= batches > 0
    else:
        assert value(samples, "chatdock_sqlite_wal_limit_bytes") == checkpoints.LIMIT
        assert 0 <= value(samples, "chatdock_sqlite_wal_bytes") <= checkpoints.LIMIT + 8_000_000
        assert value(samples, "chatdock_sqlite_database_bytes") >= 100_000  # a thousand contacts' worth
        assert value(samples, "chatdock_sqlite_disk_free_bytes") > 0

    # bounded: 1,000 contacts wrote, and no label holds a contact id, a message id or a raw path
    labels = {v for _, pairs in samples for _, v in pairs}
    assert not [v for v in labels if re.search(r"\+\d{5}|[0-9a-f]{8}-[0-9a-f]{4}-|/chats/0", v)]
    assert len(samples) < 600, len(samples)


@pytest.mark.process
async def test_mcp_requests_refused_before_a_message_is_read_are_counted(tmp_path: Path) -> None:
    """A wrong key, a body that is not JSON-RPC, a wrong Accept header: refused before the MCP server saw a
    message, they were in no count (a client broken by an upgrade was invisible); each is MCP's `other` with its
    status, and a message served is counted once, as before."""
    db = str(tmp_path / "chatdock.db")
    key = create_key(db, "acme", "ops")
    with http_server(db) as base:
        mcp = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        async with httpx2.AsyncClient(base_url=base, timeout=30) as http:
            wrong_key = await http.post("/mcp", content=b"{}", headers={**mcp, "Authorization": "Bearer cdk_0_no"})
            keyed = {**mcp, "Authorization": f"Bearer {key}"}
            not_json = await http.post("/mcp", content=b"{not json", headers=keyed)
            wrong_accept = await http.post("/mcp", content=b"{}", headers={**keyed, "Accept": "text/html"})
            # a tools/call sent as a notification (no id) in an initialize-era session: nothing runs, and it was
            # counted as a call that went well (a forget_contact "ok" on a dashboard: a security review)
            ann = {"contact_id": "ann", "channel": "sms", "role": "user", "content": "hi"}
            assert (await http.post("/chats", json=ann, headers=keyed)).status_code == 201
            started = await http.post("/mcp", json=INITIALIZE, headers=keyed)
            session = {**keyed, "Mcp-Session-Id": started.headers["mcp-session-id"], "Mcp-Protocol-Version": LEGACY}
            call = {"name": "forget_contact", "arguments": {"contact_id": "ann"}}
            unanswered = await http.post(
                "/mcp", json={"jsonrpc": "2.0", "method": "tools/call", "params": call}, headers=session
            )
            assert unanswered.status_code == 202
            assert (await http.get("/contacts/ann", headers=keyed)).status_code == 200  # nothing ran: not forgotten
        assert (wrong_key.status_code, not_json.status_code, wrong_accept.status_code) == (401, 400, 406)
        async with http_client(base, key) as client:
            await client.list_tools()
        _, samples = scrape(base + "/metrics")
        forgets = {
            dict(labels)["status"]: count
            for (name, labels), count in samples.items()
            if name == "chatdock_requests_total" and ("tool", "forget_contact") in labels
        }
        assert forgets == {"ignored": 1}, forgets
    counted = {
        labels: count
        for (name, labels), count in samples.items()
        if name == "chatdock_requests_total" and ("surface", "mcp") in labels
    }
    for status in ("401", "400", "406"):
        assert value(samples, "chatdock_requests_total", surface="mcp", operation="other", tool="", status=status) == 1
    assert not any(("status", "200") in labels for labels in counted), counted  # served: counted by its message
    assert value(samples, "chatdock_requests_total", surface="mcp", operation="tools/list", tool="", status="ok") >= 1


LEGACY = "2025-11-25"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}


def test_metrics_port_serves_metrics_off_the_main_listener(tmp_path: Path) -> None:
    db = str(tmp_path / "chatdock.db")
    port = free_port()
    with http_server(db, "--metrics-port", str(port)) as base:
        with pytest.raises(urllib.error.HTTPError) as main:
            urllib.request.urlopen(base + "/metrics", timeout=10)
        assert main.value.code == 404
        families, _ = scrape(f"http://127.0.0.1:{port}/metrics")
        assert "chatdock_requests" in families
        with pytest.raises(urllib.error.HTTPError) as elsewhere:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/chats", timeout=10)
        assert elsewhere.value.code == 404
        assert elsewhere.value.read() == b"this port serves only GET /metrics\n"
        # on loopback, it answers loopback's names alone, as the main listener does (it answered any Host: a page
        # that DNS rebinding points at it read the organizations; found by an operator's review)
        foreign = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Host": "attacker.example"})
        with pytest.raises(urllib.error.HTTPError) as rebound:
            urllib.request.urlopen(foreign, timeout=10)
        assert rebound.value.code == 421
        rebound.value.close()
        families, _ = scrape(f"http://localhost:{port}/metrics")
        assert "chatdock_requests" in families


def test_requests_of_any_method_to_any_path_add_a_bounded_number_of_series(tmp_path: Path) -> None:
    """Each pair of a method and a route was an operation of its own, with a histogram of 19 series: 220
    requests without a key (10 methods, 22 paths) took a scrape from 99 samples to 3,795 (an operator's review).
    A method its route does not take is `other`, a path no route matches `unmatched`; no `_created` samples."""
    paths = ["/chats", "/chats/context", "/chats/search", "/chats/m1", "/chats/status/c1", "/whoami", "/contacts",
             "/contacts/a", "/contacts/a/export", "/contacts/a/chats", "/contacts/a/chats/c1", "/contacts/a/aliases",
             "/contacts/a/aliases/b", "/contacts/a/chats/c1/messages", "/orgs/o/contacts/a/chats/c1/messages",
             "/ui", "/ui/x.js", "/docs", "/docs/x.css", "/openapi.json", "/nowhere", "/x/y/z"]  # fmt: skip
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "MKCOL", "LOCK"]
    db = str(tmp_path / "chatdock.db")
    key = create_key(db, "acme", "ops")
    with http_server(db) as base:
        for headers in ({}, {"Authorization": f"Bearer {key}"}):
            for path in paths:
                for method in methods:
                    request = urllib.request.Request(base + path, method=method, headers=headers)
                    try:
                        urllib.request.urlopen(request, timeout=10).close()
                    except urllib.error.HTTPError as answered:
                        answered.close()
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            text = response.read().decode()
    ours = [family for family in text_string_to_metric_families(text) if family.name.startswith("chatdock_")]
    operations = {
        sample.labels["operation"]
        for family in ours
        if family.name == "chatdock_requests"
        for sample in family.samples
        if sample.labels["surface"] == "rest"
    }
    for operation in operations - {"other", "unmatched"}:
        method, template = operation.split(" ")
        assert method in ("GET", "HEAD", "POST", "PATCH", "DELETE"), operation
        assert template in paths or "{" in template, operation  # a template, never a path naming a contact
    assert {"GET /chats/context", "POST /chats", "other", "unmatched"} <= operations, operations
    assert "HEAD /chats/context" in operations  # a GET route's HEAD is its own, not `other` (it answers it)
    assert not {"PUT /chats", "PROPFIND /chats", "OPTIONS /contacts", "GET unmatched"} & operations, operations
    assert len(operations) <= 40, operations
    assert "_created" not in text
    samples = sum(len(family.samples) for family in ours)
    assert samples < 1_000, samples  # 440 requests; 3,795 samples from half as many before


@pytest.mark.process
class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def test_paths_that_only_begin_like_mcp_or_a_probe_are_counted_as_unmatched(tmp_path: Path) -> None:
    """/mcp-admin, /healthz/anything and /livez.php went to the MCP app by their first letters: a plain-text 404
    counted nowhere, while the key they carried counted as refused (an operator's review). /mcp/ is still
    redirected to /mcp (the diff's review found the first version of the fix made it a 404)."""
    db = str(tmp_path / "chatdock.db")
    key = create_key(db, "acme", "ops")
    odd = ["/mcp-admin", "/mcpx", "/healthz/anything", "/livez.php"]
    with http_server(db) as base:
        slash = urllib.request.Request(base + "/mcp/", headers={"Authorization": f"Bearer {key}"})
        with pytest.raises(urllib.error.HTTPError) as redirected:  # a client given .../mcp/ is sent to /mcp
            urllib.request.build_opener(NoRedirects).open(slash, timeout=10)
        assert redirected.value.code == 307 and redirected.value.headers["Location"] == base + "/mcp"
        redirected.value.close()
        for path in odd:
            request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {key}"})
            with pytest.raises(urllib.error.HTTPError) as answered:
                urllib.request.urlopen(request, timeout=10)
            assert answered.value.code == 404, path
            assert set(json.loads(answered.value.read())) == {"error", "message"}, path  # the one error shape
            answered.value.close()
        _, samples = scrape(base + "/metrics")
    labels = {"surface": "rest", "operation": "unmatched", "tool": "", "status": "404"}
    assert value(samples, "chatdock_requests_total", **labels) == len(odd)


def test_metrics_on_the_main_listener_answer_only_the_hosts_mcp_answers(tmp_path: Path) -> None:
    """/metrics names organizations: a page another site serves, pointed at this server by DNS rebinding (a
    foreign Host) or calling it from the browser (a foreign Origin), is refused as at /mcp (it was served:
    found by a security review)."""
    with http_server(str(tmp_path / "chatdock.db")) as base:
        for header, status in (("Host", 421), ("Origin", 403)):
            foreign = "attacker.example" if header == "Host" else "http://attacker.example"
            request = urllib.request.Request(base + "/metrics", headers={header: foreign})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == status, (header, refused.value.read())
            refused.value.close()
        families, _ = scrape(base + "/metrics")  # as a scraper on loopback asks
        assert "chatdock_requests" in families


@pytest.mark.process
def test_metrics_on_the_main_listener_answer_only_loopback_and_private_clients(tmp_path: Path) -> None:
    """/metrics names every organization: on the main listener, served to anyone who reached it (no key), it
    listed a hosted server's customers to the internet (a security review). It answers loopback and private
    addresses, as the proxies named in --forwarded-allow-ips tell them, unless --metrics-allow names others."""
    db = str(tmp_path / "chatdock.db")
    with http_server(db, "--forwarded-allow-ips", "127.0.0.1") as base:
        for client, status in (("203.0.113.5", 403), ("10.1.2.3", 200), ("fd00::7", 200), ("2001:db8::1", 403)):
            request = urllib.request.Request(base + "/metrics", headers={"X-Forwarded-For": client})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    answered, body = response.status, response.read()
            except urllib.error.HTTPError as failed:
                answered, body = failed.code, failed.read()
            assert answered == status, (client, body)
            if status == 403:
                message = json.loads(body)["message"]
                assert f"on this listener it answers loopback and private addresses, not {client}" in message
                assert "--metrics-port" in message and "--metrics-allow" in message
    with http_server(db, "--metrics-allow", "10.0.0.0/8") as base:  # the operator's networks, loopback not one
        with pytest.raises(urllib.error.HTTPError) as loopback:
            urllib.request.urlopen(base + "/metrics", timeout=10)
        assert loopback.value.code == 403
        message = json.loads(loopback.value.read())["message"]  # it names the networks it answers, not the default
        assert "it answers addresses of 10.0.0.0/8 (--metrics-allow), not 127.0.0.1" in message, message
    with http_server(db, "--metrics-allow", "0.0.0.0/0") as base:
        assert "chatdock_requests" in scrape(base + "/metrics")[0]
    apart = run_cli("serve", "--http", "--db", db, "--metrics-allow", "::/0", "--metrics-port", str(free_port()))
    assert apart.returncode == 2 and "--metrics-port answers whoever reaches it" in apart.stderr, apart.stderr


async def test_each_server_counts_in_a_registry_of_its_own(tmp_path: Path) -> None:
    first, second = Metrics(), Metrics()
    servers = [
        build_server(Settings(db=str(tmp_path / f"{n}.db"), metrics=m)) for n, m in (("1", first), ("2", second))
    ]
    async with Client(servers[0]) as one, Client(servers[1]) as two:
        for index in range(2):
            await call(one, "append_message", **message(contact(index)))
        await call(two, "append_message", **message(contact(9)))
    assert first.registry.get_sample_value("chatdock_appends_total", {"outcome": "stored"}) == 2
    assert second.registry.get_sample_value("chatdock_appends_total", {"outcome": "stored"}) == 1
    ok = {"surface": "mcp", "operation": "tools/call", "tool": "append_message", "status": "ok"}
    assert first.registry.get_sample_value("chatdock_requests_total", ok) == 2
    assert second.registry.get_sample_value("chatdock_requests_total", ok) == 1


async def test_storage_errors_are_counted_by_cause(db: str, tmp_path: Path) -> None:
    metrics = Metrics()
    if is_postgres(db):
        broken, cause = "postgresql://chatdock@127.0.0.1:1/nowhere", "unreachable"
    else:
        broken, cause = str(tmp_path / "not-a-database.db"), "damaged"
        Path(broken).write_bytes(b"this is not a SQLite file, " * 1000)
    with pytest.raises(Unavailable):
        async with open_store(broken, timeout=2, telemetry=metrics.store_telemetry()):
            pass
    assert metrics.registry.get_sample_value("chatdock_storage_errors_total", {"cause": cause}) == 1
    others = [c for c in CAUSES if c != cause]
    assert all(metrics.registry.get_sample_value("chatdock_storage_errors_total", {"cause": c}) == 0 for c in others)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_tool_call_the_database_failed_is_counted_apart_from_a_callers_mistake(
    tmp_path: Path, mode: str
) -> None:
    """A write refused because the file may not be written was `tool_error`, as a caller's bad role is: the
    dashboard's errors and the server-error alert never saw MCP's share of an outage (an operator's review).
    It is `unavailable` (REST's 503), and the storage error's cause is `read_only`."""
    db = tmp_path / "chatdock.db"
    key = create_key(str(db), "acme", "ops")
    arguments = {"contact_id": "+31612345678", "channel": "sms", "role": "user", "content": "hi"}
    with http_server(str(db)) as base:
        async with http_client(base, key, mode) as client:
            await call(client, "append_message", **arguments)
            assert "role" in await error(client, "append_message", **{**arguments, "role": "boss"})
            with unwritable(db):
                assert "cannot be written by chatdock" in await error(client, "append_message", **arguments)
        _, samples = scrape(base + "/metrics")

    def calls(status: str) -> float:
        return value(samples, "chatdock_requests_total", surface="mcp", operation="tools/call",
                     tool="append_message", status=status)  # fmt: skip

    assert (calls("ok"), calls("tool_error"), calls("unavailable")) == (1, 1, 1)
    assert value(samples, "chatdock_storage_errors_total", cause="read_only") == 1
    assert value(samples, "chatdock_storage_errors_total", cause="file_problem") == 0


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_resource_the_database_could_not_read_is_counted_unavailable(mode: str) -> None:
    """PostgreSQL away: a resources/read was counted `-32603` (and the prompt's get `-32602`, as a bad argument),
    which the server-error alert
    (`status=~"5..|unavailable"`) does not match, while the tool calls of the same outage were `unavailable` (an
    operator's review). It is `unavailable` too; the client still hears the database's words."""
    server = PostgresServer()
    try:
        server.start()
        key = create_key(server.url, "acme", "ops")
        with http_server(server.url, "--db-timeout", "2") as base:
            async with http_client(base, key, mode) as client:
                uri = contact_uri(TRANSCRIPT_URI, "+31612345678")
                await client.read_resource(uri)
                await anyio.to_thread.run_sync(lambda: server.stop("immediate"))
                with pytest.raises(MCPError, match="cannot reach PostgreSQL at 127"):
                    await client.read_resource(uri)
                with pytest.raises(MCPError, match="cannot reach PostgreSQL at 127") as prompted:
                    await client.get_prompt("continue_conversation", {"contact_id": "+31612345678"})
                assert prompted.value.error.code == INTERNAL_ERROR  # the server's fault, not the arguments'
            _, samples = scrape(base + "/metrics")
    finally:
        server.remove()

    def reads(status: str) -> float:
        return value(samples, "chatdock_requests_total", surface="mcp", operation="resources/read", tool="",
                     status=status)  # fmt: skip

    assert (reads("ok"), reads("unavailable"), reads("-32603")) == (1, 1, 0)
    prompts = value(samples, "chatdock_requests_total", surface="mcp", operation="prompts/get", tool="",
                    status="unavailable")  # fmt: skip
    assert prompts == 1


# --- the docs: every metric listed, and the dashboard and alerts use only those ---


def documented(operations: str) -> set[str]:
    """The names in docs/operations.md's table of metrics."""
    return set(re.findall(r"^\| `(chatdock_[a-z_]+)`", operations, re.MULTILINE))


def queried(texts: Iterable[str]) -> set[str]:
    """The metric names PromQL expressions use, without the series suffixes of a histogram."""
    names = {name for text in texts for name in re.findall(r"\bchatdock_[a-z_]+", text)}
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


async def test_every_metric_is_documented_and_the_dashboard_and_alerts_use_only_those(db: str) -> None:
    metrics = Metrics()
    server = build_server(Settings(db=db, metrics=metrics))
    async with Client(server) as client:
        await call(client, "append_message", **message(WATCHED))
    exposed: set[str] = set()
    standard: set[str] = set()
    for family in metrics.registry.collect():
        named = f"{family.name}_total" if family.type == "counter" else family.name
        (exposed if named.startswith("chatdock_") else standard).add(named)
    operations = (ROOT / "docs" / "operations.md").read_text()
    listed = documented(operations)
    assert exposed <= listed, sorted(exposed - listed)
    engines = ("chatdock_sqlite_", "chatdock_postgres_")
    assert {name for name in listed - exposed if not name.startswith(engines)} == set()
    # the Prometheus client's own families of the process: named in the page's one sentence on them
    assert {"process_resident_memory_bytes", "python_gc_collections_total"} <= standard
    assert all(f"`{prefix}`" in operations for prefix in ("process_*", "python_gc_*"))

    dashboard = json.loads((ROOT / "docs" / "grafana" / "chatdock.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert expressions and queried(expressions) <= listed, sorted(queried(expressions) - listed)
    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", operations, re.DOTALL)]
    [rules] = [block for block in blocks if "groups" in block]
    alerts = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 4 and queried(alerts) <= listed, sorted(queried(alerts) - listed)


@pytest.mark.process
def test_a_serving_process_collects_garbage_rarely_and_says_so_in_its_metrics(tmp_path: Path) -> None:
    """`chatdock serve` settles its garbage collector once it serves (server/ops/memory.py): a request's objects
    are freed by reference counting, and no collection runs in the middle of requests for nothing. The
    process's own families (python_gc_*, process_*) show it, as an operator would look."""
    db = str(tmp_path / "chatdock.db")
    key = create_key(db, "acme", "gc")
    history = tmp_path / "history.jsonl"
    with history.open("w") as lines:  # 200 contacts of 50 messages each, as an import from another tool leaves
        for index in range(10_000):
            record = message(contact(index % 200), f"turn {index} about the order", created_at="2026-11-01T09:00:00Z")
            lines.write(json.dumps(record) + "\n")
    imported = run_cli("import", str(history), "--db", db, "--org", "acme", "-q")
    assert imported.returncode == 0, imported.stderr
    with http_server(db) as base:
        headers = {"Authorization": f"Bearer {key}"}
        _, before = scrape(base + "/metrics")
        for index in range(200):  # a support tool going through every contact's last 50 messages
            query = urllib.parse.urlencode({"contact_id": contact(index), "limit": "50"})
            request = urllib.request.Request(f"{base}/chats/context?{query}", headers=headers)
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
                assert len(json.loads(answer.read())["messages"]) == 50
        _, after = scrape(base + "/metrics")

    def collections(samples: Samples, generation: str) -> float:
        return value(samples, "python_gc_collections_total", generation=generation)

    assert collections(before, "2") >= 1  # the families are there: settling the collector ran a full collection
    made = {g: collections(after, g) - collections(before, g) for g in ("0", "1", "2")}
    assert made["0"] <= 30, made  # 8 here; with CPython's default threshold, 116 (and 10 of generation 1)
    assert made["2"] == 0, made
    assert value(after, "process_resident_memory_bytes") > 0
