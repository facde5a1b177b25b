"""`AppendLane`: POST /chats, the route every webhook and every voice turn calls, answered without FastAPI's
per-request machinery when its request is well formed.

FastAPI resolves a route's dependencies, parses the body with `json` and validates the result, all anew for
each request: 230 us of a REST append's 340 in process, twice the store's append (docs/performance.md). The
lane reads the same request the route would: the body as `AppendRequest`, validated by pydantic from its bytes
in one pass, the `Idempotency-Key` by the store's own rule, the organization from the scope (`ApiKeyAuth` put it
there), and answers with the same function (`rest.append`).

Anything it does not take whole goes to FastAPI as it came (the body replayed): another route, another content
type, a body or key that does not validate. Every refusal of a malformed request is then FastAPI's, in one
shape and with one text; the lane only ever answers a request the route would have accepted, with the route's
answer.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.routing import Match
from starlette.types import Message, Receive, Scope, Send

from chatdock.server.http.rest import append, failed_unexpectedly, refusal
from chatdock.server.mcp.org import ORG_SCOPE_KEY
from chatdock.storage import ChatdockError, InvalidInput, Store
from chatdock.storage import validation as check
from chatdock.storage.requests import AppendRequest

PATH = "/chats"
IDEMPOTENCY_HEADER = b"idempotency-key"


class AppendLane:
    """ASGI, in front of the REST app `rest`: a well-formed POST /chats answered at once (see the module)."""

    def __init__(self, rest: FastAPI, the_store: Callable[[], Store]) -> None:
        self.rest = rest
        self.the_store = the_store
        probe = {"type": "http", "method": "POST", "path": PATH, "root_path": ""}
        # the route's object, put in the scope as FastAPI's router would (the request's metrics and span name
        # its template); none when the app has no POST /chats (--read-only): then nothing takes the lane
        self.route = next((r for r in rest.router.routes if r.matches(probe)[0] is Match.FULL), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.route is None
            or scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path") != PATH
            or ORG_SCOPE_KEY not in scope
        ):
            await self.rest(scope, receive, send)
            return
        found = _key(scope)
        if found is None:
            await self.rest(scope, receive, send)
            return
        (key,) = found
        body, last = await _body(receive)
        request = _read(body) if last is not None else None
        if request is None:
            await self.rest(scope, _replay(body, last, receive), send)
            return
        scope["route"] = self.route
        try:
            answer = await append(self.the_store(), scope[ORG_SCOPE_KEY], request, key)
        except ChatdockError as exc:
            answer = refusal(exc)
        except Exception as exc:  # as FastAPI's error middleware does: answered, then raised for the server
            await failed_unexpectedly("POST", PATH, exc)(scope, receive, send)
            raise
        await answer(scope, receive, send)


def _key(scope: Scope) -> tuple[str | None] | None:
    """The request's Idempotency-Key (None without one), or None for a request the lane leaves to FastAPI: a
    body not declared JSON, a key given twice or one FastAPI would refuse (the store's rule, which it shares)."""
    key: str | None = None
    declared = False
    for name, value in scope.get("headers", ()):
        if name == IDEMPOTENCY_HEADER:
            if key is not None:
                return None
            try:
                key = check.idempotency_key(value.decode("latin-1"))
            except InvalidInput:
                return None
        elif name == b"content-type":
            if declared or value.split(b";", 1)[0].strip().lower() != b"application/json":
                return None
            declared = True
    return (key,) if declared else None


async def _body(receive: Receive) -> tuple[bytes, Message | None]:
    """The request's body and its last message; None for that when the client went away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), message


def _read(body: bytes) -> AppendRequest | None:
    try:
        return AppendRequest.model_validate_json(body)
    except ValidationError:
        return None


def _replay(body: bytes, last: Message | None, receive: Receive) -> Receive:
    """`receive` with the body the lane read given again first (whole, in one message)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            if last is None:  # the client went away while the lane read: FastAPI hears so too
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
