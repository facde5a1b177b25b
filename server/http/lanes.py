"""`Lanes`: the REST calls made most (an append, the reads of a contact's context, messages and search)
answered without FastAPI's per-request machinery when their request is well formed.

FastAPI resolves a route's dependencies, reads its query parameters and body and validates them, all anew for
each request: 230 us of a REST append's 340 in process (twice the store's append), and 180 us of a context
read's 450. The lanes read the same request the route would and call the same code:
- POST /chats: the body as `AppendRequest`, validated by pydantic from its bytes in one pass, the
  `Idempotency-Key` by the rule FastAPI checks it with (`validation.IDEMPOTENCY_KEY_PATTERN`);
- a GET route whose arguments are the key's organization and plain query parameters (a string or an integer,
  optional or not, with no constraint of FastAPI's, and an answer FastAPI writes as it is): the parameters as
  FastAPI reads them (`parse_qsl`, the route's names and defaults), its answer checked against the response
  model and written by its serializer, as FastAPI does.
Either way the route's own endpoint is called.
The organization comes from the scope (`ApiKeyAuth` put it there), and the route's object goes into the scope
as FastAPI's router puts it (the request's metrics and span name its template).

Anything a lane does not take whole goes to FastAPI as it came (a body replayed): another route or method, a
body, key or parameter that does not validate, a parameter the route does not take or given twice. Every
refusal of a malformed request is then FastAPI's, in one shape and with one text; a lane only answers a
request the route would have accepted, with the route's answer. tests/http/test_lanes.py holds each lane's
answers against FastAPI's own.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin
from urllib.parse import parse_qsl

from fastapi import FastAPI
from fastapi.datastructures import DefaultPlaceholder
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chatdock.server.http.bodies import json_body
from chatdock.server.http.rest import failed_unexpectedly, org_of, read_body, refusal, replaying
from chatdock.server.mcp.org import ORG_SCOPE_KEY
from chatdock.storage import ChatdockError, InvalidInput
from chatdock.storage import validation as check
from chatdock.storage.requests import AppendRequest

PATH = "/chats"
IDEMPOTENCY_HEADER = b"idempotency-key"
# an integer as pydantic reads one from a query string, in its one plain spelling (others go to FastAPI); at
# most 18 digits, so that `int()` never meets one too long to read (Python refuses past 4,300 digits)
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")


class Lanes:
    """ASGI, in front of the REST app `rest`: its most called routes answered at once (see the module)."""

    def __init__(self, rest: FastAPI) -> None:
        self.rest = rest
        routes = [route for route in rest.router.routes if isinstance(route, APIRoute)]
        # none when the app has no POST /chats (--read-only): then nothing takes that lane
        self.append = next((r for r in routes if r.path == PATH and r.methods == {"POST"}), None)
        self.reads = {read.route.path: read for read in map(_Read.of, routes) if read is not None}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ORG_SCOPE_KEY in scope and not scope.get("root_path"):
            method, path = scope.get("method"), scope.get("path")
            if method == "GET" and path in self.reads:
                read = self.reads[path]
                arguments = read.arguments(scope.get("query_string", b""))
                if arguments is not None:
                    org = scope[ORG_SCOPE_KEY]
                    await _answer(read.route, lambda: read.answer(org, arguments), scope, receive, send)
                    return
            elif method == "POST" and path == PATH and self.append is not None:
                await self._append(self.append, scope, receive, send)
                return
        await self.rest(scope, receive, send)

    async def _append(self, route: APIRoute, scope: Scope, receive: Receive, send: Send) -> None:
        key = _key(scope)
        if key is LEAVE or scope.get("query_string"):  # POST /chats takes no query parameter: FastAPI says so
            await self.rest(scope, receive, send)
            return
        body, gone = await read_body(receive)
        request = None if gone else _read(body)
        if request is None:  # (a client gone while the lane read: FastAPI hears so too)
            await self.rest(scope, replaying(body, receive, gone), send)
            return
        org = scope[ORG_SCOPE_KEY]
        answer = lambda: route.endpoint(organization=org, body=request, idempotency_key=key)  # noqa: E731
        await _answer(route, answer, scope, receive, send)


async def _answer(
    route: APIRoute, answer: Callable[[], Awaitable[Response]], scope: Scope, receive: Receive, send: Send
) -> None:
    """`answer()`, or what the route's exception handlers make of what it raised; the route goes into the scope
    as FastAPI's router puts it there (the request's metrics and span name its template)."""
    scope["route"] = route
    try:
        response = await answer()
    except ChatdockError as exc:
        response = refusal(exc, query=scope.get("query_string", b""))
    except Exception as exc:  # as FastAPI's error middleware does: answered, then raised for the server
        await failed_unexpectedly(scope["method"], scope["path"], exc)(scope, receive, send)
        raise
    await response(scope, receive, send)


def _plain(annotation: Any) -> type | None:
    """`str` or `int` for a parameter of that type (or of it or None), else None."""
    if get_origin(annotation) in (Union, UnionType):
        kinds = [kind for kind in get_args(annotation) if kind is not NoneType]
        annotation = kinds[0] if len(kinds) == 1 else None
    return annotation if annotation in (str, int) else None


@dataclass(frozen=True)
class _Parameter:
    name: str  # the endpoint's argument
    integer: bool
    required: bool
    default: Any


@dataclass(frozen=True)
class _Read:
    """A GET route a lane can answer: its endpoint takes the organization (the `Org` dependency) and plain query
    parameters, and FastAPI writes its answer as the response model's serializer does, with no option."""

    route: APIRoute
    organization: str  # the endpoint's argument for it
    parameters: dict[str, _Parameter]  # by the name in the query string
    model: TypeAdapter[Any]

    @staticmethod
    def of(route: APIRoute) -> _Read | None:
        needs = route.dependant
        if (
            route.methods != {"GET"}
            or route.response_model is None
            or not isinstance(route.response_class, DefaultPlaceholder)
            or not route.response_model_by_alias
            or route.response_model_include is not None
            or route.response_model_exclude is not None
            or route.response_model_exclude_unset
            or route.response_model_exclude_defaults
            or route.response_model_exclude_none
            or route.dependencies
            or not inspect.iscoroutinefunction(route.endpoint)
            or needs.path_params
            or needs.header_params
            or needs.cookie_params
            or needs.body_params
            or needs.request_param_name  # the connection's objects, which a lane does not make
            or needs.websocket_param_name
            or needs.http_connection_param_name
            or needs.response_param_name
            or needs.background_tasks_param_name
            or needs.security_scopes_param_name
            or [dependency.call for dependency in needs.dependencies] != [org_of]
        ):
            return None
        parameters = {}
        for field in needs.query_params:
            kind = _plain(field.field_info.annotation)
            if kind is None or field.field_info.metadata:
                return None
            info = field.field_info
            required = info.is_required()
            default = None if required else info.get_default(call_default_factory=True)
            parameters[field.alias] = _Parameter(field.name, kind is int, required, default)
        organization = needs.dependencies[0].name
        assert organization is not None
        return _Read(route, organization, parameters, TypeAdapter(route.response_model))

    def arguments(self, query: bytes) -> dict[str, Any] | None:
        """The endpoint's arguments from the query string, as FastAPI reads them (a missing one takes its
        default), or None for a query the lane leaves to FastAPI (which refuses a name the route has no
        parameter for, and one given twice: rest.py's `_only_known_query`)."""
        found: dict[str, Any] = {}
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            parameter = self.parameters.get(name)
            if parameter is None:
                return None
            if parameter.name in found or (parameter.integer and not _INTEGER.fullmatch(value)):
                return None
            found[parameter.name] = int(value) if parameter.integer else value
        for parameter in self.parameters.values():
            if parameter.name not in found:
                if parameter.required:
                    return None
                found[parameter.name] = parameter.default
        return found

    async def answer(self, org: str, arguments: dict[str, Any]) -> Response:
        value = await self.route.endpoint(**arguments, **{self.organization: org})
        # as FastAPI's serialize_response: checked against the model (a model's own instance passes as it is)
        checked = self.model.validate_python(value, from_attributes=True)
        # (an instance of a subclass is written as the model declares it, by the model's serializer)
        exact = type(checked) is self.route.response_model
        written = json_body(checked) if exact else self.model.dump_json(checked, by_alias=True)
        return Response(written, status_code=self.route.status_code or 200, media_type="application/json")


class _Leave:
    """What `_key` finds in a request the lane leaves to FastAPI."""


LEAVE = _Leave()


def _key(scope: Scope) -> str | _Leave | None:
    """The request's Idempotency-Key (None without one), or LEAVE: a body not declared JSON, or a key given
    twice or that FastAPI's header check would refuse."""
    key: str | None = None
    declared = False
    for name, value in scope.get("headers", ()):
        if name == IDEMPOTENCY_HEADER:
            if key is not None:
                return LEAVE
            try:
                key = check.idempotency_key(value.decode("latin-1"))
            except InvalidInput:
                return LEAVE
        elif name == b"content-type":
            if declared or value.split(b";", 1)[0].strip().lower() != b"application/json":
                return LEAVE
            declared = True
    return key if declared else LEAVE


def _read(body: bytes) -> AppendRequest | None:
    try:
        return AppendRequest.model_validate_json(body)
    except ValidationError:
        return None
