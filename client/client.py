"""`ChatdockClient`: the tools of chatdock as async methods, over its REST API or over a store in this process.

Each method bears a tool's name and takes the tool's arguments, and returns the model the server answers
with (chatdock.storage's pydantic models). Writes also take `idempotency_key=`: a retry of the same write
with the same key is stored once, on any replica, after a restart too; without one the client makes a key
per call, so its own retries are safe.

HTTP goes through httpx2, the HTTP client the MCP SDK already installs: one pool of keep-alive connections
per client (a voice turn does not pay a TCP handshake), per-phase timeouts, streaming for the event stream,
HTTP/2 when given an `httpx2.AsyncClient(http2=True)` in front of a TLS proxy that speaks it (chatdock's own
server, uvicorn, speaks HTTP/1.1, where the pool does the keeping alive).

What is retried, and when: a request that never left (the connection could not be made) always; one that
left and got no answer, or got 502/503/504, only when repeating it is harmless: reads, `update_chat`, and
POSTs (each carries an Idempotency-Key); a 429 waits for its Retry-After. A DELETE that may have been carried
out is not repeated: its second answer would be a misleading 404.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx2
from pydantic import BaseModel, ValidationError

from chatdock.storage import (
    AppendedMessage,
    Chat,
    ChatList,
    ContactInfo,
    Context,
    DeletedMessage,
    ForgetResult,
    InvalidInput,
    MessagePage,
    Part,
    StoredMessage,
)
from chatdock.storage import validation as check
from chatdock.storage.models import ChatWithMessages, LinkResult, SearchPage

from .errors import NOT_OPEN, UNAVAILABLE, ChatdockApiError

if TYPE_CHECKING:
    from .embedded import InProcess

M = TypeVar("M", bound=BaseModel)

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 2
LONGEST_WAIT = 2.0  # seconds between two tries at most, whatever a Retry-After asks
# an event stream sends a comment line every 15 s: three missed ones mean the connection is gone
EVENT_STREAM_SILENCE = 45.0
# failures before a request left: retried whatever the request, and said to have sent nothing
NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout, httpx2.LocalProtocolError)
VISIBLE = re.compile(check.IDEMPOTENCY_KEY_PATTERN)  # visible ASCII: what a key, as an Idempotency-Key, is made of


@dataclass(frozen=True)
class Changed:
    """Something of the contact changed (a message on any channel, a delete, a link, a chat's status...):
    read again. Changes coalesce; one may also come after a reconnection, when some may have been missed."""

    contact_id: str


class ChatdockClient:
    """An async client of chatdock: `ChatdockClient(url, api_key)` for a running server (`url` its base URL,
    such as http://127.0.0.1:8765), `ChatdockClient.embedded(db=...)` for a store in this process. Use it as
    `async with client:` (or call `aclose()`); the embedded one opens its store there."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float | None = None,
        retries: int = DEFAULT_RETRIES,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be chatdock's address starting with http:// or https://, got {url!r}")
        if api_key and not VISIBLE.fullmatch(api_key):  # a header cannot carry it (a key read with its newline)
            raise ValueError(
                "api_key must be the key as `chatdock keys create` printed it, without spaces or a line break "
                "(strip what is read from a file)"
            )
        self.url = url.rstrip("/")
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self.retries = retries
        # an idle connection is let go before chatdock closes it (after 5 s), so no request is sent on a connection
        # the server is closing at that moment (a write would then need its idempotent retry); a client of the
        # caller's own keeps its settings, but for `timeout` when one is given
        limits = httpx2.Limits(keepalive_expiry=4.0)
        self._http = http_client or httpx2.AsyncClient(timeout=self.timeout, limits=limits)
        if http_client is not None and timeout is not None:
            self._http.timeout = httpx2.Timeout(timeout)
        self._http.base_url = httpx2.URL(self.url)
        self._http.headers["Authorization"] = f"Bearer {api_key}"
        self._in_process: InProcess | None = None

    @classmethod
    def embedded(cls, db: str, *, org: str = "default") -> ChatdockClient:
        """The same interface over the store at `db` (a SQLite path or a postgresql:// URL), opened in this
        process when the client is entered: the REST routes are called without a socket, so the rules, the
        answers and the errors are the server's own; changes made by other processes are heard too."""
        from .embedded import InProcess  # the server's modules, loaded only by those who embed it

        client = cls("http://chatdock.embedded", "", retries=0)
        client._in_process = InProcess(db, org)
        return client

    async def __aenter__(self) -> ChatdockClient:
        if self._in_process is not None:
            self._http = await self._in_process.open()
            self._http.base_url = httpx2.URL(self.url)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._in_process is not None:
            await self._in_process.close()

    # --- messages ---

    async def append_message(
        self,
        contact_id: str,
        channel: str,
        role: str,
        content: str,
        agent_id: str | None = None,
        chat_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        created_at: datetime | str | None = None,
        context_limit: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> AppendedMessage:
        """Store one message; with `context_limit`, `.context` is the contact's context right after it.
        `created_at`: a timezone-aware datetime, or RFC 3339 text as the tool takes it."""
        if metadata is not None:  # what JSON cannot carry (NaN, a datetime) is refused in the tool's words
            _checked(check.metadata, metadata)
        body = _present(
            contact_id=contact_id,
            channel=channel,
            role=role,
            content=content,
            agent_id=agent_id,
            chat_id=chat_id,
            metadata=metadata,
            created_at=created_at.isoformat() if isinstance(created_at, datetime) else created_at,
            context_limit=context_limit,
        )
        return await self._call(AppendedMessage, "POST", "/chats", body=body, key=idempotency_key)

    async def post_as_contact(
        self,
        contact_id: str,
        chat_id: str,
        message: Sequence[Part | Mapping[str, Any]],
        channel_id: str | None = None,
        context_limit: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> StoredMessage:
        """Post into a chat as the contact (role user); with `context_limit`, `.context` as for an append. The
        parts: `Part`s, or mappings of their fields as the tool takes them (`{"type": "text", "text": ...}`)."""
        body = _present(
            message=[part.model_dump(mode="json") if isinstance(part, Part) else dict(part) for part in message],
            channel_id=channel_id,
            context_limit=context_limit,
        )
        path = f"/contacts/{_segment(contact_id)}/chats/{_segment(chat_id, 'chat_id')}/messages"
        chat = await self._call(ChatWithMessages, "POST", path, body=body, key=idempotency_key)
        return StoredMessage(**chat.messages[0].model_dump(), context=chat.context)

    async def get_context(
        self,
        contact_id: str,
        agent_id: str | None = None,
        chat_id: str | None = None,
        limit: int = 50,
        roles: Sequence[str] | None = None,
        channels: Sequence[str] | None = None,
        max_chars: int | None = None,
    ) -> Context:
        params = _present(
            contact_id=contact_id,
            agent_id=agent_id,
            chat_id=chat_id,
            limit=limit,
            roles=None if roles is None else ",".join(roles),
            channels=None if channels is None else ",".join(channels),
            max_chars=max_chars,
        )
        return await self._call(Context, "GET", "/chats/context", params=params)

    async def list_messages(
        self,
        contact_id: str,
        limit: int = 50,
        cursor: str | None = None,
        agent_id: str | None = None,
        chat_id: str | None = None,
        channel: str | None = None,
    ) -> MessagePage:
        params = _present(
            contact_id=contact_id, limit=limit, cursor=cursor, agent_id=agent_id, chat_id=chat_id, channel=channel
        )
        return await self._call(MessagePage, "GET", "/chats", params=params)

    async def search_messages(
        self,
        query: str,
        contact_id: str | None = None,
        channel: str | None = None,
        role: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> SearchPage:
        params = _present(q=query, contact_id=contact_id, channel=channel, role=role, limit=limit, cursor=cursor)
        return await self._call(SearchPage, "GET", "/chats/search", params=params)

    async def delete_message(self, message_id: str) -> DeletedMessage:
        return await self._call(DeletedMessage, "DELETE", f"/chats/{_segment(message_id, 'message_id')}")

    # --- chats ---

    async def open_chat(
        self, contact_id: str, channel: str, agent_id: str | None = None, *, idempotency_key: str | None = None
    ) -> Chat:
        body = _present(channel=channel, agent_id=agent_id)
        path = f"/contacts/{_segment(contact_id)}/chats"
        return await self._call(Chat, "POST", path, body=body, key=idempotency_key)

    async def update_chat(self, chat_id: str, status: str) -> Chat:
        return await self._call(Chat, "PATCH", f"/chats/status/{_segment(chat_id, 'chat_id')}", body={"status": status})

    async def list_chats(self, contact_id: str, limit: int = 50) -> ChatList:
        return await self._call(ChatList, "GET", f"/contacts/{_segment(contact_id)}/chats", params={"limit": limit})

    # --- contacts ---

    async def get_contact(self, contact_id: str) -> ContactInfo:
        return await self._call(ContactInfo, "GET", f"/contacts/{_segment(contact_id)}")

    async def link_contacts(
        self, contact_id: str, identifier: str, *, idempotency_key: str | None = None
    ) -> LinkResult:
        path = f"/contacts/{_segment(contact_id)}/aliases"
        return await self._call(LinkResult, "POST", path, body={"identifier": identifier}, key=idempotency_key)

    async def unlink_contact(self, identifier: str) -> ContactInfo:
        # the route names the contact too: an alias names its own contact
        path = f"/contacts/{_segment(identifier, 'identifier')}/aliases/{_segment(identifier, 'identifier')}"
        return await self._call(ContactInfo, "DELETE", path)

    async def forget_contact(self, contact_id: str) -> ForgetResult:
        return await self._call(ForgetResult, "DELETE", f"/contacts/{_segment(contact_id)}")

    # --- changes ---

    def watch(self, contact_id: str) -> AbstractAsyncContextManager[AsyncIterator[Changed]]:
        """`async with client.watch(contact_id) as changes: async for change in changes: ...`: listening from
        the moment the `async with` is entered (so nothing written after it is missed) until it is left. Over
        HTTP, a dropped stream is reconnected and followed by a `Changed`, since something may have been
        missed meanwhile; entering raises `ChatdockApiError` when chatdock cannot be reached."""
        if self._in_process is not None:
            return self._in_process.watch(contact_id)
        return self._watch_http(contact_id)

    @asynccontextmanager
    async def _watch_http(self, contact_id: str) -> AsyncIterator[AsyncIterator[Changed]]:
        stream = _EventStream(self, f"/contacts/{_segment(contact_id)}/events", contact_id)
        await stream.connect()
        try:
            yield stream.changes()
        finally:
            await stream.close()

    # --- the one way a request is made ---

    async def _call(
        self,
        model: type[M],
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> M:
        response = await self._send(method, path, params, body, key)
        try:
            return model.model_validate_json(response.content)
        except ValidationError:  # a success, but not chatdock's (a proxy's sign-in page, another service)
            kind = response.headers.get("content-type", "no content type")
            raise ChatdockApiError(
                502,
                "Bad Gateway",
                f"{self.url} answered {method} {path} with {response.status_code} but not with chatdock's "
                f"{model.__name__} ({kind}: {response.text[:120]!r}): check that {self.url} is chatdock's address",
            ) from None

    async def _send(
        self, method: str, path: str, params: dict[str, Any] | None, body: dict[str, Any] | None, key: str | None
    ) -> httpx2.Response:
        if self._in_process is not None and not self._in_process.is_open:
            raise ChatdockApiError(503, UNAVAILABLE, NOT_OPEN)
        if key is not None:
            _checked(check.idempotency_key, key)
        headers = {"Idempotency-Key": str(uuid.uuid4()) if key is None else key} if method == "POST" else {}
        harmless = method in ("GET", "PATCH", "POST")  # a POST carries its Idempotency-Key
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, params=params, json=body, headers=headers)
            except httpx2.TransportError as exc:
                sent = not isinstance(exc, NOT_SENT)
                if attempt < self.retries and (harmless or not sent):
                    await asyncio.sleep(_backoff(attempt))
                    attempt += 1
                    continue
                raise ChatdockApiError(503, UNAVAILABLE, self._unreached(exc, sent, headers)) from exc
            if attempt < self.retries and (
                response.status_code == 429 or (response.status_code in (502, 503, 504) and harmless)
            ):
                await asyncio.sleep(_retry_after(response, attempt))
                attempt += 1
                continue
            if response.is_success:
                return response
            raise refusal(response)

    def _unreached(self, exc: Exception, sent: bool, headers: dict[str, str]) -> str:
        what = f"chatdock at {self.url} {'did not answer' if sent else 'could not be reached'} "
        what += f"({type(exc).__name__}: {exc or 'no detail'})"
        if not sent:
            return what + "; nothing was sent"
        if "Idempotency-Key" in headers:
            return what + "; the request may have been carried out: repeating it with the same idempotency_key is safe"
        return what + "; the request may have been carried out"


class _EventStream:
    """One contact's `GET /contacts/{contact_id}/events`, reconnected when it drops."""

    def __init__(self, client: ChatdockClient, path: str, contact_id: str) -> None:
        self.client = client
        self.path = path
        self.contact_id = contact_id
        self._response: httpx2.Response | None = None
        self._events: AsyncIterator[httpx2.ServerSentEvent] | None = None

    async def connect(self) -> None:
        """Open the stream and wait for its `ready` event: from then on every change is told."""
        http = self.client._http
        timeout = httpx2.Timeout(self.client.timeout, read=EVENT_STREAM_SILENCE)
        request = http.build_request("GET", self.path, timeout=timeout)
        try:
            response = await http.send(request, stream=True)
        except httpx2.TransportError as exc:
            raise ChatdockApiError(503, UNAVAILABLE, self.client._unreached(exc, False, {})) from exc
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
            raise refusal(response)
        self._response = response
        self._events = httpx2.EventSource(response).__aiter__()
        try:
            first = await anext(self._events)
        except (httpx2.TransportError, StopAsyncIteration) as exc:
            await self.close()
            raise ChatdockApiError(503, UNAVAILABLE, f"chatdock at {self.client.url} closed the event stream") from exc
        if first.event != "ready":
            await self.close()
            raise ChatdockApiError(502, "Bad gateway", f"expected the event stream's `ready`, got {first.event!r}")

    async def changes(self) -> AsyncIterator[Changed]:
        while True:
            try:
                assert self._events is not None
                async for event in self._events:
                    if event.event == "changed":
                        yield Changed(self.contact_id)
            except httpx2.TransportError:
                pass  # dropped: reconnect below
            await self.close()
            if self.client._http.is_closed:  # the client was closed: its watches end with it
                return
            await self._reconnect()
            yield Changed(self.contact_id)  # whatever happened while it was away

    async def _reconnect(self) -> None:
        attempt = 0
        while True:
            try:
                await self.connect()
                return
            except ChatdockApiError as exc:
                if not exc.retryable:
                    raise
            await asyncio.sleep(_backoff(attempt))
            attempt = min(attempt + 1, 5)

    async def close(self) -> None:
        response, self._response, self._events = self._response, None, None
        if response is not None:
            await response.aclose()


def refusal(response: httpx2.Response) -> ChatdockApiError:
    """The server's `{"error", "message"}` as the client's exception (a proxy's page as its status)."""
    try:
        body = response.json()
        return ChatdockApiError(response.status_code, str(body["error"]), str(body["message"]))
    except (ValueError, KeyError, TypeError):
        return ChatdockApiError(response.status_code, response.reason_phrase, response.text[:200])


def _checked(rule: Callable[[Any], object], value: Any) -> None:
    """`value` by the store's `rule` (storage/validation.py): its refusal as the client's one exception."""
    try:
        rule(value)
    except InvalidInput as exc:
        raise ChatdockApiError(422, "Invalid arguments", exc.message) from None


def _present(**fields: Any) -> dict[str, Any]:
    """The arguments that were given (None is "not given", as for the tools)."""
    return {name: value for name, value in fields.items() if value is not None}


def _segment(value: str, name: str = "contact_id") -> str:
    """A path segment: every reserved character percent-encoded (`+31...` -> `%2B31...`, `a/b` -> `a%2Fb`), and
    '.' and '..' too (a URL's dot segments, which the HTTP client would resolve away); an empty one, which no
    path can carry, refused as the tool refuses it."""
    if not value:
        raise ChatdockApiError(422, "Invalid arguments", f"{name} must not be empty")
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe="")


def _backoff(attempt: int) -> float:
    return min(LONGEST_WAIT, 0.1 * 2.0**attempt) * random.uniform(0.5, 1.0)


def _retry_after(response: httpx2.Response, attempt: int) -> float:
    try:
        return min(LONGEST_WAIT, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return _backoff(attempt)
