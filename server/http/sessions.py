"""Who opened each `initialize`-era HTTP session (an organization's key, or a user of its tokens), so that no
other key or user can use or end it, and how many each organization holds (at most `max_per_org`, so one
cannot fill the process's pool).

The SDK keeps the sessions (`mcp-session-id`) and reaps one that has had no request for its idle timeout;
this table notes each session's owner when the SDK opens it, forgets it when the client ends it, and
counts a session as gone once it has been idle that long with no request open.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Protocol

from mcp.server.streamable_http_manager import DEFAULT_SESSION_IDLE_TIMEOUT
from mcp_types import INVALID_REQUEST, ErrorData, JSONRPCError
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from chatdock.server.http.rest import read_body, replaying

SESSION_HEADER = b"mcp-session-id"
DEFAULT_MAX_SESSIONS_PER_ORG = 1_000
RETRY_AFTER = 5  # seconds a session refused at its organization's bound is asked to wait


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _opens_a_session(body: bytes) -> bool:
    """Whether a POST without a session asks to open one: an `initialize` request (alone or in a batch)."""
    try:
        sent = json.loads(body)
    except (ValueError, RecursionError):
        return False  # the SDK answers it with its parse error, and opens nothing
    return any(
        isinstance(item, dict) and item.get("method") == "initialize" for item in ([sent], sent)[isinstance(sent, list)]
    )


def _refusal(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    """A JSON-RPC error body without a request id, as the SDK answers for sessions."""
    body = JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=INVALID_REQUEST, message=message))
    dumped = body.model_dump_json(by_alias=True, exclude_unset=True)
    return Response(dumped, status, headers=headers, media_type="application/json")


class EventStreams(Protocol):
    """Who is told when a session's event stream opens and ends (mcp/events.py's Events)."""

    def stream_opened(self, session: str) -> None: ...
    def stream_closed(self, session: str) -> None: ...


class SessionOwners:
    def __init__(
        self,
        max_per_org: int = DEFAULT_MAX_SESSIONS_PER_ORG,
        idle: float = DEFAULT_SESSION_IDLE_TIMEOUT,
        streams: EventStreams | None = None,
        max_streams_per_org: int | None = None,
    ):
        self.max_per_org = max_per_org
        self.idle = idle
        self.streams = streams  # told when a session's event stream (a GET) opens and ends
        # each holds a connection: at most this many open at once per organization (--max-listens-per-org), so
        # that one organization's sessions cannot take every connection the server has
        self.max_streams_per_org = max_streams_per_org
        self._streaming: Counter[str] = Counter()  # event streams open, per organization
        self._owner: dict[str, tuple[str, str]] = {}  # session: (organization, who within it)
        self._seen: dict[str, float] = {}
        self._open: Counter[str] = Counter()  # requests under way, per session

    def _alive(self, session: str, now: float) -> bool:
        return self._open[session] > 0 or now - self._seen.get(session, now) < self.idle

    def held(self) -> Counter[str]:
        """How many live sessions each organization holds (for /metrics)."""
        now = time.monotonic()
        return Counter(org for session, (org, _) in self._owner.items() if self._alive(session, now))

    def _held_by(self, org: str) -> int:
        now = time.monotonic()
        for session in [s for s, (owner, _) in self._owner.items() if owner == org and not self._alive(s, now)]:
            self._forget(session)
        return sum(1 for owner, _ in self._owner.values() if owner == org)

    def _forget(self, session: str) -> None:
        self._owner.pop(session, None)
        self._seen.pop(session, None)
        self._open.pop(session, None)

    async def serve(self, org: str, who: str, scope: Scope, receive: Receive, send: Send, app: object) -> None:
        """Serve one request of `who` (a key, a token's subject) of `org` through `app`, keeping its session to
        the one who opened it (MCP's security practices: a session id bound to its user)."""
        session = _header(scope, SESSION_HEADER)
        if session is not None:
            owner = self._owner.get(session)
            if owner is not None and owner != (org, who):  # the same answer as for a session that does not exist
                await _refusal("Session not found", 404)(scope, receive, send)
                return
        # an event stream's place is taken as its GET arrives (many sent at once are each counted before any is
        # answered) and given back when its request ends, however it ended
        stream = session if scope.get("method") == "GET" else None  # the session whose event stream this opens
        bound = self.max_streams_per_org
        if stream is not None and bound is not None and self._streaming[org] >= bound:
            refused = (
                f"this organization already has {bound} event streams open (GET /mcp), the most "
                "allowed; close one (or end its session) and try again"
            )
            await _refusal(refused, 429, {"Retry-After": str(RETRY_AFTER)})(scope, receive, send)
            return
        if session is None and scope.get("method") == "POST" and self._held_by(org) >= self.max_per_org:
            # only a request that would open one more is refused: a 2026-07-28 client's calls open none
            body, gone = await read_body(receive)
            if not gone and not _opens_a_session(body):
                receive = replaying(body, receive)
            else:
                refused = (
                    f"this organization already has {self.max_per_org} sessions open, the most allowed; end one "
                    "(DELETE /mcp with its mcp-session-id) or wait for an idle one to expire"
                )
                await _refusal(refused, 429, {"Retry-After": str(RETRY_AFTER)})(scope, receive, send)
                return
        status = 0
        opening: asyncio.Handle | None = None

        async def noting(message: Message) -> None:
            nonlocal status, opening
            if message["type"] == "http.response.start":
                status = int(message["status"])
                opened = _header({"headers": message.get("headers", [])}, SESSION_HEADER)
                if session is None and opened is not None and status < 400:
                    self._owner[opened] = (org, who)
                    self._seen[opened] = time.monotonic()
                elif stream is not None and status == 200 and self.streams is not None:
                    # called back once the tasks ready now have run: the SDK's stream task (started with the
                    # answer's, before this start was sent) files the stream in its first step
                    opening = asyncio.get_running_loop().call_soon(self.streams.stream_opened, stream)
            await send(message)

        if session is not None:
            self._open[session] += 1
        if stream is not None:
            self._streaming[org] += 1
        try:
            await app(scope, receive, noting)  # type: ignore[operator]
        finally:
            if stream is not None:
                self._streaming[org] -= 1
            if stream is not None and status == 200 and self.streams is not None:
                if opening is not None:
                    opening.cancel()  # a stream that ended before it was told open: never told open
                self.streams.stream_closed(stream)
            if session is not None:
                self._open[session] -= 1
                self._seen[session] = time.monotonic()
                if (scope.get("method") == "DELETE" and status < 400) or status == 404:
                    self._forget(session)  # ended by its client, or already reaped by the SDK
