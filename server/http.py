"""Streamable HTTP at /mcp behind API keys, with /healthz beside it.

`ApiKeyAuth` wraps the SDK's Starlette app: every request to /mcp needs
`Authorization: Bearer <key>`; a missing, malformed, unknown or revoked key
gets 401 before anything of the request runs. A valid key's organization is
put into the ASGI scope (`ORG_SCOPE_KEY`), from where `OrgMiddleware` scopes
the request's tools, resources and events.
"""

from __future__ import annotations

import logging

import anyio
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from chatdock.storage import InvalidInput

from .app import ChatdockServer, Settings, build_server
from .org import ORG_SCOPE_KEY

logger = logging.getLogger("chatdock.http")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
REALM = "chatdock"


class ApiKeyAuth:
    """ASGI middleware: bearer API key in, organization into the scope, or 401 out."""

    def __init__(self, app: ASGIApp, server: ChatdockServer, protected_prefix: str = "/mcp") -> None:
        self.app = app
        self.server = server
        self.protected_prefix = protected_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(self.protected_prefix):
            await self.app(scope, receive, send)
            return
        scope.pop(ORG_SCOPE_KEY, None)
        org, problem = await self._verify(scope)
        if org is None:
            await self._reject(problem, scope, receive, send)
            return
        scope[ORG_SCOPE_KEY] = org
        await self.app(scope, receive, send)

    async def _verify(self, scope: Scope) -> tuple[str | None, str]:
        header = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if not header:
            return None, "send the header 'Authorization: Bearer <key>'; create a key with `chatdock keys create`"
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None, "the Authorization header must read 'Bearer <key>'"
        store = self.server.state.store
        if store is None:
            return None, "the server is not ready yet; try again"
        org = await store.verify_api_key(key.strip())
        if org is None:
            return None, "the key is unknown or revoked; `chatdock keys list` shows the live keys"
        return org, ""

    async def _reject(self, message: str, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"error": "Invalid API key", "message": message},
            status_code=401,
            headers={
                "WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token", '
                f'error_description="{message.replace(chr(34), chr(39))}"'
            },
        )
        await response(scope, receive, send)


def transport_security(host: str, allowed_hosts: list[str]) -> TransportSecuritySettings | None:
    """DNS-rebinding protection stays on: loopback by default, named hosts otherwise."""
    if not allowed_hosts:
        if host in LOOPBACK:
            return None  # the SDK's loopback defaults
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
    host: str = "127.0.0.1",
    allowed_hosts: list[str] | None = None,
    server: ChatdockServer | None = None,
) -> ASGIApp:
    """The ASGI app: /mcp (both protocol eras, keys required) and /healthz; `server` defaults to
    `build_server(settings)`."""
    security = transport_security(host, allowed_hosts or [])
    server = server or build_server(settings)

    @server.custom_route("/healthz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def healthz(_: Request) -> Response:
        store = server.state.store
        try:
            if store is None:
                raise RuntimeError("store not open")
            await store.ping()
        except Exception as exc:  # the health check reports any failure as unhealthy, with its reason
            return JSONResponse({"status": "unavailable", "store": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "store": "ok"})

    app = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security, host=host)
    return ApiKeyAuth(app, server)


def serve_http(
    settings: Settings, host: str, port: int, allowed_hosts: list[str], server: ChatdockServer | None = None
) -> None:
    import uvicorn

    app = build_http_app(settings, host, allowed_hosts, server)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    listener = uvicorn.Server(config)
    logger.warning("chatdock serving MCP at http://%s:%d/mcp (health: /healthz)", host, port)
    anyio.run(listener.serve)
