"""Change events reach every listener of the organization, of both protocol eras, whatever wrote the change:
the listener itself, another session of the same process, another `chatdock serve` on the same file, and
`chatdock import`; never for another contact or another organization, and none after unsubscribing."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.client.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import ResourceListChangedNotification, ResourceUpdatedNotification

from chatdock.server.mcp import events
from chatdock.server.mcp.app import Settings, build_server
from chatdock.server.mcp.resources import TRANSCRIPT_URI, contact_uri
from tests.transports import (
    RawStdio,
    call,
    create_key,
    http_client,
    http_server,
    http_transport,
    run_cli,
    stdio_params,
)

MODES = ["auto", "legacy"]
WATCHED = "+31612345678"
URI = contact_uri(TRANSCRIPT_URI, WATCHED)
LIST = "(the resource list)"


@contextlib.contextmanager
def initialize_era() -> Iterator[None]:
    """The SDK warns that resources/subscribe is gone from the 2026-07-28 era: these tests use it on purpose,
    as every client of the initialize era does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        yield


@asynccontextmanager
async def subscriber(target: Any, mode: str, uri: str = URI, **kwargs: Any) -> AsyncIterator[tuple[Client, list[str]]]:
    """A client of `mode` that listens to `uri` and to the resource list; yields it and what it has heard."""
    heard: list[str] = []
    if mode == "legacy":

        async def handler(message: Any) -> None:
            if isinstance(message, ResourceUpdatedNotification):
                heard.append(str(message.params.uri))
            elif isinstance(message, ResourceListChangedNotification):
                heard.append(LIST)

        async with Client(target, mode="legacy", message_handler=handler, **kwargs) as client:
            await client.list_resources()  # a session that lists the resources hears when the list changes
            with initialize_era():
                await client.subscribe_resource(uri)
            yield client, heard
        return
    async with Client(target, **kwargs) as client:
        async with client.listen(resource_subscriptions=[uri], resources_list_changed=True) as events:

            async def collect() -> None:
                async for event in events:
                    if isinstance(event, ResourceUpdated):
                        heard.append(event.uri)
                    elif isinstance(event, ResourcesListChanged):
                        heard.append(LIST)

            async with anyio.create_task_group() as group:
                group.start_soon(collect)
                yield client, heard
                group.cancel_scope.cancel()


async def heard_within(heard: list[str], count: int, seconds: float = 15) -> None:
    """Until `count` events have arrived. The bound is for an event that never comes, not a latency (the bench
    measures that): on a loaded 2-core machine running the whole suite, an event has taken over 5 s."""
    with anyio.fail_after(seconds):
        while len(heard) < count:
            await anyio.sleep(0.01)


SENTINEL = "+31690000000"  # a contact no test writes to but the sentinel


async def quiet_until_sentinel(heard: list[str], count: int, sentinel: Callable[[], Awaitable[object]]) -> None:
    """Nothing more than `count` events came of the writes before: `sentinel()` then writes, by the same path as
    they did, the first message of a new contact of the listener's organization, whose list-changed event
    reaches the listener after theirs (events arrive in the order their writes committed). No sleep decides."""
    await sentinel()
    await heard_within(heard, count + 1)
    assert heard[count:] == [LIST], heard


def sentinel_by(client: Client) -> Callable[[], Awaitable[object]]:
    return lambda: call(client, "append_message", **append(SENTINEL, "sentinel"))


async def sentinel_from_another_process(db: str, *extra: str) -> None:
    def write() -> None:
        with RawStdio(db, *extra) as other:
            answer = other.tool("append_message", append(SENTINEL, "sentinel"))
            assert not answer["result"].get("isError"), answer

    await anyio.to_thread.run_sync(write)


def append(contact: str = WATCHED, content: str = "hi") -> dict[str, Any]:
    return {"contact_id": contact, "channel": "sms", "role": "user", "content": content}


@pytest.mark.parametrize("mode", MODES)
async def test_a_listener_hears_itself_another_session_and_list_changes_never_another_contact(
    mode: str, db: str
) -> None:
    server = build_server(Settings(db=db))
    async with subscriber(server, mode) as (listener, heard), Client(server) as writer:
        await call(listener, "append_message", **append(content="by the listener itself"))
        await heard_within(heard, 2)  # the new contact: its transcript changed, and the list did
        assert sorted(heard) == sorted([URI, LIST])
        await call(writer, "append_message", **append(content="by another session"))
        await heard_within(heard, 3)
        await call(writer, "append_message", **append("+31699999999", "another contact"))
        await heard_within(heard, 4)
        assert heard[3] == LIST  # another contact appeared: only the list changed for this listener
        chat = await call(writer, "open_chat", contact_id=WATCHED, channel="voice")
        await heard_within(heard, 5)  # a chat opened changes its contact (it was unheard: found by a review)
        await call(writer, "update_chat", chat_id=chat["id"], status="COMPLETED")
        await heard_within(heard, 6)
        await call(writer, "forget_contact", contact_id=WATCHED)
        await heard_within(heard, 8)
        assert heard[4:6] == [URI, URI] and sorted(heard[6:]) == sorted([URI, LIST]), heard
        await quiet_until_sentinel(heard, 8, sentinel_by(writer))


async def test_an_unsubscribed_initialize_era_session_hears_nothing_more(db: str) -> None:
    server = build_server(Settings(db=db))
    async with subscriber(server, "legacy") as (listener, heard), Client(server) as writer:
        await call(writer, "append_message", **append())
        await heard_within(heard, 2)
        with initialize_era():
            await listener.unsubscribe_resource(URI)
        await call(writer, "append_message", **append(content="after unsubscribing"))
        await quiet_until_sentinel(heard, 2, sentinel_by(writer))


async def test_each_organization_holds_at_most_its_bound_of_listen_streams(db: str) -> None:
    server = build_server(Settings(db=db, max_listens=2))
    async with Client(server) as client:
        async with client.listen(resource_subscriptions=[URI]), client.listen(resource_subscriptions=[URI]):
            with pytest.raises(MCPError) as refused:
                async with client.listen(resource_subscriptions=[URI]):
                    pass
            assert "already has 2 listen streams open, the most allowed" in str(refused.value)
        async with client.listen(resource_subscriptions=[URI]):  # closed streams free their places
            pass


async def test_a_stream_or_a_session_follows_a_bounded_number_of_uris(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "MAX_URIS", 3)
    uris = [f"chatdock://contacts/c{i}/transcript" for i in range(4)]
    async with Client(build_server(Settings(db=db))) as client:
        with pytest.raises(MCPError, match="a listen stream follows at most 3 URIs, got 4; follow the rest on"):
            async with client.listen(resource_subscriptions=uris):
                pass
        async with client.listen(resource_subscriptions=uris[:3]):
            pass
    with initialize_era():
        async with Client(build_server(Settings(db=db)), mode="legacy") as session:
            for uri in [*uris[:3], uris[0]]:  # the same URI again takes no more room
                await session.subscribe_resource(uri)
            with pytest.raises(MCPError, match="a session follows at most 3 URIs; follow the rest on"):
                await session.subscribe_resource(uris[3])
            await session.unsubscribe_resource(uris[0])
            await session.subscribe_resource(uris[3])


async def test_a_subscribed_session_that_ends_frees_its_place_at_once(db: str) -> None:
    """The bound counts live sessions: one that ended is forgotten as it ends, not when the collector (which
    a serving process runs rarely, ops/memory.py) frees it."""
    server = build_server(Settings(db=db, max_listens=2))
    gc.disable()
    try:
        with initialize_era():
            for _ in range(4):  # one after another, each subscribed, each ended
                async with Client(server, mode="legacy") as client:
                    await client.subscribe_resource(URI)
            async with Client(server, mode="legacy") as first, Client(server, mode="legacy") as second:
                await first.subscribe_resource(URI)
                await second.subscribe_resource(URI)
                async with Client(server, mode="legacy") as third:
                    with pytest.raises(MCPError, match="already has 2 subscribed sessions, the most allowed"):
                        await third.subscribe_resource(URI)
    finally:
        gc.enable()


@pytest.mark.process
@pytest.mark.parametrize("mode", MODES)
async def test_a_stdio_listener_hears_other_processes_and_imports_on_the_same_file(mode: str, tmp_path: Path) -> None:
    db = str(tmp_path / "shared.db")
    async with subscriber(stdio_params("--db", db), mode) as (listener, heard):
        await call(listener, "append_message", **append(content="mine"))
        await heard_within(heard, 2)
        with RawStdio(db) as other:  # another desktop client's chatdock on the same file
            answer = other.tool("append_message", append(content="from another process"))
            assert not answer["result"].get("isError"), answer
            await heard_within(heard, 3)
            assert heard[2] == URI
            other.tool("append_message", append("+31600000001", "someone else"))
            await heard_within(heard, 4)
            assert heard[3] == LIST
        lines = tmp_path / "history.jsonl"
        record = {"contact_id": WATCHED, "channel": "sms", "role": "user", "content": "imported",
                  "created_at": "2026-11-01T09:00:00Z"}  # fmt: skip
        lines.write_text(json.dumps(record) + "\n")
        imported = await anyio.to_thread.run_sync(lambda: run_cli("import", str(lines), "--db", db, "-q"))
        assert imported.returncode == 0, imported.stderr
        await heard_within(heard, 5)
        assert heard[4] == URI
        await quiet_until_sentinel(heard, 5, lambda: sentinel_from_another_process(db))


@pytest.mark.process
@pytest.mark.parametrize("mode", MODES)
async def test_http_listeners_hear_their_organization_only_from_any_process(mode: str, tmp_path: Path) -> None:
    db = str(tmp_path / "http.db")
    acme, globex = create_key(db, "acme", "acme"), create_key(db, "globex", "globex")
    with http_server(db) as base:
        async with subscriber(http_transport(base, acme), mode) as (_, heard), http_client(base, globex) as other_org:
            await call(other_org, "append_message", **append(content="globex's own +316..."))
            async with http_client(base, acme) as writer:
                await call(writer, "append_message", **append(content="acme over HTTP"))
            await heard_within(heard, 2)
            assert sorted(heard) == sorted([URI, LIST])  # acme's contact appeared; globex's did not count
            with RawStdio(db, "--org", "acme") as other:  # another process writing for acme
                other.tool("append_message", append(content="acme from another process"))
                await heard_within(heard, 3)
            with RawStdio(db, "--org", "globex") as theirs:
                theirs.tool("append_message", append(content="globex from another process"))
            await quiet_until_sentinel(heard, 3, lambda: sentinel_from_another_process(db, "--org", "acme"))


@pytest.mark.process
def test_an_initialize_era_http_session_belongs_to_the_key_that_opened_it(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    db = str(tmp_path / "sessions.db")
    acme, globex = create_key(db, "acme", "acme"), create_key(db, "globex", "globex")
    with http_server(db, "--max-sessions-per-org", "1") as base:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        hello_v = "2025-11-25"
        hello = {"protocolVersion": hello_v, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
        opened = urllib.request.Request(
            base + "/mcp",
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}).encode(),
            {**headers, "Authorization": f"Bearer {acme}"},
        )
        with urllib.request.urlopen(opened, timeout=10) as response:
            session = response.headers["mcp-session-id"]
            assert session and response.status == 200
        for method, body in [("POST", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}), ("DELETE", None)]:
            hijack = urllib.request.Request(
                base + "/mcp",
                None if body is None else json.dumps(body).encode(),
                {**headers, "Authorization": f"Bearer {globex}", "mcp-session-id": session},
                method=method,
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(hijack, timeout=10)
            assert refused.value.code == 404, (method, refused.value.read())
        still = urllib.request.Request(
            base + "/mcp",
            json.dumps({"jsonrpc": "2.0", "id": 3, "method": "ping"}).encode(),
            {
                **headers,
                "Authorization": f"Bearer {acme}",
                "mcp-session-id": session,
                "mcp-protocol-version": "2025-11-25",
            },
        )
        with urllib.request.urlopen(still, timeout=10) as response:
            assert response.status == 200  # the owner's session was neither used nor deleted by the other key
        with pytest.raises(urllib.error.HTTPError) as full:  # acme holds its one session: a second is refused
            urllib.request.urlopen(opened, timeout=10)
        assert full.value.code == 429 and "already has 1 sessions open" in full.value.read().decode()
        assert full.value.headers["Retry-After"] == "5"
        nested = b'{"jsonrpc": "2.0", "id": 9, "method": "initialize", "params": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        deep = urllib.request.Request(opened.full_url, nested, {**headers, "Authorization": f"Bearer {acme}"})
        with pytest.raises(urllib.error.HTTPError) as unreadable:  # read at the bound too: its error, not a 500
            urllib.request.urlopen(deep, timeout=10)
        assert unreadable.value.code == 400, unreadable.value.read()

        async def sessionless() -> tuple[str, str]:  # a 2026-07-28 client opens no session: it is not held back
            async with http_client(base, acme) as client:
                context = await client.call_tool("get_context", {"contact_id": "+31612345678"})
                return client.protocol_version, str(context.content[0].text)  # type: ignore[union-attr]

        assert asyncio.run(sessionless()) == ("2026-07-28", "(no messages yet)")
        other = urllib.request.Request(opened.full_url, opened.data, {**headers, "Authorization": f"Bearer {globex}"})
        with urllib.request.urlopen(other, timeout=10) as response:  # another organization is not held back
            assert response.status == 200


async def test_a_listen_opened_once_the_server_shuts_down_is_refused_at_once(tmp_path: Path) -> None:
    """A client that listens again right after the server began to shut down (the SDK tells it to re-listen
    after a graceful end) is refused at once, in words that say why; the stream it opened was held until the
    grace ran out, then cut (found by a review). The REST event stream is refused alike (a 503)."""
    server = build_server(Settings(db=str(tmp_path / "closing.db")))
    async with Client(server) as client:  # (listen is the 2026-07-28 era's)
        server.events.close()  # what SIGTERM does (http/app.py)
        with pytest.raises(MCPError, match="chatdock is shutting down; listen again in a moment"):
            async with client.listen(resource_subscriptions=[contact_uri(TRANSCRIPT_URI, "c")]):
                pass
    with pytest.raises(MCPError, match="shutting down"):
        server.events.watch_contact("default", "c", lambda: None)


class RawSession:
    """An `initialize`-era session over HTTP, by hand: its requests, and its event stream opened and cut."""

    def __init__(self, http: Any, key: str) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
        hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
        opened = self.rpc("initialize", hello)
        self.headers |= {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
        http.post("/mcp", headers=self.headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})

    def rpc(self, method: str, params: dict[str, Any]) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        answer = self.http.post("/mcp", headers=self.headers, json=body)
        assert answer.status_code == 200 and '"error"' not in answer.text, answer.text
        return answer

    def cut(self) -> None:
        with self.http.stream("GET", "/mcp", headers={**self.headers, "Accept": "text/event-stream"}) as stream:
            assert stream.status_code == 200  # opened, and cut at once

    def hear(self, until: dict[str, Any], meanwhile: Callable[[], object] = lambda: None) -> list[dict[str, Any]]:
        """Open the event stream, do `meanwhile`, and take what it hears up to `until` (a read that waits past the
        client's timeout fails the test)."""
        heard: list[dict[str, Any]] = []
        with self.http.stream("GET", "/mcp", headers={**self.headers, "Accept": "text/event-stream"}) as stream:
            meanwhile()
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    heard.append(json.loads(line.removeprefix("data:")))
                    if heard[-1] == until:
                        return heard
        raise AssertionError(f"the stream ended before {until}: {heard}")


def updated(uri: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}}


def test_an_initialize_era_session_whose_event_stream_opens_again_hears_what_it_missed(db: str) -> None:
    """A write while a session's event stream (its GET) is closed (a proxy cut it; the SDKs open it again a
    second later) reaches it when the stream opens again: the SDK keeps no events to replay, so the session is
    told then of what changed (found by a review with mcp 1.x: the write was lost, in silence); not of a URI it
    stopped following meanwhile; a session that only listed the resources, of a change of the list."""
    import httpx2

    key = create_key(db, "acme", "gap")
    other, sentinel = contact_uri(TRANSCRIPT_URI, "+442071838750"), contact_uri(TRANSCRIPT_URI, "sentinel")
    listed = {"jsonrpc": "2.0", "method": "notifications/resources/list_changed"}
    with http_server(db) as base, httpx2.Client(base_url=base, timeout=httpx2.Timeout(10)) as http:
        follower, lister = RawSession(http, key), RawSession(http, key)
        follower.rpc("resources/subscribe", {"uri": URI})
        follower.rpc("resources/subscribe", {"uri": other})
        lister.rpc("resources/list", {})
        follower.cut()
        lister.cut()

        def write(contact: str) -> None:
            message = {"contact_id": contact, "channel": "sms", "role": "user", "content": "written while cut off"}
            follower.rpc("tools/call", {"name": "append_message", "arguments": message})

        write(WATCHED)
        write("+442071838750")
        follower.rpc("resources/unsubscribe", {"uri": other})
        assert listed in lister.hear(until=listed)  # new contacts came while it was cut off

        def then() -> None:  # what the stream tells at once comes before the event of a write after it opened
            follower.rpc("resources/subscribe", {"uri": sentinel})
            write("sentinel")

        heard = follower.hear(until=updated(sentinel), meanwhile=then)
        assert updated(URI) in heard and updated(other) not in heard, heard
        assert heard.index(updated(URI)) < heard.index(updated(sentinel))


BURST = 16


def test_an_organizations_event_streams_are_bounded_so_it_cannot_take_every_connection(tmp_path: Path) -> None:
    """Each initialize-era session's event stream (its GET) holds a connection: an organization may hold
    --max-listens-per-org of them at once, as it may listen streams, so that its sessions cannot take every
    connection of the server (a tenant review took all 40 with 40 sessions); another organization's is served."""
    import httpx2

    db = str(tmp_path / "streams.db")
    acme, globex = create_key(db, "acme", "a"), create_key(db, "globex", "g")
    with (
        http_server(db, "--max-listens-per-org", "2") as base,
        httpx2.Client(base_url=base, timeout=httpx2.Timeout(10)) as http,
        contextlib.ExitStack() as held,
    ):
        sessions = [RawSession(http, acme) for _ in range(BURST + 1)]
        port = int(base.rsplit(":", 1)[1])
        sockets = [held.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(BURST)]
        for sock, session in zip(sockets, sessions, strict=False):  # a burst: every GET sent before any answer
            head = {**session.headers, "Accept": "text/event-stream", "Host": f"127.0.0.1:{port}"}
            sock.sendall(
                ("GET /mcp HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n").encode()
            )
        # each takes its place as it arrives, before any is answered (a review of the diff opened 14 of 40 sent
        # at once, when a place was taken only once answered)
        answers = sorted(int(sock.recv(100).split(b" ", 2)[1]) for sock in sockets)
        assert answers == [200, 200] + [429] * (BURST - 2)
        refused = http.get("/mcp", headers={**sessions[BURST].headers, "Accept": "text/event-stream"})
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
        assert "already has 2 event streams open (GET /mcp)" in refused.json()["error"]["message"]
        other = RawSession(http, globex)
        with http.stream("GET", "/mcp", headers={**other.headers, "Accept": "text/event-stream"}) as theirs:
            assert theirs.status_code == 200  # another organization's is served
        held.close()  # acme's streams end: its places are free again, once the server has seen them go
        deadline = time.monotonic() + 10
        while http.get("/healthz").status_code == 200:
            with http.stream("GET", "/mcp", headers={**sessions[BURST].headers, "Accept": "text/event-stream"}) as mine:
                if mine.status_code == 200:
                    break
            assert time.monotonic() < deadline, "a stream's place was never freed"
