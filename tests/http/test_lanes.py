"""`Lanes` (server/http/lanes.py): a well-formed POST /chats, or GET of a contact's context, messages, search or
the contacts, is answered without FastAPI, with the answer the route gives; anything else reaches the route as
it came, so every refusal is FastAPI's, word for word.

Each request is sent twice over ASGI: through the lane (with FastAPI behind it, watched) and to FastAPI alone,
both on the same store; the answers are compared."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import pytest
from fastapi import FastAPI, Query, Request
from pydantic import BaseModel
from starlette.types import Message, Receive, Scope, Send

from chatdock.server.http.lanes import Lanes
from chatdock.server.http.rest import BodyLimit, Org, build_rest
from chatdock.server.mcp.events import Events
from chatdock.server.mcp.org import ORG_SCOPE_KEY
from chatdock.storage import NewMessage, Store, Unavailable

Answer = tuple[int, dict[str, str], Any]
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = [(b"content-type", b"application/json")]
ORDER = {"contact_id": "+31612345678", "channel": "whatsapp", "role": "user", "content": "Where is my order?"}


class Watched:
    """An ASGI app that counts the requests reaching it."""

    def __init__(self, app: ASGI) -> None:
        self.app = app
        self.seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen += 1
        await self.app(scope, receive, send)


async def ask(
    app: ASGI,
    body: bytes | list[bytes],
    headers: list[tuple[bytes, bytes]],
    path: str = "/chats",
    method: str = "POST",
    query: bytes = b"",
    whole: bool = True,
) -> Answer:
    """`body` (in these chunks, when a list) to `app` as acme's request; (status, headers, JSON answer). Unless
    the body is sent `whole`, the client goes away after its chunks."""
    chunks = body if isinstance(body, list) else [body]
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1 or not whole}
        for index, chunk in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8765),
        ORG_SCOPE_KEY: "acme",
    }
    await app(scope, receive, send)
    start = sent[0]
    answer_headers = {name.decode(): value.decode() for name, value in start["headers"]}
    return start["status"], answer_headers, json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def apps(store: Store, read_only: bool = False) -> tuple[Lanes, Watched, ASGI]:
    """The lanes with FastAPI behind them (watched), and FastAPI alone, over `store`."""
    lane = Lanes(build_rest(lambda: store, read_only, Events()))
    behind = Watched(lane.rest)
    lane.rest = behind  # type: ignore[assignment]
    return lane, behind, build_rest(lambda: store, read_only, Events())


def same_message(one: Any, other: Any) -> None:
    """Two answers for two appends of the same request: alike but for the id and the time."""
    assert {**one, "id": "", "created_at": ""} == {**other, "id": "", "created_at": ""}


async def test_a_well_formed_append_is_answered_by_the_lane_as_the_route_answers_it(store: Store) -> None:
    lane, behind, route = apps(store)
    for headers in (
        JSON,
        [(b"content-type", b"application/json; charset=utf-8")],
        [(b"content-type", b"Application/JSON")],
    ):
        status, answer_headers, answer = await ask(lane, json.dumps(ORDER).encode(), headers)
        expected_status, expected_headers, expected = await ask(route, json.dumps(ORDER).encode(), headers)
        assert status == expected_status == 201
        assert answer_headers == {**expected_headers, "content-length": answer_headers["content-length"]}
        assert answer_headers["content-type"] == "application/json"
        same_message(answer, expected)
    # in chunks, with a context, with every field
    full = {**ORDER, "agent_id": "agent-7", "metadata": {"provider_message_id": "wamid.1"}, "context_limit": 5}
    text = json.dumps(full).encode()
    status, _, answer = await ask(lane, [text[:10], text[10:30], text[30:]], JSON)
    assert status == 201 and answer["metadata"] == {"provider_message_id": "wamid.1"}
    assert [m["content"] for m in answer["context"]["messages"]][-1] == "Where is my order?"
    # the retried webhook: 200 with the first copy, from the lane as from the route
    again_status, _, again = await ask(lane, text, JSON)
    route_status, _, from_route = await ask(route, text, JSON)
    assert again_status == route_status == 200
    assert again["id"] == from_route["id"] == answer["id"] and again["deduplicated"] is True
    assert behind.seen == 0  # FastAPI was never asked


async def test_the_lane_keeps_an_idempotency_key_s_promise(store: Store) -> None:
    lane, behind, route = apps(store)
    keyed = [*JSON, (b"idempotency-key", b"3b0e6a57-4f53-4d71-9d43-5bd0b0b0a1c2")]
    first = await ask(lane, json.dumps(ORDER).encode(), keyed)
    again = await ask(route, json.dumps(ORDER).encode(), keyed)  # the retry reaching FastAPI: the first answer
    once_more = await ask(lane, json.dumps(ORDER).encode(), keyed)
    assert first[0] == again[0] == once_more[0] == 201
    assert first[2] == again[2] == once_more[2]
    reused = await ask(lane, json.dumps({**ORDER, "content": "something else"}).encode(), keyed)
    assert reused[0] == 409 and "was first sent with another request" in reused[2]["message"]
    assert behind.seen == 0


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"contact_id": "+31612345678", "channel": "sms"', JSON),  # not JSON
        (b"", JSON),  # no body
        (b"[]", JSON),  # not an object
        (json.dumps({k: v for k, v in ORDER.items() if k != "role"}).encode(), JSON),  # a field missing
        (json.dumps({**ORDER, "colour": "red"}).encode(), JSON),  # a field no one takes
        (json.dumps({**ORDER, "context_limit": "many"}).encode(), JSON),  # a field of the wrong type
        (b'{"contact_id": "+31612345678", "channel": "sms", "role": "user", "content": NaN}', JSON),
        (json.dumps(ORDER).encode(), []),  # no content type
        (json.dumps(ORDER).encode(), [(b"content-type", b"text/plain")]),
        (json.dumps(ORDER).encode(), [(b"content-type", b"application/vnd.api+json")]),
        (json.dumps(ORDER).encode(), [*JSON, *JSON]),
        (json.dumps(ORDER).encode(), [*JSON, (b"idempotency-key", b"has space")]),
        (json.dumps(ORDER).encode(), [*JSON, (b"idempotency-key", b"")]),
        (json.dumps(ORDER).encode(), [*JSON, (b"idempotency-key", b"k" * 256)]),
        (json.dumps(ORDER).encode(), [*JSON, (b"idempotency-key", b"a"), (b"idempotency-key", b"b")]),
        (json.dumps(ORDER).encode(), [*JSON, (b"idempotency-key", b"caf\xe9")]),
        ("\ufeff".encode() + json.dumps(ORDER).encode(), JSON),  # a byte-order mark
    ],
    ids=[
        "broken-json", "empty", "array", "missing-field", "extra-field", "wrong-type", "nan", "no-content-type",
        "text", "json-suffix", "two-content-types", "key-with-space", "empty-key", "long-key", "two-keys",
        "latin-1-key", "bom",
    ],
)  # fmt: skip
async def test_what_the_lane_does_not_take_whole_reaches_fastapi_as_it_came(
    store: Store, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    lane, behind, route = apps(store)
    status, _, answer = await ask(lane, body, headers)
    expected_status, _, expected = await ask(route, body, headers)
    assert behind.seen == 1
    assert status == expected_status
    if status in (200, 201):
        same_message(answer, expected)
    else:
        assert answer == expected and set(answer) == {"error", "message"}
        assert status in (400, 409, 422)


async def test_a_refusal_of_the_store_s_is_the_route_s_refusal(store: Store) -> None:
    lane, behind, route = apps(store)
    for bad in ({**ORDER, "channel": "Whats App"}, {**ORDER, "role": "robot"}, {**ORDER, "context_limit": 0}):
        answer = await ask(lane, json.dumps(bad).encode(), JSON)
        assert answer[0] == 422 and answer[2] == (await ask(route, json.dumps(bad).encode(), JSON))[2]
    assert behind.seen == 0  # well formed, refused by the store's rules: answered by the lane, in the same words


async def test_other_routes_and_a_read_only_server_go_to_fastapi(store: Store) -> None:
    lane, behind, _ = apps(store)
    status, _, _ = await ask(lane, json.dumps({"channel": "voice"}).encode(), JSON, "/contacts/%2B31612345678/chats")
    assert status == 201 and behind.seen == 1
    read_only, behind, _ = apps(store, read_only=True)
    status, _, answer = await ask(read_only, json.dumps(ORDER).encode(), JSON)
    assert status == 405 and answer["error"] == "Method not allowed" and behind.seen == 1


class Broken:
    async def append_message(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the append path")


async def test_a_bug_is_a_json_500_logged_and_raised_to_the_server(caplog: pytest.LogCaptureFixture) -> None:
    broken: Any = Broken()
    lane = Lanes(build_rest(lambda: broken, False, Events()))

    async def raising(scope: Scope, receive: Receive, send: Send) -> None:
        with pytest.raises(RuntimeError, match="a bug in the append path"):  # raised on, as FastAPI raises it
            await lane(scope, receive, send)

    with caplog.at_level(logging.ERROR, "chatdock.http"):
        status, headers, answer = await ask(raising, json.dumps(ORDER).encode(), JSON)
    assert status == 500 and headers["content-type"] == "application/json"
    assert answer["error"] == "Internal error" and "Idempotency-Key is safe" in answer["message"]
    assert "POST /chats failed unexpectedly" in caplog.text and "RuntimeError" in caplog.text


# --- the reads ---

ANN = "%2B31612345678"  # percent-encoded, as a client sends a phone number
READS = [
    ("/chats/context", f"contact_id={ANN}"),
    ("/chats/context", f"contact_id={ANN}&limit=2&roles=user,assistant&channels=whatsapp&max_chars=500"),
    ("/chats/context", f"contact_id={ANN}&agent_id="),  # a blank value
    ("/chats/context", f"contact_id={ANN}&limit=-1"),  # well formed, refused by the store
    ("/chats/context", "contact_id=%2B31699999999"),  # nobody
    ("/chats", f"contact_id={ANN}&limit=1"),
    ("/chats/search", "q=order&limit=5"),
    ("/chats/search", f"q=%22my%20order%22&contact_id={ANN}&channel=whatsapp&role=user"),
    ("/chats/search", "q="),  # an empty query: the store's refusal
    ("/chats/search", "q=where+is"),
    ("/chats/search", "q=%FF"),  # not UTF-8: read as FastAPI reads it
    ("/chats/context", f"contact%5Fid={ANN}"),  # a percent-encoded name
    ("/contacts", "limit=3"),
    ("/contacts", ""),
]
LEFT = [
    ("/chats/context", ""),  # contact_id missing
    ("/chats/context", f"contact_id={ANN}&limit=abc"),
    ("/chats/context", f"contact_id={ANN}&limit="),
    ("/chats/context", f"contact_id={ANN}&limit=05"),
    ("/chats/context", f"contact_id={ANN}&limit=%2B5"),
    ("/chats/context", f"contact_id={ANN}&limit=%205"),
    ("/chats/context", f"contact_id={ANN}&limit=5.0"),
    ("/chats/context", f"contact_id={ANN}&max_chars=1e3"),
    ("/chats/context", f"contact_id={ANN}&contact_id=%2B31699999999"),  # given twice
    ("/chats/context", f"contact_id={ANN}&unknown=1"),  # a name no parameter has: FastAPI refuses it
    ("/chats", f"contact_id={ANN}&limit=1&limit=2"),
    ("/chats/search", "limit=5"),  # q missing
    ("/contacts", "limit=99999999999999999999"),
]


async def reads_on(store: Store) -> None:
    for content in ("Where is my order?", "It left the warehouse.", "Thanks!"):
        await store.append_message("acme", NewMessage.model_validate({**ORDER, "content": content}))


@pytest.mark.parametrize(
    ("path", "query", "taken"), [(*read, True) for read in READS] + [(*read, False) for read in LEFT]
)
async def test_a_read_is_answered_as_the_route_answers_it_by_the_lane_when_well_formed(
    store: Store, path: str, query: str, taken: bool
) -> None:
    await reads_on(store)
    lane, behind, route = apps(store)
    answer = await ask(lane, b"", [], path, "GET", query.encode())
    assert answer == await ask(route, b"", [], path, "GET", query.encode())
    assert answer[1]["content-type"] == "application/json"
    assert behind.seen == (0 if taken else 1)


async def test_routes_with_more_than_plain_parameters_have_no_lane(store: Store) -> None:
    lane, _, _ = apps(store)
    assert sorted(lane.reads) == ["/chats", "/chats/context", "/chats/search", "/contacts"]
    await reads_on(store)
    lane, behind, _ = apps(store)
    status, _, answer = await ask(lane, b"", [], "/contacts/+31612345678", "GET")  # a path parameter
    assert status == 200 and answer["contact_id"] == "+31612345678" and behind.seen == 1


# --- what FastAPI and the lanes must agree on besides ---


async def test_a_streamed_body_over_the_limit_is_a_413_whichever_reads_it(store: Store) -> None:
    lane, behind, route = apps(store)
    chunks = [b'{"content": "' + b"x" * (1024 * 1024)] * 5
    for headers in (JSON, []):  # read by the lane; left to FastAPI
        answer = await ask(BodyLimit(lane), chunks, headers)
        assert answer[0] == 413 and answer[2]["error"] == "Payload too large"
        assert answer == await ask(BodyLimit(route), chunks, headers)
    assert behind.seen == 1


async def test_a_client_gone_while_the_lane_reads_gets_what_fastapi_answers(store: Store) -> None:
    lane, behind, route = apps(store)
    text = json.dumps(ORDER).encode()
    answer = await ask(lane, [text[:20]], JSON, whole=False)
    assert answer == await ask(route, [text[:20]], JSON, whole=False) and answer[0] == 400
    assert behind.seen == 1


async def test_a_lane_puts_the_route_in_the_scope_as_fastapi_does(store: Store) -> None:
    lane, _, _ = apps(store)
    scopes: list[Scope] = []

    async def keeping(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await lane(scope, receive, send)

    await ask(keeping, json.dumps(ORDER).encode(), JSON)
    await ask(keeping, b"", [], "/chats/context", "GET", f"contact_id={ANN}".encode())
    assert [scope["route"].path for scope in scopes] == ["/chats", "/chats/context"]


def closed() -> Store:
    raise Unavailable("the store is not open yet; try again in a moment")


async def test_a_read_before_the_store_is_open_is_the_route_s_503() -> None:
    lane = Lanes(build_rest(closed, False, Events()))
    behind = Watched(lane.rest)
    lane.rest = behind  # type: ignore[assignment]
    query = f"contact_id={ANN}".encode()
    answer = await ask(lane, b"", [], "/chats/context", "GET", query)
    assert answer[0] == 503
    assert answer == await ask(build_rest(closed, False, Events()), b"", [], "/chats/context", "GET", query)
    assert behind.seen == 0


class Named(BaseModel):
    """An answer of one field, for routes of the test's own."""

    contact_id: str


async def test_a_route_whose_answer_fastapi_writes_its_own_way_has_no_lane() -> None:
    app = FastAPI()

    @app.get("/a", response_model=Named, response_model_exclude_none=True)
    async def a(organization: Org, limit: int = 5) -> Named:
        return Named(contact_id=str(limit))

    @app.get("/b", response_model=Named)
    async def b(organization: Org, limit: Annotated[int, Query(ge=1)] = 5) -> Named:
        return Named(contact_id=str(limit))

    @app.get("/c", response_model=Named)
    async def c(organization: Org, limit: int = Query(7)) -> Named:
        return Named(contact_id=f"{organization} {limit}")

    @app.get("/d", response_model=Named)
    async def d(organization: Org, request: Request) -> Named:  # a lane would not pass the request
        return Named(contact_id=request.url.path)

    lanes = Lanes(app)
    assert sorted(lanes.reads) == ["/c"]  # an option of the answer's, a constraint, the request: FastAPI's
    assert (await ask(lanes, b"", [], "/c", "GET"))[2] == {"contact_id": "acme 7"}  # the default, not its Query
    assert (await ask(lanes, b"", [], "/d", "GET"))[:3:2] == (200, {"contact_id": "/d"})
