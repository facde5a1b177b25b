"""Streamable HTTP at /mcp and the REST routes (rest.py) behind API keys, with /healthz and /livez beside them.

`ApiKeyAuth` wraps both apps: every request to /mcp and to a REST route needs
`Authorization: Bearer <key>`; a missing, malformed, unknown or revoked key
gets 401 before anything of the request runs. A valid key's organization is
put into the ASGI scope (`ORG_SCOPE_KEY`), from where `OrgMiddleware` scopes
the request's tools, resources and events.

`ObservedHttp` (observe.py) wraps them all: /metrics, and each request's count, time, span and request id.
Outermost, `EncodedSlashes` (rest.py) routes a path holding %2F as it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import anyio
from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatdock.server.http.guard import FailedKeys
from chatdock.server.http.lanes import Lanes
from chatdock.server.http.oauth import (
    METADATA_PATH,
    READ,
    READ_AND_WRITE,
    READ_SCOPE,
    SCOPES,
    WRITE_SCOPE,
    IssuerUnavailable,
    JwtVerifier,
    TokenRefused,
    is_api_key,
    write_needs,
)
from chatdock.server.http.rest import (
    MAX_BODY_BYTES,
    ROUTE_PREFIXES,
    BodyLimit,
    EncodedSlashes,
    build_rest,
    is_write,
    problem,
    read_body,
    replaying,
    streamed,
    too_large,
)
from chatdock.server.http.sessions import DEFAULT_MAX_SESSIONS_PER_ORG, SessionOwners
from chatdock.server.http.shutdown import CutOff
from chatdock.server.mcp.app import ChatdockServer, Settings, build_server
from chatdock.server.mcp.org import MAY_WRITE_SCOPE_KEY, ORG_SCOPE_KEY, READ_ONLY_SCOPE_KEY, WHO_SCOPE_KEY
from chatdock.server.ops import logs
from chatdock.server.ops.memory import settle_collector
from chatdock.server.ops.observe import ObservedHttp, networks, route_for, stranger
from chatdock.storage import ChatdockError, InvalidInput, Store, Unavailable, audit
from chatdock.storage.errors import NO_ROUTE
from chatdock.storage.keys import REMEMBER_SECONDS, prefix_of, read_only_refusal

if TYPE_CHECKING:
    from chatdock.server.ops.metrics import Metrics

# an idle connection is closed after this; a client should let it go sooner (client.py, the bench)
IDLE_CONNECTION_SECONDS = 5
# why the store cannot serve, to a client outside --metrics-allow's networks (the database's host, its file's path
# are the operator's: found by a security review)
UNSAID = "the store cannot serve now; the server's log says why (and /healthz, to an address --metrics-allow names)"
# /healthz answers within this, whatever the database does (a readiness probe's timeout is a second or a few)
HEALTH_SECONDS = 2.0
logger = logging.getLogger("chatdock.http")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PROBES = ("/healthz", "/livez")
MCP_ENDPOINT = ("/mcp", "/mcp/")  # the MCP app answers the second with a redirect to the first (clients follow it)
MCP_PATHS = (*MCP_ENDPOINT, *PROBES)  # these paths alone: /mcp-admin, /healthz/x, /livez.php are REST's 404
PROTECTED = ("/mcp", *ROUTE_PREFIXES)  # every route but /healthz, /livez, /openapi.json and /docs needs a key
REALM = "chatdock"

# Why a key is refused (the `reason` of chatdock_failed_keys_total), and what the client is told.
REFUSALS: Final = {
    "missing": "send the header 'Authorization: Bearer <key>'; create a key with `chatdock keys create`",
    "malformed": "the Authorization header must read 'Bearer <key>'",
    "not_ready": "the server is not ready yet; try again",
    "unknown": "the key is unknown or revoked; `chatdock keys list` shows the live keys",
    "invalid_token": "",  # an OAuth access token refused: the verifier says why (oauth.py)
}
# the refusals the wrong-key limit counts: a key looked up and not found, what guessing keys looks like. Not a
# request without a bearer (every OAuth client's first, to find the metadata) nor a refused token (expired: the
# client then refreshes it), which a hosted client's shared address sends many of
GUESSES: Final = frozenset({"unknown"})


@dataclass(frozen=True)
class Verdict:
    """Who a request's bearer is: its organization and, for an OAuth token, its scopes (a key may do all);
    or, with no organization, why it was refused (a key of REFUSALS, and the words for a token)."""

    org: str | None
    refusal: str = ""
    scopes: frozenset[str] | None = None
    said: str = ""
    expires_at: float | None = None  # a token's `exp`: what it opened (an event stream) ends then
    key: str = ""  # an API key: what it opened ends once it is revoked
    read_only: bool = False  # a key created with --read-only: refused every write
    who: str = ""  # within the organization: the key (by its prefix), or the token's subject (or client)


def _who(access: AccessToken) -> str:
    """Whom a token acts for within its organization: its subject, or else its client, or else (a token that
    names neither) that token alone."""
    if access.subject:
        return f"subject {access.subject}"
    if access.client_id:
        return f"client {access.client_id}"
    return "token " + hashlib.sha256(access.token.encode()).hexdigest()


class ApiKeyAuth:
    """ASGI middleware: bearer API key in, organization into the scope, or 401 out."""

    def __init__(
        self,
        app: ASGIApp,
        server: ChatdockServer,
        sessions: SessionOwners,
        metrics: Metrics | None = None,
        tokens: JwtVerifier | None = None,
        route_name: Callable[[Scope], str | None] = lambda scope: None,
        write_name: Callable[[Scope], str | None] = lambda scope: None,
        insiders: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    ) -> None:
        self.app = app
        self.insiders = insiders  # who is told why the keys cannot be read (as /healthz tells them)
        self.server = server
        self.failures = FailedKeys()
        self.sessions = sessions
        self.metrics = metrics
        self.tokens = tokens  # with --oauth-issuer: the access tokens' verifier, and its settings
        self.oauth = None if tokens is None else tokens.settings
        self.route_name = route_name  # a REST request's route's name, for the scopes it needs
        self.write_name = write_name  # ... and of the write route that takes it, which a read-only key may not

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or not path.startswith(PROTECTED):
            await self.app(scope, receive, send)
            return
        scope.pop(ORG_SCOPE_KEY, None)
        scope.pop(WHO_SCOPE_KEY, None)
        scope.pop(READ_ONLY_SCOPE_KEY, None)
        scope.pop(MAY_WRITE_SCOPE_KEY, None)
        try:
            verdict = await self._verify(scope)
        except (ChatdockError, IssuerUnavailable) as exc:  # the keys cannot be read: the service is at fault
            if isinstance(exc, IssuerUnavailable):  # the issuer's keys: what to configure, in its words (oauth.py)
                said = str(exc)
            else:  # the database: the request not carried out; why, to whom /healthz tells it
                why = str(exc) if stranger(scope, self.insiders) is None else UNSAID
                said = f"the key could not be checked, so the request was not carried out (nothing was written): {why}"
            response = JSONResponse(
                {"error": "Service unavailable", "message": said}, status_code=503, headers={"Retry-After": "1"}
            )
            await response(scope, receive, send)
            return
        org = verdict.org
        if org is None:
            address = (scope.get("client") or ("unknown", 0))[0]
            problem = verdict.said or REFUSALS[verdict.refusal]
            prefix = _key_prefix(scope)
            # told apart by address and key (a client still sending a revoked key shows beside a flood of guesses)
            logger.warning(
                "refused a key from %s (%s): %s", address, prefix, problem, extra={"repeat_of": f"{address} {prefix}"}
            )
            if self.metrics is not None:
                self.metrics.refused_key(verdict.refusal)
            wait = self.failures.failed(address) if verdict.refusal in GUESSES else None
            if wait is not None:
                if self.metrics is not None:
                    self.metrics.throttled(address, wait)
                await self._slow_down(wait, scope, receive, send)
                return
            await self._reject(verdict.refusal, problem, scope, receive, send)
            return
        if verdict.scopes is not None:
            receive, needed = await scope_needed(scope, receive, self.server.read_only_tools, self.route_name)
            allowed = bool(verdict.scopes & set(SCOPES)) if needed == ANY_SCOPE else needed <= verdict.scopes
            if not allowed:
                await self._insufficient(needed, verdict.scopes, scope, receive, send)
                return
        if verdict.read_only:
            route = None if path == "/mcp" else self.write_name(scope)
            if route is not None:
                audit.refused(org, verdict.who, route)
                await self._read_only_key(verdict, scope, receive, send)
                return
            scope[READ_ONLY_SCOPE_KEY] = True  # /mcp: its writing tools are neither listed nor run (mcp/app.py)
        bounded = self._bounded(verdict, org, receive, send)
        scope[ORG_SCOPE_KEY], scope[WHO_SCOPE_KEY] = org, verdict.who
        scope[MAY_WRITE_SCOPE_KEY] = not verdict.read_only and (verdict.scopes is None or WRITE_SCOPE in verdict.scopes)
        fields = logs.request_fields.get()
        if fields is not None:
            fields["org"] = org
        if path == "/mcp":
            await self.sessions.serve(org, verdict.who, scope, bounded.receive, bounded.send, self.app)
        else:
            acting = audit.acting.set(verdict.who)  # a REST route runs in this task (/mcp's: org.py sets it)
            try:
                await self.app(scope, bounded.receive, bounded.send)
            finally:
                audit.acting.reset(acting)
        await bounded.complete()

    def _bounded(self, verdict: Verdict, org: str, receive: Receive, send: Send) -> Bounded:
        """What a request opens (an event stream, a listen) lasts as long as its bearer is accepted: a token
        until its `exp` (and the clock skew allowed), a key until it is revoked (looked at every
        REMEMBER_SECONDS, at a key remembered that long: within twice that of a revocation)."""
        if not verdict.key:  # a token
            until = (
                math.inf
                if verdict.expires_at is None or self.oauth is None
                else (verdict.expires_at + self.oauth.clock_skew)
            )

            async def unexpired() -> bool:
                return time.time() < until

            return Bounded(receive, send, lambda: until - time.time(), unexpired, "the token expired")
        store, key = self.server.state.store, verdict.key

        async def live() -> bool:
            if store is None:
                return True
            try:
                found = await store.verify_api_key(key)
            except ChatdockError:  # the keys cannot be read now: a stream is not ended for that
                return True
            return found is not None and found.org == org

        return Bounded(receive, send, lambda: REMEMBER_SECONDS, live, f"the key {prefix_of(key)} was revoked")

    async def _slow_down(self, wait: float, scope: Scope, receive: Receive, send: Send) -> None:
        seconds = math.ceil(wait)
        response = JSONResponse(
            {
                "error": "Too many failed keys",
                "message": f"too many requests with a wrong key from this address; "
                f"try again in {seconds} s with a valid key",
            },
            status_code=429,
            headers={"Retry-After": str(seconds)},
        )
        await response(scope, receive, send)

    async def _verify(self, scope: Scope) -> Verdict:
        """The bearer's organization (and a token's scopes), or why it is refused. A `cdk_` key is a key;
        with --oauth-issuer anything else is an access token (oauth.py)."""
        given = [value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"authorization"]
        if len(given) > 1:  # which one counts would be a proxy's guess or ours (found by a security review)
            return Verdict(None, "malformed", said=f"send one Authorization header, not {len(given)}")
        header = given[0] if given else ""
        if not header:
            if self.oauth is not None:  # most likely a hosted client finding out how to sign in
                said = (
                    f"send the header 'Authorization: Bearer <token>' with an access token from {self.oauth.issuer} "
                    "(WWW-Authenticate names this server's metadata), or a chatdock key"
                )
                return Verdict(None, "missing", said=said)
            return Verdict(None, "missing")
        scheme, _, bearer = header.partition(" ")
        bearer = bearer.strip()
        if scheme.lower() != "bearer" or not bearer:
            return Verdict(None, "malformed")
        if self.tokens is not None and not is_api_key(bearer):
            try:
                access = await self.tokens.verify(bearer)
            except TokenRefused as refused:
                return Verdict(None, "invalid_token", said=str(refused))
            return Verdict(
                str((access.claims or {})["org"]),
                scopes=frozenset(access.scopes),
                expires_at=access.expires_at,
                who=_who(access),
            )
        store = self.server.state.store
        if store is None:
            return Verdict(None, "not_ready")
        found = await store.verify_api_key(bearer)
        if found is None:
            return Verdict(None, "unknown")
        return Verdict(found.org, key=bearer, who=f"key {prefix_of(bearer)}", read_only=found.read_only)

    def _challenge(self, scope: Scope, *fields: str) -> str:
        """`WWW-Authenticate`: with OAuth on, where the protected-resource metadata is (RFC 9728 §5.1)."""
        parts = [f'realm="{REALM}"', *fields]
        if self.oauth is not None:
            path = "/mcp" if scope.get("path") in MCP_ENDPOINT else ""
            parts.insert(1, f'resource_metadata="{self.oauth.metadata_url(path)}"')
        return "Bearer " + ", ".join(parts)

    async def _reject(self, refusal: str, message: str, scope: Scope, receive: Receive, send: Send) -> None:
        # a header is latin-1: what the token carried (a kid, an alg) is spelled in ASCII escapes there
        # and within a quoted-string: a backslash doubled, a double quote as a single one (RFC 9110 §5.6.4)
        described = message.replace("\\", "\\\\").replace(chr(34), chr(39))
        described = described.encode("ascii", "backslashreplace").decode("ascii")
        if refusal == "missing":  # no error (RFC 6750 §3.1); with OAuth, the scopes to ask for (MCP authorization)
            fields = [] if self.oauth is None else [f'scope="{" ".join(SCOPES)}"']
        else:
            fields = ['error="invalid_token"', f'error_description="{described}"']
        response = JSONResponse(
            {"error": "Invalid token" if refusal == "invalid_token" else "Invalid API key", "message": message},
            status_code=401,
            headers={"WWW-Authenticate": self._challenge(scope, *fields)},
        )
        await response(scope, receive, send)

    async def _read_only_key(self, verdict: Verdict, scope: Scope, receive: Receive, send: Send) -> None:
        """403 to a write with a key that may only read; a key has no scope to ask for (no WWW-Authenticate)."""
        message = read_only_refusal(f"the key {prefix_of(verdict.key)}", f"this {scope.get('method')}")
        message += "; write with a key created without --read-only"
        await problem(403, "Read-only key", message)(scope, receive, send)

    async def _insufficient(
        self, needed: frozenset[str], granted: frozenset[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """403, naming what the token lacks; the challenge's `scope` is what it has of chatdock's and what it
        lacks (a client of the `initialize` era, the TypeScript SDK 1.x's, asks for the challenge's scopes in
        place of its own: named alone, a read after a write and a write after a read each sent the user to the
        authorization server again)."""
        lacking = [name for name in SCOPES if name in (needed or {READ_SCOPE}) and name not in granted]
        if needed == ANY_SCOPE:
            message = f"this token may not use chatdock: it has neither {' nor '.join(SCOPES)}"
        elif needed == READ_AND_WRITE and WRITE_SCOPE in granted:
            message = (
                "this token may not read what this write answers (a contact's identifiers, or with context_limit "
                f"its messages): it lacks the scope {READ_SCOPE}; use a token with both scopes (or leave "
                "context_limit out)"
            )
        else:
            what = "write" if WRITE_SCOPE in lacking else "read"
            message = f"this token may not {what}: it lacks the scope {' and '.join(lacking)}"
        asked = " ".join(name for name in SCOPES if name in granted or name in lacking)
        response = JSONResponse(
            {"error": "Insufficient scope", "message": message},
            status_code=403,
            headers={
                "WWW-Authenticate": self._challenge(
                    scope, 'error="insufficient_scope"', f'scope="{asked}"', f'error_description="{message}"'
                )
            },
        )
        await response(scope, receive, send)


async def scope_needed(
    scope: Scope, receive: Receive, read_only_tools: frozenset[str], route_name: Callable[[Scope], str | None]
) -> tuple[Receive, frozenset[str]]:
    """The scopes a request needs: `chatdock:read` for the REST reads and for MCP's reads, `chatdock:write` for
    the writing tools and the REST writes, both for a write whose answer hands out stored data (oauth.py's
    `write_needs`), either (ANY_SCOPE) for MCP's own steps that hand out no stored data (`initialize`, `ping`,
    the notifications, `tools/list`, ending the session: a write-only token's client must start and end its
    session; a token with neither scope opens none). A POST's JSON body is read to tell (at most 4 MiB, the
    request bound) and handed on unchanged: the returned `receive` replays it."""
    method = str(scope.get("method", "GET"))
    if scope.get("path") not in MCP_ENDPOINT:
        if method in ("GET", "HEAD"):
            return receive, READ
        if method != "POST":
            return receive, write_needs(route_name(scope), None)
        body, _ = await read_body(receive, MAX_BODY_BYTES)
        return replaying(body, receive), write_needs(route_name(scope), _parsed(body))
    if method == "DELETE":  # the end of the client's own session
        return receive, ANY_SCOPE
    if method != "POST":  # the session's stream of notifications: which contacts changed
        return receive, READ
    body, _ = await read_body(receive, MAX_BODY_BYTES)
    return replaying(body, receive), _scope_of_rpc(body, read_only_tools)


ANY_SCOPE: frozenset[str] = frozenset()  # what MCP's own steps need: a token of chatdock, either scope
NO_DATA_METHODS = frozenset({"initialize", "ping", "tools/list", "prompts/list", "logging/setLevel"})


def _parsed(body: bytes) -> object:
    """A body's JSON; None for one that is not JSON (the route or the MCP app refuses it; nothing is written)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return None


def _scope_of_rpc(body: bytes, read_only_tools: frozenset[str]) -> frozenset[str]:
    parsed = _parsed(body)
    if parsed is None:
        return READ
    calls = parsed if isinstance(parsed, list) else [parsed]
    needed = ANY_SCOPE
    for call in calls:
        method = call.get("method") if isinstance(call, dict) else None
        if method == "tools/call":
            params = call.get("params") if isinstance(call, dict) else None
            name = params.get("name") if isinstance(params, dict) else None
            if name in read_only_tools:
                needed = needed | READ
            else:
                arguments = params.get("arguments") if isinstance(params, dict) else None
                needed = needed | write_needs(name if isinstance(name, str) else None, arguments)
        elif not (isinstance(method, str) and (method in NO_DATA_METHODS or method.startswith("notifications/"))):
            needed = needed | READ  # a read, an answer to the server, or what the MCP app refuses
    return needed


def route_names(routes: Sequence[BaseRoute]) -> Callable[[Scope], str | None]:
    """The name of the REST route a request goes to (its function's: its tool's), before routing."""
    return lambda scope: getattr(route_for(routes, scope), "name", None)


def write_names(routes: Sequence[BaseRoute]) -> Callable[[Scope], str | None]:
    """The name of the REST write route that takes a request, path and method (None: no write takes it, and
    the router answers it as for any key: a 405, a 404)."""
    writes = [route for route in routes if is_write(route)]
    return lambda scope: next((getattr(r, "name", None) for r in writes if r.matches(scope)[0] is Match.FULL), None)


def _key_prefix(scope: Scope) -> str:
    """What may be logged of a presented bearer: a chatdock key's prefix (`cdk_` and its id), never the secret
    part; nothing of anything else (an opaque token's first characters are its secret's)."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            bearer = value.decode("latin-1").partition(" ")[2].strip()
            fields = bearer.split("_")
            if is_api_key(bearer) and len(fields) >= 3:
                return "_".join(fields[:2])[:20]
            return "a token" if bearer.count(".") == 2 else "a bearer not of chatdock's form"
    return "no key"


def transport_security(host: str, allowed_hosts: list[str]) -> TransportSecuritySettings:
    """DNS-rebinding protection stays on: loopback by default (the SDK's own defaults for a loopback host),
    named hosts otherwise."""
    if not allowed_hosts:
        if host in LOOPBACK:
            hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
            return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=[f"http://{h}" for h in hosts])
        raise InvalidInput(
            f"--host {host} is not a loopback address; name the Host headers clients will send with "
            "--allowed-host (for example --allowed-host chatdock.internal:8765) so DNS-rebinding protection stays on"
        )
    hosts = list(allowed_hosts)
    for entry in allowed_hosts:
        if ":" not in entry:
            hosts.append(f"{entry}:*")
    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


def build_http_app(
    settings: Settings,
    server: ChatdockServer,
    host: str = "127.0.0.1",
    allowed_hosts: list[str] | None = None,
    max_sessions_per_org: int = DEFAULT_MAX_SESSIONS_PER_ORG,
    metrics_port: int | None = None,
    metrics_host: str | None = None,
) -> ASGIApp:
    """The ASGI app: /mcp (both protocol eras, keys required), the REST routes, /healthz, /livez and, with
    `settings.metrics`, /metrics (only on `metrics_port`, when given), over `server`."""
    security = transport_security(host, allowed_hosts or [])

    checking: asyncio.Task[list[str]] | None = None  # the store's health check under way: probes share it
    insiders = networks(settings.metrics_clients)  # who /healthz tells why the store cannot serve

    @server.custom_route("/healthz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def healthz(request: Request) -> Response:
        nonlocal checking
        store = server.state.store
        if store is None:
            problems = ["the store is not open yet"]
        else:
            if checking is None or checking.done():
                checking = asyncio.ensure_future(store.health(not settings.read_only))
                checking.add_done_callback(lambda task: task.cancelled() or task.exception())  # heard, if late
            # a probe gives up after a second or few: the answer comes first. The check is not cancelled (a
            # cancelled PostgreSQL statement waits for the server to hear of it, on a hung server as long again)
            # but left to end, and the next probes wait on it rather than starting more
            finished, _late = await asyncio.wait({checking}, timeout=HEALTH_SECONDS)
            if finished:
                problems = checking.result()
            else:
                problems = [f"the database did not answer within {HEALTH_SECONDS:g} s (it hangs, or a lock is held)"]
        if problems and stranger(request.scope, insiders) is not None:  # the database's host or file: not theirs
            problems = [UNSAID]
        if problems:
            return JSONResponse({"status": "unavailable", "store": problems[0], "problems": problems}, status_code=503)
        return JSONResponse({"status": "ok", "store": "ok"})

    @server.custom_route("/livez", methods=["GET"])  # type: ignore[untyped-decorator]
    async def livez(_: Request) -> Response:
        """The process answers (the store is not asked): a liveness probe, and the bench's bare route."""
        return JSONResponse({"status": "ok"})

    def the_store() -> Store:
        if server.state.store is None:
            raise Unavailable("the store is not open yet; try again in a moment")
        return server.state.store

    mcp = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security, host=host)
    oauth = settings.oauth
    routes = build_rest(the_store, settings.read_only, server.events, None if oauth is None else oauth.issuer)
    sessions = SessionOwners(max_sessions_per_org, streams=server.events, max_streams_per_org=settings.max_listens)
    if settings.metrics is not None:
        settings.metrics.watch_sessions(sessions.held)
    tokens = None if oauth is None else JwtVerifier(oauth)
    metadata = None if tokens is None else Starlette(routes=tokens.metadata_routes(), exception_handlers=REFUSED)
    rest = BodyLimit(Lanes(routes))
    app = ApiKeyAuth(
        Dispatch(JsonTooLarge(mcp), rest, metadata),
        server,
        sessions,
        settings.metrics,
        tokens,
        route_names(routes.routes),
        write_names(routes.routes),
        insiders,
    )
    observed = ObservedHttp(
        app,
        settings.metrics,
        settings.tracing,
        routes.routes,
        MCP_PATHS,
        metrics_port,
        security=security,
        metrics_clients=settings.metrics_clients,
        # a metrics port on loopback answers loopback's names alone, as /mcp does (DNS rebinding); one on an
        # internal address answers the names scrapers give it (often its address), whoever reaches it
        metrics_security=transport_security(metrics_host, []) if metrics_host in LOOPBACK else None,
    )
    return CutOff(EncodedSlashes(observed), lambda: server.events.closing)


async def _refused(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 (text) in the one error shape, for the apps besides the REST routes'."""
    status = getattr(exc, "status_code", 404)
    if status == 405:
        return problem(405, "Method not allowed", f"{request.url.path} answers GET", getattr(exc, "headers", None))
    return problem(404, "Not found", NO_ROUTE)


REFUSED: Final = {404: _refused, 405: _refused}


class JsonTooLarge:
    """ASGI, around the MCP app: the SDK answers a body over its 4 MiB (the REST routes' bound too) with a text
    413; chatdock's JSON one instead, the shape every other refusal has (found by a security review)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def sending(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 413:
                replaced = True
                await too_large()(scope, receive, send)
            elif not replaced:  # (the SDK's text body is left out)
                await send(message)

        await self.app(scope, receive, sending)


class Dispatch:
    """ASGI: /mcp, /healthz, /livez and the lifespan to the MCP app; with OAuth on, the protected-resource
    metadata to its routes; every other path to the REST routes."""

    def __init__(self, mcp: ASGIApp, rest: ASGIApp, metadata: ASGIApp | None = None) -> None:
        self.mcp = mcp
        self.rest = rest
        self.metadata = metadata

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] == "http" and path in PROBES and scope.get("method") not in ("GET", "HEAD"):
            # Starlette's own 405 is text: the probes answer in the one error shape, as every route does
            refused = problem(405, "Method not allowed", f"{path} answers GET", headers={"Allow": "GET, HEAD"})
            await refused(scope, receive, send)
        elif scope["type"] != "http" or path in MCP_PATHS:
            await self.mcp(scope, receive, send)
        elif self.metadata is not None and path.startswith(METADATA_PATH):
            await self.metadata(scope, receive, send)
        elif scope.get("method") == "HEAD" and not streamed(path):  # a read's headers (RFC 9110 §9.3.2): its GET,
            await self.rest({**scope, "method": "GET"}, receive, _headers_only(send))  # without the body
        else:
            await self.rest(scope, receive, send)


class Bounded:
    """The receive and send of a request whose bearer may stop being accepted while what it opened (an event
    stream, a listen, an initialize-era session's stream) goes on: once the request's body is read, `receive`
    looks every `every()` seconds whether `accepted()`, and when not, tells the app the client went away; the
    app ends its stream, `complete()` then sends the stream's last (empty) chunk, so the client sees it end
    cleanly, and its reconnection gets the bearer's 401. A short request asks nothing more."""

    def __init__(
        self,
        receive: Receive,
        send: Send,
        every: Callable[[], float],
        accepted: Callable[[], Awaitable[bool]],
        why: str,
    ) -> None:
        self._receive, self._send = receive, send
        self.every, self.accepted, self.why = every, accepted, why
        self._read = False  # the request's body is read
        self._cut = False  # the app was told the client went away
        self._open = False  # an answer started and not ended

    async def receive(self) -> Message:
        if not self._read:
            message = await self._receive()
            self._read = message["type"] != "http.request" or not message.get("more_body", False)
            return message
        while True:
            with anyio.move_on_after(max(0.0, self.every())):
                return await self._receive()
            if not await self.accepted():
                logger.info("ended a stream: %s", self.why)
                self._cut = True
                return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._open = True
        elif kind == "http.response.body" and not message.get("more_body", False):
            self._open = False
        await self._send(message)

    async def complete(self) -> None:
        """The last chunk of an answer the app left open when it was told the client went away."""
        if self._cut and self._open:
            self._open = False
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})


def _headers_only(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return sending


@dataclass
class HttpLimits:
    """How long and how many: the bounds that keep slow or hostile clients from taking the server down."""

    read_timeout: float = 10.0  # seconds for a request's headers, and the longest pause inside its body
    max_connections: int | None = None  # default: as many as the file limit allows
    shutdown_seconds: float = 3.0  # after SIGTERM, how long open requests and streams may take to end
    max_sessions_per_org: int = DEFAULT_MAX_SESSIONS_PER_ORG  # initialize-era sessions an organization may hold


def serve_http(
    settings: Settings,
    host: str,
    port: int,
    allowed_hosts: list[str],
    limits: HttpLimits | None = None,
    factory: Callable[[Settings, Store], ChatdockServer] = build_server,
    metrics_at: tuple[str, int] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; a failure to start raises ChatdockError with a one-line cause. With
    `metrics_at` (host, port), /metrics is served there instead of on the main listener."""
    try:
        anyio.run(_serve_http, settings, host, port, allowed_hosts, limits or HttpLimits(), factory, metrics_at)
    except StoppedStarting:
        logger.warning("stopped before serving: SIGTERM came while the store was opening")


async def _serve_http(
    settings: Settings,
    host: str,
    port: int,
    allowed_hosts: list[str],
    limits: HttpLimits,
    factory: Callable[[Settings, Store], ChatdockServer],
    metrics_at: tuple[str, int] | None,
) -> None:
    import uvicorn

    from chatdock.server.http.guard import (
        ACCEPT_BURST,
        connection_bound,
        guarded_protocol,
        listening_socket,
        raise_file_limit,
    )

    transport_security(host, allowed_hosts)  # refuse a bad --host before opening anything
    files = raise_file_limit()
    sock = listening_socket(host, port)
    port = sock.getsockname()[1]  # the port itself when --port 0 asked for any free one
    sockets = [sock]
    try:
        metrics_port = None
        if metrics_at is not None:  # one server on both sockets: one lifetime, one way to stop (ObservedHttp)
            metrics_host, wanted_port = metrics_at
            sockets.append(listening_socket(metrics_host, wanted_port, ("--metrics-host", "--metrics-port")))
            metrics_port = sockets[-1].getsockname()[1]
        async with contextlib.AsyncExitStack() as opened:
            with _stoppable_start():
                store = await opened.enter_async_context(settings.open_store())
            server = factory(settings, store)
            app = build_http_app(
                settings,
                server,
                host,
                allowed_hosts,
                limits.max_sessions_per_org,
                metrics_port,
                None if metrics_at is None else metrics_at[0],
            )
            connections = connection_bound(limits.max_connections, files)
            if connections <= 2 * settings.max_listens:
                logger.warning(
                    "--max-connections %d is not above twice --max-listens-per-org %d: one organization's listen "
                    "streams and its sessions' event streams (each holds a connection; it may hold that many of "
                    "each) could take every connection from the others; raise the first or lower the second",
                    connections,
                    settings.max_listens,
                )
            config = uvicorn.Config(
                app,
                log_level="warning",
                log_config=None,  # uvicorn's lines go through chatdock's handler (one line each, repeats summed up)
                lifespan="on",
                http=guarded_protocol(limits.read_timeout, connections),
                timeout_graceful_shutdown=max(1, round(limits.shutdown_seconds)),
                timeout_keep_alive=IDLE_CONNECTION_SECONDS,
                backlog=ACCEPT_BURST,
                # a client's address is the socket's, unless the operator names the proxies in front
                proxy_headers=bool(settings.trusted_proxies),
                forwarded_allow_ips=settings.trusted_proxies or None,
            )
            logger.warning("chatdock serving MCP at http://%s:%d/mcp (health: /healthz)", host, port)
            if metrics_at is not None:
                logger.warning("chatdock serving metrics at http://%s:%d/metrics", metrics_at[0], metrics_port)
            loop = asyncio.get_running_loop()
            served = _uvicorn_server()(config, lambda: loop.call_soon_threadsafe(server.events.close))
            settle_collector()
            with _signals_after_close():
                await served.serve(sockets=sockets)
    finally:
        for each in sockets:
            each.close()


def _uvicorn_server() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, telling `on_exit` when a signal asks it to stop (before it waits for open
        requests to end): the event streams end then, instead of holding the shut-down to its grace period."""

        def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
            super().__init__(config)
            self.on_exit = on_exit

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            self.on_exit()

    return Server


class StoppedStarting(Exception):
    """SIGTERM came while the store was opening: the start ends there, serving nothing."""


@contextlib.contextmanager
def _stoppable_start() -> Iterator[None]:
    """SIGTERM while the store opens (a migration, another replica's migration lock, a database that does not
    answer yet) ends the start (StoppedStarting). A container's first process, PID 1, gets no signal that no
    handler takes: a pod deleted while it started ran on, served, and was killed at the end of its grace period
    (found by an SRE's review). A PostgreSQL migration cut off is rolled back whole; SQLite's, on its writer's
    thread, ends first. (A signal's callback runs between the task's steps, so a cancel it asks is delivered at
    an await of the open.)"""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    asked: list[bool] = []
    assert task is not None

    def stop() -> None:
        if not asked:  # once: a second SIGTERM does not cancel the way out
            asked.append(True)
            task.cancel()

    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:  # a supervisor that wants it ignored
            raise NotImplementedError
        loop.add_signal_handler(signal.SIGTERM, stop)
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, a thread not the main one: as before
        yield
        return
    try:
        yield
    except asyncio.CancelledError:
        if asked:
            raise StoppedStarting from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


@contextlib.contextmanager
def _signals_after_close() -> Iterator[None]:
    """uvicorn raises the SIGTERM or SIGINT it shut down for again as soon as it has stopped serving, which
    with the default handlers ends the process before the store is closed (the SQLite log is then left
    behind, uncheckpointed). Here that second raise finds a handler that ignores it, so the store closes
    first and the command then exits normally."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
