"""Which organization a request acts for.

Over stdio the organization is the one the server was started with. Over
HTTP the auth layer (`server.http`) puts the API key's organization into the
ASGI scope under `ORG_SCOPE_KEY`, where a client cannot write; the server
middleware below copies it into `current_org` for the handler's task, so
tools, resources and the event index (events.py) all read the same value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp_types import SubscriptionFilter, SubscriptionsListenRequestParams
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from chatdock.storage import audit

logger = logging.getLogger("chatdock.server")

STDIO_CLIENT = "the stdio client"  # who acts over stdio (the local user's MCP client)
HTTP_CLIENT = "an HTTP client"  # over HTTP, where the key check named no one (a server built without it)

ORG_SCOPE_KEY = "chatdock.org"
WHO_SCOPE_KEY = "chatdock.who"  # ... and who within it (a key by its prefix, a token's subject): for the audit log
READ_ONLY_SCOPE_KEY = "chatdock.read_only"  # True for a key that may only read (`keys create --read-only`)
MAY_WRITE_SCOPE_KEY = "chatdock.may_write"  # whether the key or token may write (GET /whoami says so)

current_org: ContextVar[str] = ContextVar("chatdock_org")
# Whether the request's key may only read: its session is offered, and may call, the reading tools alone.
reading_only: ContextVar[bool] = ContextVar("chatdock_reading_only", default=False)

# The filter of the subscriptions/listen request being served, for the event index (events.py).
listening: ContextVar[SubscriptionFilter | None] = ContextVar("chatdock_listening", default=None)


def from_scope(request: object, default: str, key: str = ORG_SCOPE_KEY) -> str:
    """What the auth layer put in the request's scope under `key` (its organization, or who); else `default`."""
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict):
        found = scope.get(key)
        if isinstance(found, str):
            return found
    return default


class OrgMiddleware:
    """Sets `current_org` for every inbound message, from the auth layer's verdict or the default (and who acts,
    for the audit log: storage/audit.py; and whether its key may only read); for a
    `subscriptions/listen` request also `listening` (its filter); and tells `on_listing` of an
    `initialize`-era session that lists the resources (it will want to hear when the listing changes)."""

    def __init__(self, default_org: str, on_listing: Callable[[str, Any, Any], None] | None = None) -> None:
        self.default_org = default_org
        self.on_listing = on_listing

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        org = from_scope(ctx.request, self.default_org)
        token = current_org.set(org)
        scope = getattr(ctx.request, "scope", None)
        over_http = isinstance(scope, dict)
        who = audit.acting.set(from_scope(ctx.request, HTTP_CLIENT, WHO_SCOPE_KEY) if over_http else STDIO_CLIENT)
        reads = reading_only.set(isinstance(scope, dict) and scope.get(READ_ONLY_SCOPE_KEY) is True)
        wants = listening.set(_listen_filter(ctx) if ctx.method == "subscriptions/listen" else None)
        try:
            if (
                ctx.method == "resources/list"
                and self.on_listing is not None
                and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
            ):
                self.on_listing(org, ctx.session, ctx.request)
            return await call_next(ctx)
        finally:
            listening.reset(wants)
            reading_only.reset(reads)
            audit.acting.reset(who)
            current_org.reset(token)


def _listen_filter(ctx: ServerRequestContext[Any, Any]) -> SubscriptionFilter | None:
    try:
        return SubscriptionsListenRequestParams.model_validate(ctx.params or {}).notifications
    except ValidationError:
        return None  # the SDK's handler answers the malformed request itself
