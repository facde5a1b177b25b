"""Each request as an operator sees it: counted and timed (metrics.py), traced, and named in its log lines.

- `ObservedHttp`, the outermost ASGI layer of `serve --http`: it answers /metrics (on the main listener, or
  only on the metrics port when there is one); it counts and times every REST call by method, route template
  and status, and gives it a span continuing the caller's trace from its `traceparent` header (key check
  included); and it names every request in its log lines (`request_id`: the client's X-Request-Id, or one of
  its own).
- `ObservedMcp`, a middleware of the MCP server (after `OrgMiddleware`): it counts and times each MCP message
  by method, tool and status, and names it in its log lines (its JSON-RPC id and organization). A request to
  /mcp refused before any message reached it (a wrong key, a body that is not JSON-RPC, a missing `_meta`, a
  wrong Accept header) is counted by `ObservedHttp` instead, as MCP's `other` with its HTTP status: a client
  broken by an upgrade shows on the dashboard's errors.

The span of an MCP request is the MCP SDK's own (mcp/server/_otel.py), continuing the trace in its
`_meta.traceparent`; an MCP request over HTTP whose `_meta` has none continues its header's trace (`ObservedHttp`
makes it the current context). The store's spans go beneath either (storage/tracing.py).

Every label is bounded: an HTTP method outside the standard ones, an MCP method outside the specification's
and a tool that is not registered are each counted as "other", and a REST path that matches no route as
"unmatched".
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import secrets
import time
from collections.abc import Collection
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult
from mcp_types.methods import SPEC_CLIENT_METHODS, SPEC_CLIENT_NOTIFICATION_METHODS
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatdock.server.mcp.org import ORG_SCOPE_KEY, current_org
from chatdock.server.ops import logs
from chatdock.server.settings import METRICS_CLIENTS
from chatdock.storage import ChatdockError, Unavailable

if TYPE_CHECKING:
    from chatdock.server.ops.metrics import Metrics

HTTP_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MCP_METHODS: Final = SPEC_CLIENT_METHODS | SPEC_CLIENT_NOTIFICATION_METHODS
TRACE_HEADERS: Final = {b"traceparent": "traceparent", b"tracestate": "tracestate"}
MAX_REQUEST_ID = 128
MCP_SEEN: Final = "chatdock.mcp_seen"  # in a request's scope once ObservedMcp saw one of its messages

_tracer = trace.get_tracer("chatdock.server")


class Noted:
    """An ASGI `send` that notes the status of the answer it starts (None until one starts)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        await self.send(message)


def networks(clients: Collection[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """--metrics-allow's networks (by default loopback and private ones: Settings)."""
    return [ipaddress.ip_network(network) for network in clients]


def stranger(scope: Scope, allowed: Collection[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str | None:
    """None when the request's client (its address, as the proxies named in --forwarded-allow-ips tell it) is of
    the `allowed` networks: it may read what names organizations and the database's whereabouts (/metrics, the
    causes /healthz gives); else that address, to say so."""
    client = scope.get("client")
    address = str(client[0]) if client and client[0] else "an unknown address"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return None if any(ip in network for network in allowed) else address


def route_for(routes: Collection[BaseRoute], scope: Scope) -> BaseRoute | None:
    """The route a request goes to: where the router put it, or before routing (a request refused for its key,
    its body, its scopes; a HEAD) the first route that takes its path and method, else the first that takes its
    path. A HEAD is its GET's (http/app.py's Dispatch answers it so)."""
    route: BaseRoute | None = scope.get("route")
    if route is not None:
        return route
    method = "GET" if scope.get("method") == "HEAD" else scope.get("method")
    for candidate in routes:
        match = candidate.matches({**scope, "method": method})[0]
        if match is Match.FULL:
            return candidate
        if match is not Match.NONE:
            route = route or candidate
    return route


def route_of(routes: Collection[BaseRoute], scope: Scope) -> tuple[str | None, bool]:
    """The template of the route a request's path matches (`/chats/{message_id}`, never the path itself), and
    whether that route takes the request's method."""
    method = "GET" if scope.get("method") == "HEAD" else scope.get("method")
    route = route_for(routes, scope)
    path = getattr(route, "path", None)
    methods = getattr(route, "methods", None)  # None: a mount (the pages, their files), which takes any
    return (path, methods is None or method in methods) if isinstance(path, str) else (None, False)


def operation_of(method: str, template: str | None, takes: bool) -> str:
    """The `operation` label of a REST call: its method and route template; `unmatched` for a path no route
    matches, and `other` for a method its route does not take (or no standard one), so that the series a
    scrape holds are bounded by the routes and their methods, however many pairs of a method and a path
    clients try (each pair was a histogram of its own: 220 requests without a key made 3,700 samples)."""
    if template is None:
        return "unmatched"
    return f"{method} {template}" if takes and method != "other" else "other"


class ObservedHttp:
    """ASGI: /metrics, and the count, time, span and request id of each request (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics | None,
        tracing: bool,
        routes: Collection[BaseRoute],
        elsewhere: tuple[str, ...],
        metrics_port: int | None = None,
        security: TransportSecuritySettings | None = None,
        metrics_clients: Collection[str] = ("0.0.0.0/0", "::/0"),
        metrics_security: TransportSecuritySettings | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing
        self.routes = routes  # the REST routes, for the template of a request refused before routing
        self.elsewhere = elsewhere  # paths that are not REST (/mcp, the probes): named in the log, not counted
        self.metrics_port = metrics_port
        # /metrics on the main listener names organizations: the Host and Origin /mcp takes, or 421 / 403 (a page
        # of another site that DNS rebinding points at this server must not read them)
        self.hosts = TransportSecurityMiddleware(security) if security is not None else None
        # ... and on the metrics port, the Host it takes when there is a check to make (a port on loopback)
        self.metrics_hosts = None if metrics_security is None else TransportSecurityMiddleware(metrics_security)
        # ... and only to clients of these networks (by default loopback and private ones: Settings)
        self.metrics_clients = networks(metrics_clients)
        self._prefix = secrets.token_hex(4)  # request ids of this process: prefix-counter, unique across replicas
        self._count = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        if self.metrics is not None:
            on_its_port = self.metrics_port is not None and (scope.get("server") or ("", 0))[1] == self.metrics_port
            if on_its_port or (self.metrics_port is None and path == "/metrics"):
                hosts = self.metrics_hosts if on_its_port else self.hosts
                refused = None if hosts is None else await hosts.validate_request(Request(scope))
                if refused is not None:
                    await refused(scope, receive, send)
                elif on_its_port:
                    await self._scrape(scope, send, path == "/metrics")  # the metrics port serves nothing else
                else:
                    await self._scrape(scope, send, True, self._metrics_client(scope))
                return
        request_id, carrier = self._read_headers(scope)
        token = logs.request_fields.set({"request_id": request_id})
        try:
            if path in self.elsewhere:
                await self._pass(scope, receive, send, carrier)
            else:
                await self._rest(scope, receive, send, carrier)
        finally:
            logs.request_fields.reset(token)

    def _read_headers(self, scope: Scope) -> tuple[str, dict[str, str]]:
        request_id = ""
        carrier: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
                if len(given) <= MAX_REQUEST_ID and given.isascii() and given.isprintable():
                    request_id = given
            elif name in TRACE_HEADERS and self.tracing:
                carrier[TRACE_HEADERS[name]] = value.decode("latin-1")
        return request_id or f"{self._prefix}-{next(self._count):x}", carrier

    async def _pass(self, scope: Scope, receive: Receive, send: Send, carrier: dict[str, str]) -> None:
        """/mcp and the probes: over MCP a `traceparent` header is the caller's trace too, beneath which the
        SDK's span goes when its `_meta` has none; a request to /mcp refused before ObservedMcp saw a message of
        it is counted here."""
        token = otel_context.attach(propagate.extract(carrier)) if carrier else None
        began = time.perf_counter()
        noted = Noted(send)
        counted = self.metrics is not None and scope.get("path") == "/mcp"
        try:
            await self.app(scope, receive, noted if counted else send)
        finally:
            if token is not None:
                otel_context.detach(token)
            status = noted.status or 500  # none started: the app failed before it could say anything
            if self.metrics is not None and counted and status >= 400 and not scope.get(MCP_SEEN):
                self.metrics.request("mcp", "other", "", str(status), time.perf_counter() - began)

    async def _rest(self, scope: Scope, receive: Receive, send: Send, carrier: dict[str, str]) -> None:
        if self.metrics is None and not self.tracing:
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        noted = Noted(send)
        method = str(scope.get("method", ""))
        method = method if method in HTTP_METHODS else "other"
        span, token = None, None
        if self.tracing:  # the caller's trace, from its traceparent header; else a trace of its own
            parent = propagate.extract(carrier) if carrier else None
            span = _tracer.start_span(method, parent, SpanKind.SERVER, {"http.request.method": method})
            token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.app(scope, receive, noted)
        except Exception as exc:
            if span is not None:
                span.record_exception(exc)
            raise
        finally:
            status = noted.status or 500  # none started: the app failed before it could say anything
            template, takes = route_of(self.routes, scope)
            if self.metrics is not None:
                operation = operation_of(method, template, takes)
                self.metrics.request("rest", operation, "", str(status), time.perf_counter() - began)
            if span is not None and token is not None:
                otel_context.detach(token)
                if span.is_recording():  # (not when a sampler left the trace out)
                    _describe(span, scope, method, template, status)
                span.end()

    def _metrics_client(self, scope: Scope) -> str | None:
        """None when the request's client may read /metrics on the main listener; else its address, to say so."""
        return stranger(scope, self.metrics_clients)

    def _allowed(self) -> str:
        """Who may read /metrics on the main listener, in words."""
        if [str(network) for network in self.metrics_clients] == list(METRICS_CLIENTS):
            return "loopback and private addresses"
        return "addresses of " + ", ".join(str(network) for network in self.metrics_clients) + " (--metrics-allow)"

    async def _scrape(self, scope: Scope, send: Send, found: bool, stranger: str | None = None) -> None:
        assert self.metrics is not None
        text = [(b"content-type", b"text/plain; charset=utf-8")]
        if stranger is not None:
            status, headers = 403, [(b"content-type", b"application/json")]
            body = json.dumps(
                {
                    "error": "Forbidden",
                    "message": f"/metrics names organizations: on this listener it answers {self._allowed()}, "
                    f"not {stranger}; serve it on a port of its own (--metrics-port), or name the scraper's "
                    "network with --metrics-allow",
                }
            ).encode()
        elif not found:
            status, body, headers = 404, b"this port serves only GET /metrics\n", text
        elif scope.get("method") not in ("GET", "HEAD"):
            status, body, headers = 405, b"/metrics takes GET\n", [*text, (b"allow", b"GET, HEAD")]
        else:
            accept = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"accept"), "")
            body, content_type = self.metrics.exposition(accept)
            status, headers = 200, [(b"content-type", content_type.encode("latin-1"))]
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})


def _describe(span: Span, scope: Scope, method: str, template: str | None, status: int) -> None:
    """A REST call's span, once answered: named by its route's template (never by its path, which names
    contacts), with its status and organization."""
    if template is not None:
        span.update_name(f"{method} {template}")
        span.set_attribute("http.route", template)
    span.set_attribute("http.response.status_code", status)
    org = scope.get(ORG_SCOPE_KEY)
    if isinstance(org, str):
        span.set_attribute("chatdock.org", org)
    if status >= 500:
        span.set_status(StatusCode.ERROR)


# The database failures of the tool call at hand (ObservedMcp gives each call a list of its own): its metrics'
# status is then `unavailable`, what REST answers 503, not `tool_error`.
service_failures: ContextVar[list[str] | None] = ContextVar("chatdock_service_failures", default=None)


def note_failure(exc: ChatdockError) -> None:
    """The call at hand (a tool's, a resource's, a prompt's) failed for `exc`: noted when the database did
    (unreachable, full, read-only, timed out), not the caller's arguments."""
    noted = service_failures.get()
    if noted is not None and isinstance(exc, Unavailable):
        noted.append("unavailable")


class ObservedMcp:
    """The MCP server's middleware that counts, times and names each message (see the module)."""

    def __init__(self, metrics: Metrics | None, tools: Collection[str], prompts: Collection[str] = ()) -> None:
        self.metrics = metrics
        self.tools = tools  # the registered tools' names, the only ones a label may hold
        self.prompts = prompts  # and the prompts', the only ones a span's name may hold

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        scope = getattr(ctx.request, "scope", None)
        if isinstance(scope, dict):  # over HTTP: its request is counted here, not as refused (ObservedHttp)
            scope[MCP_SEEN] = True
        method, tool = self._labels(ctx)
        self._bound_span(ctx, method, tool)
        org = current_org.get("")
        fields = {"org": org} if org else {}
        if ctx.request_id is not None:
            fields["request_id"] = str(ctx.request_id)
        token = logs.request_fields.set(fields)
        failures: list[str] = []
        noting = service_failures.set(failures)
        began = time.perf_counter()
        status = "error"
        try:
            result = await call_next(ctx)
            if ctx.request_id is None and not ctx.method.startswith("notifications/"):
                status = "ignored"  # a request's method sent as a notification: nothing ran (a security review)
            else:
                status = ("unavailable" if failures else "tool_error") if _tool_error(result) else "ok"
            return result
        except MCPError as exc:  # a resource the database could not read: `unavailable`, as a tool's
            status = "unavailable" if failures else str(exc.error.code)
            raise
        except ValidationError:
            status = str(INVALID_PARAMS)  # as the SDK answers malformed params
            raise
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            service_failures.reset(noting)
            logs.request_fields.reset(token)
            if self.metrics is not None:
                self.metrics.request("mcp", method, tool, status, time.perf_counter() - began)

    def _bound_span(self, ctx: ServerRequestContext[Any, Any], method: str, tool: str) -> None:
        """The MCP SDK's span of this message (the current one: its middleware wraps this one) is named by the
        method and the tool (`_labels`) or prompt the client sent, whatever they are: an unknown one is named
        `other`, as in the metrics, so that no client can fill a trace backend with names of its own."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        name = ctx.params.get("name") if isinstance(ctx.params, dict) else None
        if method == "other":
            span.set_attribute("mcp.method.name", "other")
        if tool == "other":
            span.set_attribute("gen_ai.tool.name", "other")
        named = tool if method == "tools/call" else None  # the SDK names the span by any method's `name`
        if method == "prompts/get" and isinstance(name, str):
            named = name if name in self.prompts else "other"
            if named == "other":
                span.set_attribute("gen_ai.prompt.name", "other")
        span.update_name(f"{method} {named}" if named else method)

    def _labels(self, ctx: ServerRequestContext[Any, Any]) -> tuple[str, str]:
        method = ctx.method if ctx.method in MCP_METHODS else "other"
        if method != "tools/call":
            return method, ""
        name = ctx.params.get("name") if isinstance(ctx.params, dict) else None
        return method, name if isinstance(name, str) and name in self.tools else "other"


def _tool_error(result: HandlerResult) -> bool:
    """A tool's failure, answered as a result (`isError`), as the SDK's span reads it."""
    match result:
        case CallToolResult(is_error=True) | {"isError": True}:
            return True
        case _:
            return False
