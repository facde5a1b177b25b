"""Which organization a request acts for, and change events that never cross organizations.

Over stdio the organization is the one the server was started with. Over
HTTP the auth layer (`server.http`) puts the API key's organization into the
ASGI scope under `ORG_SCOPE_KEY`, where a client cannot write; the server
middleware below copies it into `current_org` for the handler's task, so
tools, resources and the subscription bus all read the same value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.subscriptions import ServerEvent

logger = logging.getLogger("chatdock.server")

ORG_SCOPE_KEY = "chatdock.org"

current_org: ContextVar[str] = ContextVar("chatdock_org")


def request_org(request: object, default: str) -> str:
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict):
        org = scope.get(ORG_SCOPE_KEY)
        if isinstance(org, str):
            return org
    return default


class OrgMiddleware:
    """Sets `current_org` for every inbound message, from the auth layer's verdict or the default."""

    def __init__(self, default_org: str) -> None:
        self.default_org = default_org

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        token = current_org.set(request_org(ctx.request, self.default_org))
        try:
            return await call_next(ctx)
        finally:
            current_org.reset(token)


class OrgScopedBus:
    """A `SubscriptionBus` that delivers an event only to listeners of the organization that published it."""

    def __init__(self) -> None:
        self._listeners: dict[object, tuple[str | None, Callable[[ServerEvent], None]]] = {}

    async def publish(self, event: ServerEvent) -> None:
        org = current_org.get(None)
        for listener_org, listener in list(self._listeners.values()):
            if listener_org != org:
                continue
            try:
                listener(event)
            except Exception:  # fan-out boundary: one broken stream must not starve the others
                logger.exception("subscription listener raised; continuing")

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        token = object()
        self._listeners[token] = (current_org.get(None), listener)

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe
