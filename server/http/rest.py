"""The REST routes (docs/rest.md): the Chats API that webhook handlers and back ends already call.

Each route translates its request and calls the same `Store` method as the tool of the same name, so the
rules and their error texts are one; its writes reach listeners like a tool's (the store announces them).
The keys are checked before a route runs (`http.ApiKeyAuth`), which puts the organization in the scope.

FastAPI does the routing, the argument validation and the OpenAPI 3.1 document, all from the pydantic models
the tools and the store use (storage/models.py): no shape is written twice. The most called routes are also
answered without FastAPI's per-request work when their request is well formed (lanes.py), by the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import quote, unquote

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from chatdock.server.history.transfer import export_lines
from chatdock.server.http.bodies import json_body
from chatdock.server.http.inspector import add_pages
from chatdock.server.http.openapi import WITH_BODY, answers, insufficient_scope, read_only_key, strict
from chatdock.server.mcp.events import SHUTTING_DOWN, Events
from chatdock.server.mcp.org import MAY_WRITE_SCOPE_KEY, ORG_SCOPE_KEY
from chatdock.storage import (
    AppendedMessage,
    Chat,
    ChatdockError,
    ChatList,
    Conflict,
    Context,
    DeletedMessage,
    InvalidInput,
    MessagePage,
    NotFound,
    Store,
    Unavailable,
)
from chatdock.storage import validation as check
from chatdock.storage.errors import NO_ROUTE, chat_not_found, stored_unanswered
from chatdock.storage.keys import prefix_of
from chatdock.storage.models import (
    ChatWithMessages,
    ContactInfo,
    ContactPage,
    ForgetResult,
    LinkResult,
    SearchPage,
    as_message,
)
from chatdock.storage.requests import AliasRequest, AppendRequest, OpenChatRequest, PostRequest, UpdateChatRequest

logger = logging.getLogger("chatdock.http")


class Identity(BaseModel):
    """What GET /whoami answers: whom the request's key or token speaks for (the inspector's header shows it)."""

    org: str = Field(description="The organization of the key or token")
    key_prefix: str | None = Field(
        description="The key's visible prefix, as `chatdock keys list` shows it (never the key); null for a token"
    )
    can_write: bool = Field(
        description="Whether a write with it is taken here: false for a key created with --read-only, for a token "
        "without chatdock:write, and on a server started with --read-only"
    )


MAX_BODY_BYTES = 4 * 1024 * 1024
ROUTE_PREFIXES = ("/chats", "/contacts", "/orgs", "/whoami")  # behind the key, like /mcp
KEEP_ALIVE_SECONDS = 15.0  # an event stream's comment line when nothing happened
# one server-sent event of GET /contacts/{contact_id}/events: its name, and the contact as the stream named it
EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {"enum": ["ready", "changed"]},
        "data": {"type": "string", "contentMediaType": "application/json", "description": '{"contact_id": "..."}'},
    },
    "required": ["event", "data"],
}

# one line of GET /contacts/{contact_id}/export (storage/history.py has every field)
EXPORT_MEDIA_TYPE = "application/x-ndjson"
EXPORT_LINE_SCHEMA = {
    "type": "object",
    "properties": {"kind": {"enum": ["chat", "alias", "message"]}, "org": {"type": "string"}},
    "required": ["kind", "org"],
    "description": "one chat, alias or message a line, with every field, as `chatdock export` writes it",
}


# a retried request with the same key gets the first answer, across replicas (Store: the key names the id)
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=check.IDEMPOTENCY_KEY_CHARS,
        pattern=check.IDEMPOTENCY_KEY_PATTERN,
        description="a key of your own per request (a UUID): a retry with the same key gets the first answer, "
        "stored once, on any replica; the same key with another request is a 409",
    ),
]

_STATUS: list[tuple[type[ChatdockError], int, str]] = [
    (InvalidInput, 422, "Invalid arguments"),
    (NotFound, 404, "Not found"),
    (Conflict, 409, "Conflict"),
    (Unavailable, 503, "Service unavailable"),
]


LISTENERS_RETRY_AFTER = 5  # seconds a listener refused at its organization's bound is asked to wait


def is_write(route: BaseRoute) -> bool:
    """Whether a route writes: it takes a method besides GET (and the HEAD a GET answers)."""
    return bool(set(getattr(route, "methods", None) or ()) - {"GET", "HEAD"})


def problem(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape of every route: `{"error": "...", "message": "..."}`."""
    return JSONResponse({"error": error, "message": message}, status_code=status, headers=headers)


def status_of(exc: ChatdockError) -> tuple[int, str]:
    """The HTTP status and `error` a refusal of the store's is answered with (and the client raises)."""
    for kind, status, error in _STATUS:
        if isinstance(exc, kind):
            return status, error
    return 400, "Bad request"


# query parameters that name a contact or an agent: a phone number there starts with '+'
_IDENTIFIER_PARAMETERS = (b"contact_id", b"agent_id")


def unreadable(cause: BaseException | None, detail: str) -> str:
    """Why a body that is not JSON's text could not be read, and what to send instead."""
    if isinstance(cause, UnicodeDecodeError):
        return (
            f"the body is not UTF-8 text (byte 0x{cause.object[cause.start]:02x} at offset {cause.start}); send the "
            "JSON object encoded as UTF-8"
        )
    if isinstance(cause, RecursionError):
        return (
            "the body's JSON nests too deep to be read; send a JSON object of the route's fields (metadata may "
            f"nest at most {check.MAX_METADATA_DEPTH} levels deep)"
        )
    return f"the body could not be read ({detail}); send a JSON object"


def refusal(exc: ChatdockError, headers: dict[str, str] | None = None, query: bytes = b"") -> JSONResponse:
    """A refusal of the store's, answered; when it refuses an id that the query string (`query`, raw) gives
    starting with '+', which a query string reads as a space, with what to write instead."""
    message = str(exc)
    if b"=+" in query and isinstance(exc, InvalidInput):
        for pair in query.split(b"&"):
            name, _, value = pair.partition(b"=")
            if name in _IDENTIFIER_PARAMETERS and value.startswith(b"+") and message.startswith(name.decode() + " "):
                message += (
                    f" ({name.decode()} starts with '+', which a query string reads as a space: write the plus "
                    f"sign as %2B, {name.decode()}=%2B{value[1:].decode('latin-1')})"
                )
                break
    if isinstance(exc, Unavailable) and headers is None:
        headers = {"Retry-After": "1"}  # a database restarting, a lock held: soon, not now
    return problem(*status_of(exc), message, headers)


def failed_unexpectedly(method: str, path: str, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered in the errors' JSON shape (never a plain-text 500)."""
    logger.error("%s %s failed unexpectedly", method, path, exc_info=exc)
    return problem(
        500,
        "Internal error",
        "chatdock failed unexpectedly (the server's log has the details); if this was a write, whether it was "
        "stored is unknown: retrying with the same metadata.provider_message_id or Idempotency-Key is safe",
    )


async def org_of(request: Request) -> str:
    """The organization of the request's key (ApiKeyAuth put it in the scope); async, so FastAPI calls it in
    place instead of sending it to a worker thread (a sync dependency costs each request a thread hop). Every
    route takes it, so it refuses what no route should take too (`_only_known_query`)."""
    dependant = getattr(request.scope.get("route"), "dependant", None)  # the route's parameters
    if dependant is not None:
        if request.scope.get("query_string"):
            _only_known_query(request, dependant)
        _one_idempotency_key(request, dependant)
    return str(request.scope[ORG_SCOPE_KEY])


def _one_idempotency_key(request: Request, dependant: Dependant) -> None:
    """An Idempotency-Key header given twice, or empty, is refused: one of two was used, whichever the server
    took, and an empty one was taken for none (a client that sends `upstream_id || ''` lost its retries'
    protection without a word)."""
    if all(field.alias != "Idempotency-Key" for field in dependant.header_params):
        return  # a route that takes no key: the header means nothing to it, as any other unknown header
    given = [value for name, value in request.scope.get("headers", ()) if name == b"idempotency-key"]
    if len(given) > 1:
        raise InvalidInput(f"Idempotency-Key is given {len(given)} times; give it once")
    if given and not given[0].strip():
        raise InvalidInput(
            "Idempotency-Key is empty; give a key of your own for the request (a UUID), or leave the header out"
        )


def _only_known_query(request: Request, dependant: Dependant) -> None:
    """A query parameter the route does not take is an error, as a tool's unknown argument is, and so is one
    given twice: `GET /chats/context?chatId=...` answered the contact's whole history, other chats included
    (`chat_id` is the name), and `contact_id=a&contact_id=b` read b's."""
    taken = [field.alias for field in dependant.query_params]
    given = [name for name, _ in request.query_params.multi_items()]
    unknown = sorted({name for name in given if name not in taken})
    twice = sorted({name for name in given if given.count(name) > 1 and name in taken})
    problems = [f"{name!r} is not a parameter of this route" for name in unknown]
    problems += [f"{name} is given {given.count(name)} times; give it once" for name in twice]
    if problems:
        takes = f"it takes {', '.join(taken)}" if taken else "it takes none"
        raise InvalidInput(f"{'; '.join(problems)} ({takes})")


Org = Annotated[str, Depends(org_of)]

ContactId = Annotated[str, Path(description="The contact's id, percent-encoded (%2B31612345678, a%2Fb)")]

# A contact's id, an alias or an organization's name may hold a `/`, which a path carries percent-encoded
# (%2F); the server decodes the path before routing, so /contacts/a%2Fb/chats would be routed as
# /contacts/a/b/chats, and /contacts/x%2Fchats as contact x's chats. EncodedSlashes, the outermost layer of
# the HTTP app (app.py), routes on the path as it was sent: a `/` that was %2F becomes SLASH (a NUL, which no
# identifier may hold) in the path every layer sees (the key check, the lanes, the routes, the metrics' route
# names), and SlashedRoute turns it back in the path parameters the route is given.
SLASH = "\x00"
SLASHED = "chatdock.slashed"


class EncodedSlashes:
    """ASGI: a path with %2F in it is routed segment by segment as it was sent (see above)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and b"%2f" in raw.lower():
            segments = [unquote(part) for part in raw.decode("utf-8", "replace").split("/")]
            if not any(SLASH in segment for segment in segments):  # else as before: a NUL is refused anyway
                path = "/".join(segment.replace("/", SLASH) for segment in segments)
                if len(path) > 1 and path.endswith("/"):  # not a redirect to a path holding SLASH
                    path = path.rstrip("/")
                scope = {**scope, "path": path, SLASHED: True}
        await self.app(scope, receive, send)


class SlashedRoute(APIRoute):
    """A REST route whose path parameters get back the `/` EncodedSlashes routed as SLASH."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if SLASHED in scope and "path_params" in child:
            child["path_params"] = {
                name: value.replace(SLASH, "/") if isinstance(value, str) else value
                for name, value in child["path_params"].items()
            }
        return match, child


def build_rest(
    the_store: Callable[[], Store], read_only: bool, events: Events, oauth_issuer: str | None = None
) -> FastAPI:
    """The REST routes as a FastAPI app (with /openapi.json and /docs); with `oauth_issuer` (--oauth-issuer), the
    document says that its access tokens are taken too, and the 403 a token without the needed scope gets.

    FastAPI's own telemetry stays off: a REST call's span is observe.py's, which begins before the key is
    checked (a 401 has one too), names no contact (FastAPI's records the raw path and query, contact ids
    included) and costs a third of FastAPI's; its counts and logs are /metrics' and chatdock's log's."""
    app = FastAPI(
        title="chatdock",
        version="0.1.0",
        summary="Cross-channel conversation memory for agents: the Chats API routes.",
        docs_url=None,
        redoc_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # no 307 from /contacts/a%2541/ to the decoded /contacts/a%41 (another contact: a DELETE follows it)
        redirect_slashes=False,
    )
    app.router.route_class = SlashedRoute

    def document() -> dict[str, Any]:
        """The OpenAPI document, with the Bearer key every route takes."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            made = strict(get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes))
            schemes = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a key from `chatdock keys create`"}
            }
            if oauth_issuer is not None:
                schemes["token"] = {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": f"an access token of {oauth_issuer} for chatdock's URL; scope chatdock:read "
                    "allows the reads, chatdock:write the writes (docs/oauth.md)",
                }
            for operations in made["paths"].values():
                for method, operation in operations.items():
                    if oauth_issuer is not None:
                        operation["responses"]["403"] = insufficient_scope()
                    elif method != "get":
                        operation["responses"]["403"] = read_only_key()
            made.setdefault("components", {})["securitySchemes"] = schemes
            made["security"] = [{name: []} for name in schemes]
            app.openapi_schema = made
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        kind = request.headers.get("content-type")
        declared = kind is not None and _json_media(kind)  # FastAPI reads a body as JSON only when declared so
        if not declared and any(error.get("type") == "json_invalid" or _unread_body(error) for error in errors):
            sent = f"declared as {kind}" if kind else "sent without a Content-Type"
            return problem(400, "Invalid JSON", f"the body is {sent}; send a JSON object as application/json")
        if any(error.get("type") == "json_invalid" for error in errors):
            return problem(400, "Invalid JSON", "the body is not valid JSON; send a JSON object")
        if any(tuple(error.get("loc", ())) == ("body",) and error.get("type") == "missing" for error in errors):
            return problem(400, "Invalid JSON", "the body is empty; send a JSON object")
        return problem(422, "Invalid arguments", check.explain(_located(errors)))

    writes: list[BaseRoute] = []  # read-only: the write routes this server does not have (filled below)

    def not_allowed(request: Request) -> JSONResponse:
        allowed = ", ".join(allowed_methods(app, request.scope))
        said = (
            f"this server is read-only (--read-only): it takes no {request.method} here"
            if read_only_write(request, exactly=True)
            else f"{request.method} is not served here"
        )
        said += f"; this path takes {allowed}" if allowed else ""
        return problem(405, "Method not allowed", said, headers={"Allow": allowed})

    def read_only_write(request: Request, exactly: bool) -> bool:
        """Whether a write route this server has not (--read-only) is on the request's path; `exactly`: for the
        request's method."""
        scope = request.scope if exactly else {**request.scope, "method": "\0"}  # else the path alone decides
        return any(route.matches(scope)[0] is (Match.FULL if exactly else Match.PARTIAL) for route in writes)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own refusals (a body it cannot parse, an unknown route or method) in the same shape."""
        if exc.status_code == 400:
            return problem(400, "Invalid JSON", unreadable(exc.__cause__, str(exc.detail)))
        if exc.status_code == 404:
            if read_only_write(request, exactly=False):  # a 405, as without --read-only: the path exists
                return not_allowed(request)
            return problem(404, "Not found", NO_ROUTE)
        if exc.status_code == 413:  # a streamed body that passed the limit while FastAPI read it (BodyLimit)
            return too_large()
        if exc.status_code == 405:
            return not_allowed(request)
        return problem(exc.status_code, HTTPStatus(exc.status_code).phrase, str(exc.detail))

    @app.exception_handler(ChatdockError)
    async def refused(request: Request, exc: ChatdockError) -> JSONResponse:
        return refusal(exc, query=request.scope.get("query_string", b""))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return failed_unexpectedly(request.method, request.url.path, exc)

    add_pages(app, read_only)

    # --- reading ---

    @app.get(
        "/chats/context",
        response_model=Context,
        summary="get_context: the last messages and the transcript",
        responses=answers(404),
    )
    async def get_context(
        organization: Org,
        contact_id: Annotated[str, Query()],
        agent_id: str | None = None,
        limit: int = 50,
        chat_id: str | None = None,
        roles: Annotated[str | None, Query(description="Comma-separated: user,assistant")] = None,
        channels: Annotated[str | None, Query(description="Comma-separated: sms,voice")] = None,
        max_chars: int | None = None,
    ) -> Context:
        return await the_store().get_context(
            organization,
            contact_id,
            agent_id=agent_id,
            chat_id=chat_id,
            limit=limit,
            roles=_listed(roles),
            channels=_listed(channels),
            max_chars=max_chars,
        )

    @app.get(
        "/chats",
        response_model=MessagePage,
        summary="list_messages: newest first, a page at a time",
        responses=answers(404),
    )
    async def list_messages(
        organization: Org,
        contact_id: Annotated[str, Query()],
        limit: int = 50,
        cursor: str | None = None,
        agent_id: str | None = None,
        chat_id: str | None = None,
        channel: str | None = None,
    ) -> MessagePage:
        return await the_store().list_messages(
            organization, contact_id, limit=limit, cursor=cursor, agent_id=agent_id, chat_id=chat_id, channel=channel
        )

    @app.get(
        "/chats/search", response_model=SearchPage, summary="search_messages: best match first", responses=answers()
    )
    async def search_messages(
        organization: Org,
        q: Annotated[str, Query(description='Words, prefix*, "a phrase", -excluded')],
        contact_id: str | None = None,
        channel: str | None = None,
        role: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> SearchPage:
        return await the_store().search_messages(
            organization, q, contact_id=contact_id, channel=channel, role=role, limit=limit, cursor=cursor
        )

    @app.get("/whoami", response_model=Identity, summary="the organization of the key or token", responses=answers())
    async def whoami(organization: Org, request: Request) -> Identity:
        """The key's visible prefix, never the key; None for an OAuth token."""
        key = request.headers.get("authorization", "").partition(" ")[2].strip()
        return Identity(
            org=organization,
            key_prefix=prefix_of(key),
            can_write=not read_only and request.scope.get(MAY_WRITE_SCOPE_KEY) is True,
        )

    @app.get(
        "/contacts/{contact_id}",
        response_model=ContactInfo,
        summary="get_contact: by any of its ids",
        responses=answers(404),
    )
    async def get_contact(organization: Org, contact_id: ContactId) -> ContactInfo:
        return await the_store().get_contact(organization, contact_id)

    @app.get(
        "/contacts",
        response_model=ContactPage,
        summary="the organization's contacts, the most recently active first",
        responses=answers(),
    )
    async def recent_contacts(organization: Org, limit: int = 50, cursor: str | None = None) -> ContactPage:
        """As the MCP server lists their transcripts among its resources; each contact by its contact_id."""
        return await the_store().recent_contacts(organization, limit, cursor)

    @app.get(
        "/contacts/{contact_id}/export",
        response_class=StreamingResponse,
        summary="the contact's history as JSON Lines: the records `chatdock export --contact` writes",
        responses={
            200: {"description": "One record a line", "content": {EXPORT_MEDIA_TYPE: {"schema": EXPORT_LINE_SCHEMA}}},
            **answers(404),
        },
    )
    async def export_contact(organization: Org, contact_id: ContactId) -> Response:
        """Named by any of its identifiers; the chats, then the aliases, then the messages, oldest first, a
        batch at a time (docs/history.md: `chatdock import` reads them back)."""
        store = the_store()
        found = await store.get_contact(organization, contact_id)  # an unknown contact is a 404, not an empty file
        lines = export_lines(store, organization, found.contact_id)
        # the snapshot is taken, and its first line read, before the answer starts: a snapshot that cannot be
        # had is a 503, not a 200 cut after its headers
        first = await anext(lines, None)

        async def body() -> AsyncIterator[str]:
            async with contextlib.aclosing(lines):
                if first is not None:
                    yield first + "\n"
                    async for line in lines:
                        yield line + "\n"

        return StreamingResponse(
            body(),
            media_type=EXPORT_MEDIA_TYPE,
            headers={"Cache-Control": "no-store", "Content-Disposition": _attachment(found.contact_id)},
        )

    @app.get(
        "/contacts/{contact_id}/chats",
        response_model=ChatList,
        summary="list_chats: newest first",
        responses=answers(404),
    )
    async def list_chats(organization: Org, contact_id: ContactId, limit: int = 50) -> ChatList:
        return ChatList(chats=await the_store().list_chats(organization, contact_id, limit))

    @app.get(
        "/contacts/{contact_id}/events",
        response_class=StreamingResponse,
        summary="the contact's changes as server-sent events: `ready` once listening, then `changed` (read again)",
        responses={
            200: {"description": "An event stream", "content": {"text/event-stream": {"schema": EVENT_SCHEMA}}},
            **answers(
                429,
                described={
                    429: "Too many failed keys from this address, or the organization's listeners at their bound: "
                    "wait Retry-After seconds"
                },
            ),
        },
    )
    async def contact_events(organization: Org, contact_id: ContactId) -> Response:
        """Each `changed` event says the contact (named by any of its identifiers) changed since the last one:
        a message on any channel, a delete, a link, a chat opened or its status; events coalesce, so a listener reads
        again rather than counting them. A comment line every 15 s keeps idle proxies from closing it."""
        contact_id = check.contact_id(contact_id)
        if events.closing:  # a stream opened now would only be cut: the client listens again elsewhere
            return refusal(Unavailable(SHUTTING_DOWN), {"Retry-After": "1"})
        changed = asyncio.Event()
        try:
            stop = events.watch_contact(organization, contact_id, changed.set)
        except MCPError as exc:
            return problem(429, "Too many listeners", exc.error.message, {"Retry-After": str(LISTENERS_RETRY_AFTER)})
        return StreamingResponse(
            _event_stream(contact_id, changed, stop, lambda: events.closing),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},  # nginx: each event as it comes
            background=BackgroundTask(stop),
        )

    if read_only:  # a write is refused as one (405), not as a route that does not exist (404)
        full = build_rest(the_store, False, events).routes
        writes.extend(route for route in full if is_write(route))
        return app

    # --- writing ---

    @app.post(
        "/chats",
        response_model=AppendedMessage,
        status_code=201,
        summary="append_message: 201 with the stored message, 200 with the first copy of a retried webhook",
        responses={
            200: {"description": "Already stored (same channel and provider_message_id)", "model": AppendedMessage},
            **answers(*WITH_BODY, 404, 409),
        },
    )
    async def append_message(
        organization: Org, body: AppendRequest, idempotency_key: IdempotencyKey = None
    ) -> Response:
        stored = await the_store().append_message(organization, body.new_message(), idempotency_key, body.context_limit)
        # written at once, its context's messages from memory (a context of 50 messages is most of the answer)
        return Response(
            json_body(stored), status_code=200 if stored.deduplicated else 201, media_type="application/json"
        )

    @app.delete("/chats/{message_id}", response_model=DeletedMessage, summary="delete_message", responses=answers(404))
    async def delete_message(organization: Org, message_id: str, request: Request) -> Response:
        if fixed(app, request.scope):  # /chats/context, /chats/search: the routes of that name take no DELETE
            return not_allowed(request)
        deleted = await the_store().delete_message(organization, message_id)
        return JSONResponse(DeletedMessage(id=deleted.id).model_dump())

    @app.post(
        "/contacts/{contact_id}/chats",
        response_model=Chat,
        status_code=201,
        summary="open_chat",
        responses=answers(*WITH_BODY, 404, 409),
    )
    async def open_chat(
        organization: Org, contact_id: ContactId, body: OpenChatRequest, idempotency_key: IdempotencyKey = None
    ) -> Chat:
        return await the_store().open_chat(organization, contact_id, body.channel, body.agent_id, idempotency_key)

    @app.patch(
        "/contacts/{contact_id}/chats/{chat_id}",
        response_model=Chat,
        summary="update_chat",
        responses=answers(*WITH_BODY, 404),
    )
    async def update_chat(organization: Org, contact_id: ContactId, chat_id: str, body: UpdateChatRequest) -> Chat:
        return await the_store().update_chat(organization, chat_id, body.status, contact_id=contact_id)

    @app.patch(
        "/chats/status/{chat_id}",
        response_model=Chat,
        summary="update_chat, as the tool takes it: by the chat's id alone",
        responses=answers(*WITH_BODY, 404),
    )
    async def update_chat_by_id(organization: Org, chat_id: str, body: UpdateChatRequest) -> Chat:
        return await the_store().update_chat(organization, chat_id, body.status)

    @app.post(
        "/contacts/{contact_id}/aliases",
        response_model=LinkResult,
        summary="link_contacts: the identifier names this contact; a contact it named is merged in",
        responses=answers(*WITH_BODY, 404, 409),
    )
    async def link_contacts(
        organization: Org, contact_id: ContactId, body: AliasRequest, idempotency_key: IdempotencyKey = None
    ) -> LinkResult:
        """Linking is idempotent by itself (a retry links nothing more); with an Idempotency-Key, a retry also
        gets the first answer, with what that merged."""
        return await the_store().link_contacts(organization, contact_id, body.identifier, idempotency_key)

    @app.delete(
        "/contacts/{contact_id}/aliases/{identifier}",
        response_model=ContactInfo,
        summary="unlink_contact",
        responses=answers(404),
    )
    async def unlink_contact(organization: Org, contact_id: ContactId, identifier: str) -> ContactInfo:
        return await the_store().unlink_contact(organization, identifier, contact_id=contact_id)

    @app.delete(
        "/contacts/{contact_id}",
        response_model=ForgetResult,
        summary="forget_contact: by any of its ids",
        responses=answers(404),
    )
    async def forget_contact(organization: Org, contact_id: ContactId) -> ForgetResult:
        return await the_store().forget_contact(organization, contact_id)

    async def post(
        organization: str, contact_id: str, chat_id: str, body: PostRequest, idempotency_key: str | None
    ) -> Response:
        store = the_store()
        stored = await store.post_as_contact(
            organization,
            contact_id,
            chat_id,
            body.message,
            body.channel_id,
            idempotency_key,
            body.context_limit,
            body.created_at,
        )
        try:
            chat = await store.chat(organization, stored.chat_id or chat_id)
        except ChatdockError as exc:  # the message is stored: the answer says so
            raise stored_unanswered(stored.id, "its chat", exc, "GET /contacts/{contact_id}/chats shows it") from None
        answer = ChatWithMessages.model_construct(**vars(chat), messages=[as_message(stored)], context=stored.context)
        # built from models the store validated, written by pydantic's serializer at once (see append_message)
        return Response(answer.model_dump_json(), status_code=201, media_type="application/json")

    @app.post(
        "/contacts/{contact_id}/chats/{chat_id}/messages",
        response_model=ChatWithMessages,
        status_code=201,
        summary="post_as_contact: the chat, with the stored message",
        responses=answers(*WITH_BODY, 404, 409),
    )
    async def post_as_contact(
        organization: Org,
        contact_id: ContactId,
        chat_id: str,
        body: PostRequest,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        return await post(organization, contact_id, chat_id, body, idempotency_key)

    @app.post(
        "/orgs/{org_id}/contacts/{contact_id}/chats/{chat_id}/messages",
        response_model=ChatWithMessages,
        status_code=201,
        summary="post_as_contact, as Invent's route names it (an org_id other than the key's is an unknown chat)",
        responses=answers(*WITH_BODY, 404, 409),
    )
    async def post_as_contact_in_org(
        organization: Org,
        org_id: str,
        contact_id: ContactId,
        chat_id: str,
        body: PostRequest,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        if org_id != organization:  # an unknown chat, once the arguments are found sound as for one
            checked = the_store().checked_post(contact_id, chat_id, body.message, body.channel_id, body.context_limit)
            raise chat_not_found(checked[1], checked[0])
        return await post(organization, contact_id, chat_id, body, idempotency_key)

    return app


async def _event_stream(
    contact_id: str, changed: asyncio.Event, stop: Callable[[], None], closing: Callable[[], bool]
) -> AsyncIterator[bytes]:
    """The server-sent events of one contact's listener (see `contact_events`); it stops listening when the
    client goes away, and ends when the server shuts down (the client reconnects to it or a replica)."""
    data = json.dumps({"contact_id": contact_id}, ensure_ascii=False)
    try:
        yield f"event: ready\ndata: {data}\n\n".encode()
        while True:
            try:
                await asyncio.wait_for(changed.wait(), KEEP_ALIVE_SECONDS)
            except TimeoutError:
                if closing():
                    return
                yield b": still listening\n\n"
                continue
            if closing():
                return
            changed.clear()
            yield f"event: changed\ndata: {data}\n\n".encode()
    finally:
        stop()


def _matching(app: FastAPI, scope: Scope) -> list[BaseRoute]:
    """The routes whose path matches the request's, whatever its method; those of a path without parameters
    alone when there is one (`/chats/context` is that route's, though `/chats/{message_id}` would match it)."""
    unrouted = {**scope, "method": "\0"}  # a method no route takes: the path alone decides
    matching = [route for route in app.router.routes if route.matches(unrouted)[0] is not Match.NONE]
    literal = [route for route in matching if not getattr(route, "param_convertors", None)]
    return literal or matching


def fixed(app: FastAPI, scope: Scope) -> bool:
    """Whether the request's path is a route's own path without parameters (so no parameter route serves it)."""
    return any(not getattr(route, "param_convertors", None) for route in _matching(app, scope))


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods the routes matching the request's path take, in the order they were declared."""
    allowed: list[str] = []
    for route in _matching(app, scope):
        methods = getattr(route, "methods", None) or ()
        allowed.extend(method for method in sorted(methods) if method not in allowed)
    if "GET" in allowed and "HEAD" not in allowed and not streamed(str(scope.get("path", ""))):
        allowed.insert(allowed.index("GET") + 1, "HEAD")  # a GET's HEAD is served too (app.py's Dispatch)
    return allowed


STREAMED = ("/events", "/export")  # the GET routes whose answer is a stream: no HEAD (it would run it whole)


def streamed(path: str) -> bool:
    """Whether `path` is one of a contact's streamed routes (its event stream, its export)."""
    return path.startswith("/contacts/") and path.endswith(STREAMED)


def _json_media(content_type: str) -> bool:
    """Whether a Content-Type declares JSON, as FastAPI tells (application/json, application/*+json)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _unread_body(error: Any) -> bool:
    """A body FastAPI could not read as JSON at all (no JSON content type, or not JSON)."""
    return tuple(error.get("loc", ())) == ("body",) and isinstance(error.get("input"), bytes | str)


def _attachment(contact_id: str) -> str:
    """A download's file name: the contact's id percent-encoded (RFC 6266), a plain one for older clients."""
    return f"attachment; filename=\"chatdock-export.jsonl\"; filename*=UTF-8''{quote(contact_id, safe='')}.jsonl"


def _listed(value: str | None) -> list[str] | None:
    """A comma-separated query parameter; given empty (`roles=`), an empty list, which the store refuses in
    the tool's words."""
    if value is None:
        return None
    return [] if not value.strip() else [item.strip() for item in value.split(",")]


def _located(errors: list[Any]) -> list[Any]:
    """FastAPI names where a bad value was (`body`, `query`, `path`): keep only the field's own name."""
    located = []
    for error in errors:
        where = [part for part in error.get("loc", ()) if part not in ("body", "query", "path")]
        located.append({**error, "loc": tuple(where)})
    return located


class BodyLimit:
    """ASGI middleware: a request body over 4 MiB gets 413 before a route reads it, and one in a content coding
    (gzip, ...) 415: it was read as the JSON it is not ("the body is not UTF-8 text (byte 0x8b ...)"), or, its
    coding named over a plain body, taken."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                await too_large()(scope, receive, send)
                return
            coded = name == b"content-encoding" and value.strip().lower() not in (b"", b"identity")
            if coded and scope["method"] in ("POST", "PATCH", "PUT"):
                coding = value.decode("latin-1")
                await problem(
                    415,
                    "Unsupported Media Type",
                    f"the body is sent with Content-Encoding: {coding}; chatdock takes a body as it is: send the "
                    "JSON uncompressed, without a Content-Encoding",
                )(scope, receive, send)
                return
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await too_large()(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    """A streamed body passed the limit while it was read: FastAPI hands an HTTPException raised while it reads
    a body to its handler (`http_error`), a lane (lanes.py) lets it reach `BodyLimit`; both answer `too_large`."""

    def __init__(self) -> None:
        super().__init__(413)


def too_large() -> JSONResponse:
    return problem(413, "Payload too large", f"the body is over {MAX_BODY_BYTES:,} bytes; send less")


async def read_body(receive: Receive, most: int | None = None) -> tuple[bytes, bool]:
    """A request's body, read whole, or until it passes `most` bytes; and whether the client went away before
    it ended. For a layer that reads the body before the app does (`replaying` hands it on)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if not message.get("more_body", False) or (most is not None and size > most):
            return b"".join(chunks), False


def replaying(body: bytes, receive: Receive, gone: bool = False) -> Receive:
    """`receive` giving `body` first, whole in one message (or, when the client is `gone`, its going away), then
    what `receive` gives."""
    replayed = False

    async def replay() -> ASGIMessage:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.disconnect"} if gone else {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
