"""The store in this process, behind the same interface as a server (`ChatdockClient.embedded`).

A single voice worker may want no server to run. Its client opens the store itself and calls the REST routes
in-process (httpx2's ASGI transport, no socket): every rule, answer and error is the server's own, with no
second code path to keep in step; the organization is the one given, as `chatdock serve` over stdio does.
Changes are heard as the server hears them: this process's own writes at commit, other processes' (a
`chatdock serve` on the same database, a replica) by following the store's change feed while someone watches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx2
from mcp.shared.exceptions import MCPError
from starlette.types import ASGIApp, Receive, Scope, Send

from chatdock.server.http.rest import BodyLimit, EncodedSlashes, build_rest, status_of
from chatdock.server.mcp.events import Events
from chatdock.server.mcp.org import ORG_SCOPE_KEY
from chatdock.server.settings import Settings
from chatdock.storage import ChatdockError
from chatdock.storage import validation as check

from .client import Changed
from .errors import NOT_OPEN, UNAVAILABLE, ChatdockApiError


class InProcess:
    """The store at `db`, its REST routes for `org` and its change events, while open."""

    def __init__(self, db: str, org: str) -> None:
        self.settings = Settings(db=db, org=org)
        self._events: Events | None = None
        self._stack: AsyncExitStack | None = None

    @property
    def is_open(self) -> bool:
        return self._stack is not None

    async def open(self) -> httpx2.AsyncClient:
        """The in-process client of the store's REST routes; `ChatdockApiError` (503 when the database cannot be
        opened or reached) in the server's words when the store cannot be opened."""
        try:
            return await self._open()
        except ChatdockError as exc:
            raise ChatdockApiError(*status_of(exc), str(exc)) from None

    async def _open(self) -> httpx2.AsyncClient:
        async with AsyncExitStack() as stack:
            store = await stack.enter_async_context(self.settings.open_store())
            events = Events(self.settings.max_listens)
            stack.callback(store.announce_to(events.deliver))
            await stack.enter_async_context(store.following(events.deliver, events.wanted))
            routes = build_rest(lambda: store, read_only=False, events=events)
            # as the HTTP app routes a %2F and bounds a body (app.py)
            app = EncodedSlashes(BodyLimit(_AsOrg(routes, self.settings.org)))
            transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
            self._events = events
            self._stack = stack.pop_all()
        return httpx2.AsyncClient(transport=transport)

    async def close(self) -> None:
        stack, events, self._stack, self._events = self._stack, self._events, None, None
        if events is not None:
            events.close()  # every watch is woken, finds it closing, and ends (as over HTTP)
        if stack is not None:
            await stack.aclose()

    @asynccontextmanager
    async def watch(self, contact_id: str) -> AsyncIterator[AsyncIterator[Changed]]:
        if self._events is None:
            raise ChatdockApiError(503, UNAVAILABLE, NOT_OPEN, retryable=False)
        try:
            contact_id = check.contact_id(contact_id)
        except ChatdockError as exc:
            raise ChatdockApiError(*status_of(exc), str(exc)) from None
        changed = asyncio.Event()
        try:
            stop = self._events.watch_contact(self.settings.org, contact_id, changed.set)
        except MCPError as exc:
            raise ChatdockApiError(429, "Too many listeners", exc.error.message) from None
        try:
            yield _changes(contact_id, changed, self._events)
        finally:
            stop()


async def _changes(contact_id: str, changed: asyncio.Event, events: Events) -> AsyncIterator[Changed]:
    while True:
        await changed.wait()
        changed.clear()
        if events.closing:  # the client was closed: its watches end with it
            return
        yield Changed(contact_id)


class _AsOrg:
    """ASGI: every request acts for one organization, as a key of that organization would have it."""

    def __init__(self, app: ASGIApp, org: str) -> None:
        self.app = app
        self.org = org

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scoped: MutableMapping[str, Any] = {**scope, ORG_SCOPE_KEY: self.org}
        await self.app(scoped, receive, send)
