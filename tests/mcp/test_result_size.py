"""One result is at most 4 MiB as it is sent, its text as itself (docs/reference.md).

Measured on the bytes that leave chatdock: the body of each HTTP answer from a real `chatdock serve --http`
and each line from a real `chatdock serve` on stdio, in the 2026-07-28 era and in the `initialize` era;
in-process, the result as either serializer writes it. A history of 200 messages of 32,768 `é` (or emoji)
is over 25 MiB of text: `get_context(limit=200)` keeps the newest messages that fit and says it cut.
The SDK wrote the 2026-07-28 HTTP answers with `\\u00e9` escapes (11.25 MiB for 3.75 MiB of UTF-8).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server import _streamable_http_modern as modern_http
from mcp.types import TextContent
from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY, JSONRPCNotification
from pydantic import BaseModel

from chatdock.server.mcp.app import Settings, build_server
from chatdock.server.mcp.results import context_result, page_result, search_result
from chatdock.server.mcp.sdk import answer_in_utf8
from chatdock.storage import Context, Message, MessagePage, NewMessage, Part, Store, open_store
from chatdock.storage.models import SearchHit, SearchPage
from chatdock.storage.sizing import ENVELOPE_BYTES, MAX_RESULT_BYTES, message_bytes, text_bytes
from chatdock.storage.transcript import fit_hits, format_entry, format_line, format_transcript, search_line
from tests.transports import chatdock_command, http_server

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
CONTACT = "+31612345678"
COUNT = 200
START = datetime(2026, 11, 1, tzinfo=UTC)
LONGEST = {"e-acute": "é" * 32_768, "emoji": "😀" * 32_768}  # two and four bytes a character in UTF-8
ESCAPES = (b"\\u00e9", b"\\ud83d", b"\\ude00")  # how `é` and `😀` read when written with ensure_ascii


async def fill(store: Store, count: int = COUNT, metadata: dict[str, Any] | None = None, **fields: Any) -> None:
    """`count` messages of one contact, oldest first, each numbered in its metadata (`n`)."""
    fields = {"contact_id": CONTACT, "channel": "voice", "role": "user", **fields}
    await store.import_messages(
        "default",
        [
            NewMessage(metadata={"n": n, **(metadata or {})}, created_at=START + timedelta(seconds=n), **fields)
            for n in range(count)
        ],
    )


def check_bytes(body: bytes, content: str) -> None:
    """Within the bound, yet not cut far below it, and the text as itself."""
    assert len(body) <= MAX_RESULT_BYTES, f"{len(body) / 2**20:.2f} MiB"
    assert len(body) > MAX_RESULT_BYTES // 2, f"only {len(body) / 2**20:.2f} MiB kept"
    for escape in ESCAPES:
        assert escape not in body
    assert content[:100].encode() in body


def check_cut(structured: dict[str, Any]) -> None:
    """`truncated`, and the newest messages kept, oldest first: the history was cut from its oldest end."""
    assert structured["truncated"] is True
    kept = [message["metadata"]["n"] for message in structured["messages"]]
    assert kept and kept == list(range(COUNT - len(kept), COUNT))
    assert structured["formatted"].count("USER: ") == len(kept)


# --- over HTTP: a real `chatdock serve --http` on 127.0.0.1 ---


class Recorder(httpx2.AsyncBaseTransport):
    """The client's HTTP transport, keeping the raw body of each answer to a `method` request."""

    def __init__(self, method: str) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.method = method
        self.answers: list[tuple[httpx2.Request, bytes]] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        if request.method != "POST" or json.loads(request.content).get("method") != self.method:
            return response
        body = await response.aread()  # an answer's stream ends with the answer, in either era
        self.answers.append((request, body))
        kept = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-length", "transfer-encoding")
        ]
        return httpx2.Response(response.status_code, headers=kept, content=body, request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module", params=sorted(LONGEST))
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A chatdock on HTTP over 200 of the longest messages; read only by the tests."""
    content = LONGEST[request.param]
    db = str(tmp_path_factory.mktemp("sizes") / "chatdock.db")

    async def prepare() -> str:
        async with open_store(db) as store:
            await fill(store, content=content)
            return (await store.create_api_key("default", "sizes")).key

    key = anyio.run(prepare)
    with http_server(db) as base:
        yield {"base": base, "key": key, "content": content}


async def over_http(served: dict[str, str], mode: str, method: str) -> tuple[Recorder, Client]:
    recorder = Recorder(method)
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {served['key']}"}, timeout=httpx2.Timeout(30, read=120), transport=recorder
    )
    # the SDK's client refuses a server-sent event over 1 MiB by default: any large result in the initialize era
    transport = streamable_http_client(
        served["base"] + "/mcp", http_client=http, max_sse_event_size=2 * MAX_RESULT_BYTES
    )
    return recorder, Client(transport, mode=mode)


def era_of(request: httpx2.Request) -> str:
    return request.headers.get("mcp-protocol-version", "")


@pytest.mark.process
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_get_context_over_http_is_within_the_bound_as_sent(served: dict[str, str], mode: str) -> None:
    recorder, client = await over_http(served, mode, "tools/call")
    async with client:
        result = await client.call_tool(
            "get_context", {"contact_id": CONTACT, "limit": COUNT, "include_messages": True}
        )
    assert not result.is_error and result.structured_content is not None
    [(request, body)] = recorder.answers
    assert era_of(request) == (MODERN if mode == "auto" else LEGACY)
    check_bytes(body, served["content"])
    check_cut(result.structured_content)


@pytest.mark.process
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_list_messages_and_the_context_resource_over_http_are_within_the_bound(
    served: dict[str, str], mode: str
) -> None:
    recorder, client = await over_http(served, mode, "tools/call")
    async with client:
        page = await client.call_tool("list_messages", {"contact_id": CONTACT, "limit": COUNT})
    assert not page.is_error and page.structured_content is not None
    assert page.structured_content["next_cursor"] is not None  # the rest is on the next page
    check_bytes(recorder.answers[0][1], served["content"])

    recorder, client = await over_http(served, mode, "resources/read")
    async with client:
        read = await client.read_resource("chatdock://contacts/%2B31612345678/context")
    context = json.loads(read.contents[0].text)  # type: ignore[union-attr]
    check_cut(context)
    check_bytes(recorder.answers[0][1], served["content"])


# --- over stdio: a real `chatdock serve` ---


class StdioLines:
    """`chatdock serve` on stdio, spoken to in JSON-RPC lines; keeps each answer's line as it came."""

    def __init__(self, db: str) -> None:
        self.process = subprocess.Popen(
            [*chatdock_command(), "serve", "--db", db],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(b"")

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def answer(self, request_id: int) -> bytes:
        """The line answering `request_id` (notifications before it are passed over)."""
        while True:
            line = self.lines.get(timeout=60)
            assert line, "chatdock ended without answering"
            if json.loads(line).get("id") == request_id:
                return line

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
async def stdio_db(tmp_path: Path) -> AsyncIterator[str]:
    db = str(tmp_path / "chatdock.db")
    async with open_store(db) as store:
        await fill(store, content=LONGEST["e-acute"])
    yield db


@pytest.mark.process
@pytest.mark.parametrize("era", [MODERN, LEGACY])
async def test_get_context_over_stdio_is_within_the_bound_as_sent(stdio_db: str, era: str) -> None:
    server = StdioLines(stdio_db)
    try:
        params: dict[str, Any] = {
            "name": "get_context",
            "arguments": {"contact_id": CONTACT, "limit": COUNT, "include_messages": True},
        }
        if era == MODERN:  # no handshake: each request says its era
            params["_meta"] = {PROTOCOL_VERSION_META_KEY: MODERN, CLIENT_CAPABILITIES_META_KEY: {}}
        else:
            client_info = {"name": "tests", "version": "0"}
            server.send(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": client_info},
                }
            )
            assert json.loads(server.answer(1))["result"]["protocolVersion"] == LEGACY
            server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        server.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params})
        line = server.answer(2)
    finally:
        server.close()
    check_bytes(line, LONGEST["e-acute"])
    result = json.loads(line)["result"]
    assert not result.get("isError")
    check_cut(result["structuredContent"])


# --- in-process: both eras, both serializers ---


def written(model: BaseModel) -> list[bytes]:
    """`model` as the transports write it: pydantic (stdio, initialize-era HTTP) and json.dumps (2026-07-28
    HTTP, as chatdock has the SDK write it: non-ASCII as itself)."""
    dumped = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return [
        model.model_dump_json(by_alias=True, exclude_none=True).encode(),
        json.dumps(dumped, ensure_ascii=False, separators=(",", ":")).encode(),
    ]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("name", sorted(LONGEST))
async def test_get_context_in_process_is_within_the_bound(tmp_path: Path, mode: str, name: str) -> None:
    async with open_store(str(tmp_path / "chatdock.db")) as store:
        await fill(store, content=LONGEST[name])
        async with Client(build_server(Settings(), store=store), mode=mode) as client:
            result = await client.call_tool(
                "get_context", {"contact_id": CONTACT, "limit": COUNT, "include_messages": True}
            )
            read = await client.read_resource("chatdock://contacts/%2B31612345678/context")
    assert result.structured_content is not None
    check_cut(result.structured_content)
    for body in [*written(result), *written(read)]:
        check_bytes(body, LONGEST[name])


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_get_context_as_text_alone_keeps_what_the_text_alone_can_hold(tmp_path: Path, mode: str) -> None:
    """By default the result is the transcript's text alone, yet it was cut as if it carried the messages and the
    transcript twice besides: a quarter of what fits (31 of 200 long messages, about 1 MiB; found by an agent
    developer's review). Cut for the text alone, it holds about four times as many, within the bound."""
    content = LONGEST["e-acute"]
    async with open_store(str(tmp_path / "chatdock.db")) as store:
        await fill(store, content=content)
        async with Client(build_server(Settings(), store=store), mode=mode) as client:
            alone = await client.call_tool("get_context", {"contact_id": CONTACT, "limit": COUNT})
            whole = await client.call_tool(
                "get_context", {"contact_id": CONTACT, "limit": COUNT, "include_messages": True}
            )
    assert alone.structured_content is None
    [text] = alone.content
    assert isinstance(text, TextContent)
    kept, with_messages = text.text.count("USER: "), len((whole.structured_content or {})["messages"])
    assert kept >= 3 * with_messages and kept < COUNT, (kept, with_messages)
    for body in written(alone):
        check_bytes(body, content)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("tool", ["append_message", "post_as_contact"])
async def test_a_write_with_its_context_is_within_the_bound(tmp_path: Path, mode: str, tool: str) -> None:
    """The longest message written beside the longest history: the context gives up its oldest messages for
    the written one, which the result carries whole, and for its JSON again in the text."""
    content = LONGEST["emoji"]
    async with open_store(str(tmp_path / "chatdock.db")) as store:
        await fill(store, content=content)
        chat = await store.open_chat("default", CONTACT, "voice")
        arguments: dict[str, Any] = (
            {"channel": "voice", "role": "user", "content": content}
            if tool == "append_message"
            else {"chat_id": chat.id, "message": [{"type": "text", "text": content}]}
        )
        async with Client(build_server(Settings(), store=store), mode=mode) as client:
            result = await client.call_tool(tool, {"contact_id": CONTACT, "context_limit": COUNT, **arguments})
    assert not result.is_error and result.structured_content is not None
    context = result.structured_content["context"]
    assert context["truncated"] is True
    assert context["messages"][-1]["id"] == result.structured_content["id"]  # the write is the newest
    assert [m["metadata"]["n"] for m in context["messages"][:-1]] == list(
        range(COUNT - len(context["messages"]) + 1, COUNT)
    )
    for body in written(result):
        check_bytes(body, content)
    [text] = result.content
    assert text.type == "text" and text.text.startswith("{") and text.text.endswith(context["formatted"])


# --- the estimate against every form a message takes in a result ---

QUOTES = '"' * 32_768
WORST: dict[str, dict[str, Any]] = {
    "e-acute": {"content": LONGEST["e-acute"]},
    "emoji": {"content": LONGEST["emoji"]},
    "quotes": {"content": QUOTES},  # two bytes each in JSON, four inside the context resource's JSON text
    "backslashes": {"content": "\\" * 32_768},
    "control characters": {"content": "\x01" * 32_768},  # six bytes each (\u0001), seven inside the resource
    "line breaks": {"content": "a\n\x1c" * 10_922},  # each an indented line in the transcript
    # plain text, which the estimate counts exactly, beside the longest identifiers and timestamps there are
    "long identifiers and parts": {
        "parts": [Part(text="x" * 326, start_timestamp=1.2345678901234567e-7, end_timestamp=1.2345678901234567e20)]
        * 100,
        "contact_id": "😀" * 256,
        "agent_id": "😀" * 256,
    },
    # the most metadata there is, nearly all of it escaped, and hardly any text
    "metadata": {"content": "x", "metadata": {"k": '"' * 8_180}},
}


def added(form: Callable[[list[Any]], list[bytes]], item: Any) -> int:
    """What one `item` adds to a result, in the longest of its written forms (ten of them, framing aside)."""
    return max(len(full) - len(empty) for empty, full in zip(form([]), form([item] * 10), strict=True)) // 10


@pytest.mark.parametrize("case", list(WORST))
async def test_the_estimate_never_counts_a_message_below_what_it_adds_to_a_result(case: str) -> None:
    fields = WORST[case]
    async with open_store(":memory:") as store:
        await fill(store, count=1, **fields)
        [message] = (await store.get_context("default", fields.get("contact_id", CONTACT))).messages

    def context(of: list[Message]) -> Context:
        formatted = format_transcript(of)
        return Context(
            contact_id=message.contact_id, agent_id=message.agent_id, messages=of, formatted=formatted, truncated=False
        )

    def tool(of: list[Message]) -> list[bytes]:
        return written(context_result(context(of), include_messages=True))

    def resource(of: list[Message]) -> list[bytes]:  # the context resource: the context's JSON as a text
        text = context(of).model_dump_json()
        return [json.dumps({"text": text}, ensure_ascii=False).encode(), Part(text=text).model_dump_json().encode()]

    def page(of: list[Message]) -> list[bytes]:
        return written(page_result(MessagePage(messages=of, next_cursor=None)))

    def search(of: list[SearchHit]) -> list[bytes]:
        return written(search_result(SearchPage(hits=of, next_cursor=None)))

    in_context = message_bytes(message) + 2 * text_bytes(format_entry(message))  # as fit_transcript counts it
    assert added(tool, message) <= in_context
    assert added(resource, message) <= in_context
    assert added(page, message) <= message_bytes(message) + text_bytes(format_line(message))  # as list_messages
    hit = SearchHit(**message.model_dump(), snippet=f"[{message.content}]")
    in_search = message_bytes(hit) + text_bytes(hit.snippet) + text_bytes(search_line(hit))
    assert added(search, hit) <= in_search
    assert fit_hits([hit] * COUNT) == (MAX_RESULT_BYTES - ENVELOPE_BYTES) // in_search  # as fit_hits counts it


def test_the_sdk_writes_2026_answers_with_text_as_itself() -> None:
    """The seam in server/mcp/sdk.py is in place once a server is built, and may be put in place again."""
    build_server(Settings())
    answer_in_utf8()
    frame = modern_http._sse_event(JSONRPCNotification(jsonrpc="2.0", method="m", params={"t": "é😀"}))
    assert "é😀".encode() in frame and b"\\u" not in frame


@pytest.mark.parametrize("change", ["json", "_write", "_sse_event"])
def test_the_seam_refuses_to_start_when_the_sdk_writes_its_answers_differently(
    monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    if change == "json":
        monkeypatch.setattr(modern_http, "json", SimpleNamespace(dumps=json.dumps, loads=json.loads))
    else:
        monkeypatch.delattr(modern_http, change)
    with pytest.raises(RuntimeError, match="_streamable_http_modern"):
        build_server(Settings())


@pytest.mark.process
def test_a_lone_surrogate_still_leaves_as_an_escape_over_http(served: dict[str, str]) -> None:
    """UTF-8 cannot carry half an emoji, which Python's JSON parser lets into a request (here its id): the
    answer still goes out, with that half escaped and the rest as itself."""
    request_id = "é\ud83d"
    meta = {PROTOCOL_VERSION_META_KEY: MODERN, CLIENT_CAPABILITIES_META_KEY: {}}
    params = {"name": "get_context", "arguments": {"contact_id": "nobody"}, "_meta": meta}
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}).encode()
    headers = {
        "Authorization": f"Bearer {served['key']}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "get_context",
    }
    request = urllib.request.Request(served["base"] + "/mcp", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = response.read()
    assert '"id":"é\\ud83d"'.encode() in answer
    assert json.loads(answer)["id"] == request_id


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_search_messages_in_process_is_within_the_bound(tmp_path: Path, mode: str) -> None:
    async with open_store(str(tmp_path / "chatdock.db")) as store:
        await fill(store, content=LONGEST["e-acute"])
        async with Client(build_server(Settings(), store=store), mode=mode) as client:
            first = await client.call_tool("search_messages", {"query": "é*", "limit": COUNT})
            assert first.structured_content is not None and first.structured_content["next_cursor"] is not None
            rest = await client.call_tool(
                "search_messages", {"query": "é*", "limit": COUNT, "cursor": first.structured_content["next_cursor"]}
            )
    assert rest.structured_content is not None
    found = [hit["metadata"]["n"] for page in (first, rest) for hit in page.structured_content["hits"]]
    assert len(set(found)) == len(found)  # the next page goes on where this one was cut
    for body in written(first):
        check_bytes(body, LONGEST["e-acute"])
