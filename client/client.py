"""`ChatdockClient`: the tools of chatdock as async methods, over its REST API or over a store in this process.

Each method bears a tool's name and takes the tool's arguments, and returns the model the server answers
with (chatdock.storage's pydantic models). Writes also take `idempotency_key=`: a retry of the same write
with the same key is stored once, on any replica, after a restart too; without one the client makes a key
per call, so its own retries are safe.

HTTP goes through httpx2, the HTTP client the MCP SDK already installs: one pool of keep-alive connections
per client (a voice turn does not pay a TCP handshake), per-phase timeouts, streaming for the event stream,
HTTP/2 when given an `httpx2.AsyncClient(http2=True)` in front of a TLS proxy that speaks it (chatdock's own
server, uvicorn, speaks HTTP/1.1, where the pool does the keeping alive). A client given as `http_client=` is
never changed nor closed: each request carries its full URL, its key and its timeout, so clients of several
organizations may share one.

What is retried, and when: a request that never left (the connection could not be made) always; one that
left and got no answer, or got 502/503/504, only when repeating it is harmless: reads, `update_chat`, and
POSTs (each carries an Idempotency-Key); a 429 waits for its Retry-After. A DELETE that may have been carried
out is not repeated: its second answer would be a misleading 404.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2
from pydantic import BaseModel, ValidationError

from chatdock.storage import (
    AppendedMessage,
    Chat,
    ChatList,
    ContactInfo,
    ContactPage,
    Context,
    DeletedMessage,
    ForgetResult,
    MessagePage,
    Part,
    StoredMessage,
)
from chatdock.storage import validation as check
from chatdock.storage.models import ChatWithMessages, LinkResult, SearchPage

from . import wire
from .errors import CLOSED, EMBEDDED_ELSEWHERE, NOT_OPEN, UNAVAILABLE, ChatdockApiError

if TYPE_CHECKING:
    from .embedded import InProcess

M = TypeVar("M", bound=BaseModel)

# above the server's own bound on a database wait (--db-timeout, 10 s), so that the server's answer (a 503 that
# says whether the write may have been stored) comes before the client gives up on it
DEFAULT_TIMEOUT = 15.0
DEFAULT_RETRIES = 2
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
        self.url = wire.base_url(url)
        if api_key and not VISIBLE.fullmatch(api_key):  # a header cannot carry it (a key read with its newline)
            raise ValueError(
                "api_key must be the key as `chatdock keys create` printed it, without spaces or a line break "
                "(strip what is read from a file)"
            )
        if timeout is not None and not timeout > 0:  # also NaN: every call would fail as if the server were down
            raise ValueError(
                f"timeout must be a number of seconds above 0 (or None for {DEFAULT_TIMEOUT:g}), got {timeout!r}"
            )
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries!r}")
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self.retries = retries
        # sent with each request, never set on the HTTP client: a client of the caller's may be shared
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # a client of the caller's own keeps its timeouts (None), unless `timeout` is given
        self._timeout = None if http_client is not None and timeout is None else httpx2.Timeout(self.timeout)
        self._own = http_client is None  # only a client it made is closed by `aclose()`
        self._http = http_client or self._new_http()
        # a connection is of the event loop that opened it, and one kept from a loop that has ended failed the next
        # call ("Event loop is closed") after the request was sent: sync code that runs each call in an
        # asyncio.run of its own (a Flask view), in threads of its own. `_http` is the first loop's; each other
        # loop gets one of its own (`_here`), let go with its loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._others: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx2.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._loops_lock = threading.Lock()
        self._closed = False
        self._streams: set[_EventStream] = set()
        self._in_process: InProcess | None = None

    def _new_http(self) -> httpx2.AsyncClient:
        # an idle connection is let go before chatdock closes it (after 5 s), so no request is sent on a connection
        # the server is closing at that moment (a write would then need its idempotent retry)
        return httpx2.AsyncClient(timeout=self.timeout, limits=httpx2.Limits(keepalive_expiry=4.0))

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
        """Open the client (again, after `aclose()`): the embedded one opens its store here, which raises
        `ChatdockApiError` (503) when the store cannot be opened."""
        if self._in_process is not None:
            http = await self._in_process.open()
            await self._http.aclose()  # the one it made before, unused
            self._http = http
            self._loop = asyncio.get_running_loop()  # the store's tasks and connections are this loop's
        elif self._own and self._http.is_closed:
            self._http = self._new_http()
        self._closed = False
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the client's watches and close what it opened: its connections (not those of an `http_client`
        given to it, which stays open for its owner), the embedded store. Calls then raise `ChatdockApiError`
        (503) until the client is entered again."""
        self._closed = True
        for stream in list(self._streams):
            await stream.close()
        if self._own:
            await self._here().aclose()  # this loop's: another loop's connections are that loop's to end
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
            wire.checked(check.metadata, metadata)
        body = wire.present(
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
        created_at: datetime | str | None = None,
        context_limit: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> StoredMessage:
        """Post into a chat as the contact (role user); with `context_limit`, `.context` as for an append. The
        parts: `Part`s, or mappings of their fields as the tool takes them (`{"type": "text", "text": ...}`).
        `created_at`: when the contact wrote or said it, as for an append (the server's clock without it)."""
        body = wire.present(
            message=wire.parts(message),
            channel_id=channel_id,
            created_at=created_at.isoformat() if isinstance(created_at, datetime) else created_at,
            context_limit=context_limit,
        )
        path = f"/contacts/{wire.segment(contact_id)}/chats/{wire.segment(chat_id, 'chat_id')}/messages"
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
        params = wire.present(
            contact_id=contact_id,
            agent_id=agent_id,
            chat_id=chat_id,
            limit=limit,
            roles=wire.listed(roles),
            channels=wire.listed(channels),
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
        params = wire.present(
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
        params = wire.present(q=query, contact_id=contact_id, channel=channel, role=role, limit=limit, cursor=cursor)
        return await self._call(SearchPage, "GET", "/chats/search", params=params)

    async def delete_message(self, message_id: str) -> DeletedMessage:
        return await self._call(DeletedMessage, "DELETE", f"/chats/{wire.segment(message_id, 'message_id')}")

    # --- chats ---

    async def open_chat(
        self, contact_id: str, channel: str, agent_id: str | None = None, *, idempotency_key: str | None = None
    ) -> Chat:
        body = wire.present(channel=channel, agent_id=agent_id)
        path = f"/contacts/{wire.segment(contact_id)}/chats"
        return await self._call(Chat, "POST", path, body=body, key=idempotency_key)

    async def update_chat(self, chat_id: str, status: str) -> Chat:
        return await self._call(
            Chat, "PATCH", f"/chats/status/{wire.segment(chat_id, 'chat_id')}", body={"status": status}
        )

    async def list_chats(self, contact_id: str, limit: int = 50) -> ChatList:
        return await self._call(ChatList, "GET", f"/contacts/{wire.segment(contact_id)}/chats", params={"limit": limit})

    # --- contacts ---

    async def recent_contacts(self, limit: int = 50, cursor: str | None = None) -> ContactPage:
        return await self._call(ContactPage, "GET", "/contacts", params=wire.present(limit=limit, cursor=cursor))

    async def get_contact(self, contact_id: str) -> ContactInfo:
        return await self._call(ContactInfo, "GET", f"/contacts/{wire.segment(contact_id)}")

    async def link_contacts(
        self, contact_id: str, identifier: str, *, idempotency_key: str | None = None
    ) -> LinkResult:
        path = f"/contacts/{wire.segment(contact_id)}/aliases"
        return await self._call(LinkResult, "POST", path, body={"identifier": identifier}, key=idempotency_key)

    async def unlink_contact(self, identifier: str) -> ContactInfo:
        # the route names the contact too: an alias names its own contact
        path = f"/contacts/{wire.segment(identifier, 'identifier')}/aliases/{wire.segment(identifier, 'identifier')}"
        return await self._call(ContactInfo, "DELETE", path)

    async def forget_contact(self, contact_id: str) -> ForgetResult:
        return await self._call(ForgetResult, "DELETE", f"/contacts/{wire.segment(contact_id)}")

    # --- changes ---

    def watch(self, contact_id: str) -> AbstractAsyncContextManager[AsyncIterator[Changed]]:
        """`async with client.watch(contact_id) as changes: async for change in changes: ...`: listening from
        the moment the `async with` is entered (so nothing written after it is missed) until it is left. Over
        HTTP, a dropped stream is reconnected and followed by a `Changed`, since something may have been
        missed meanwhile; entering raises `ChatdockApiError` when chatdock cannot be reached or does not answer
        within `timeout`."""
        if self._in_process is not None:
            return self._in_process.watch(contact_id)
        return self._watch_http(contact_id)

    @asynccontextmanager
    async def _watch_http(self, contact_id: str) -> AsyncIterator[AsyncIterator[Changed]]:
        stream = _EventStream(self, f"/contacts/{wire.segment(contact_id)}/events", contact_id)
        self._streams.add(stream)  # for `aclose()` to end it
        try:
            await stream.connect()
            if self._closed:  # while it connected
                await stream.close()
            yield stream.changes()
        finally:
            self._streams.discard(stream)
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
            # fields it does not know are a newer server's: a client is not broken by a server upgraded first
            return model.model_validate_json(response.content, extra="ignore")
        except ValidationError:  # a success, but not chatdock's (a proxy's sign-in page, another service)
            raise ChatdockApiError(
                502, "Bad Gateway", wire.not_chatdocks(response, model.__name__), retryable=False
            ) from None

    def _here(self) -> httpx2.AsyncClient:
        """The HTTP client for the event loop this call runs in: one of the client's own per loop (made on its
        first call there); the embedded client's and an `http_client` of the caller's, which is used in the loop
        it was first used in (a call from another says so)."""
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            if self._loop is None:
                self._loop = loop
            if loop is self._loop:
                if self._own and self._in_process is None and self._http.is_closed:
                    self._http = self._new_http()
                return self._http
            if self._in_process is not None:  # its store ends with the loop that opened it (asyncio.run's end)
                raise ChatdockApiError(503, UNAVAILABLE, EMBEDDED_ELSEWHERE, retryable=False)
            if not self._own:
                raise ChatdockApiError(
                    503,
                    UNAVAILABLE,
                    "the http_client given to this ChatdockClient was used in another event loop, whose "
                    "connections this one cannot use; give it an http_client made in this loop, or none (it then "
                    "makes its own in each loop it is used in)",
                    retryable=False,
                )
            http = self._others.get(loop)
            if http is None or http.is_closed:
                http = self._others[loop] = self._new_http()
            return http

    async def _send(
        self, method: str, path: str, params: dict[str, Any] | None, body: dict[str, Any] | None, key: str | None
    ) -> httpx2.Response:
        if self._in_process is not None and not self._in_process.is_open:
            raise ChatdockApiError(503, UNAVAILABLE, NOT_OPEN, retryable=False)
        if self._closed:
            raise ChatdockApiError(503, UNAVAILABLE, CLOSED, retryable=False)
        http = self._here()
        if key is not None:
            wire.checked(check.idempotency_key, key)
        headers = dict(self._auth)
        made = None  # a key of the client's own, which the caller has not seen
        if method == "POST":
            if key is None:
                key = made = str(uuid.uuid4())
            headers["Idempotency-Key"] = key
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = wire.json_body(body)
        url = self.url + path + wire.query(params)
        harmless = method in ("GET", "PATCH", "POST")  # a POST carries its Idempotency-Key
        attempt = 0
        while True:
            try:
                request = http.build_request(method, url, content=content, headers=headers, timeout=self._timeout_of())
            except httpx2.InvalidURL as exc:  # longer than a URL may be, though no one part was too long
                raise ChatdockApiError(
                    422, wire.INVALID, f"the arguments are too long to send in a URL ({exc})"
                ) from None
            try:
                response = await http.send(request)
            except httpx2.TransportError as exc:
                sent = not isinstance(exc, NOT_SENT)
                if attempt < self.retries and (harmless or not sent):
                    await asyncio.sleep(wire.backoff(attempt))
                    attempt += 1
                    continue
                unknown = key if sent and method == "POST" else None  # it may have been carried out
                raise ChatdockApiError(
                    503, UNAVAILABLE, self._unreached(exc, sent, method, made), idempotency_key=unknown
                ) from exc
            except httpx2.RequestError as exc:  # an answer that could not be read (a body in a broken encoding)
                raise ChatdockApiError(
                    502, "Bad Gateway", f"{self.url} answered {method} {path} unreadably ({wire.detail(exc)})"
                ) from exc
            except RuntimeError as exc:  # closed under the client: the `http_client` given, by its owner
                raise wire.closed_under(http, exc) from None
            if attempt < self.retries and (
                response.status_code == 429 or (response.status_code in (502, 503, 504) and harmless)
            ):
                await asyncio.sleep(wire.retry_after(response, attempt))
                attempt += 1
                continue
            if response.is_success:
                return response
            refused = wire.refusal(response)
            # a write chatdock answered 5xx may have been carried out (the server says when a retry with its
            # key is safe), but for another service's page at the address (a 502 not to retry): nothing done
            if method == "POST" and refused.status >= 500 and (refused.status != 502 or refused.retryable):
                said = refused.message if made is None else f"{refused.message} ({wire.made_key(made)})"
                raise ChatdockApiError(
                    refused.status, refused.error, said, retryable=refused.retryable, idempotency_key=key
                )
            raise refused

    def _timeout_of(self) -> httpx2.Timeout:
        """Each request's timeouts: `timeout`'s, or those of the caller's own client when none was given."""
        return self._http.timeout if self._timeout is None else self._timeout

    def _unreached(self, exc: Exception, sent: bool, method: str, made: str | None = None) -> str:
        """Why a request got no answer, and whether it may have been carried out (`made`: the Idempotency-Key
        the client made for a write, which the caller needs to repeat it)."""
        if not sent:
            return f"chatdock at {self.url} could not be reached ({wire.detail(exc)}); nothing was sent"
        what = f"chatdock at {self.url} did not answer ({wire.detail(exc)}): the request was sent and no answer came"
        if method == "GET":
            return what
        if method == "POST":
            what += "; it may have been carried out: repeating it with the same idempotency_key is safe"
            return what if made is None else f"{what} ({wire.made_key(made)})"
        if method == "DELETE":
            return what + "; it may have been carried out: repeating it is safe, and its 404 then means it was"
        return what + "; it may have been carried out"


class _EventStream:
    """One contact's `GET /contacts/{contact_id}/events`, reconnected when it drops."""

    def __init__(self, client: ChatdockClient, path: str, contact_id: str) -> None:
        self.client = client
        self.path = path
        self.contact_id = contact_id
        self._response: httpx2.Response | None = None
        self._events: AsyncIterator[httpx2.ServerSentEvent] | None = None

    async def connect(self) -> None:
        """Open the stream and wait for its `ready` event: from then on every change is told. The answer's
        headers, then `ready`, must each come within the client's `timeout` (of the request written, of the
        headers); only from then on may the stream be silent for longer (EVENT_STREAM_SILENCE)."""
        client = self.client
        if client._closed:
            raise ChatdockApiError(503, UNAVAILABLE, CLOSED, retryable=False)
        bounds = client._timeout_of()
        wait = bounds.read or client.timeout
        # A read timeout holds for every read of a stream, so the network's is the silence bound; the answer is
        # awaited under a deadline set when the request has been written (httpx2's `trace` extension says when).
        timeout = httpx2.Timeout(
            connect=bounds.connect, read=max(wait, EVENT_STREAM_SILENCE), write=bounds.write, pool=bounds.pool
        )
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as deadline:

                async def trace(event: str, _: Mapping[str, Any]) -> None:
                    if event.endswith(".receive_response_headers.started"):
                        deadline.reschedule(loop.time() + wait)

                http = client._here()
                request = http.build_request(
                    "GET", client.url + self.path, headers=client._auth, timeout=timeout, extensions={"trace": trace}
                )
                response = await http.send(request, stream=True)
                if response.status_code != 200 or not response.headers.get("content-type", "").startswith(
                    "text/event-stream"
                ):
                    await response.aread()
                    await response.aclose()
                    if response.status_code != 200:
                        raise wire.refusal(response)
                    said = wire.not_chatdocks(response, "event stream")  # a page of another service at the address
                    raise ChatdockApiError(502, "Bad Gateway", said, retryable=False)
                self._response = response
                self._events = httpx2.EventSource(response).__aiter__()
                deadline.reschedule(loop.time() + wait)
                first = await anext(self._events)
        except TimeoutError:
            await self.close()
            late = TimeoutError(f"no answer within {wait:g} s")
            raise ChatdockApiError(503, UNAVAILABLE, client._unreached(late, True, "GET")) from None
        except httpx2.TransportError as exc:
            await self.close()
            sent = not isinstance(exc, NOT_SENT)
            raise ChatdockApiError(503, UNAVAILABLE, client._unreached(exc, sent, "GET")) from exc
        except StopAsyncIteration:
            await self.close()
            raise ChatdockApiError(503, UNAVAILABLE, f"chatdock at {client.url} closed the event stream") from None
        except RuntimeError as exc:
            await self.close()
            raise wire.closed_under(client._here(), exc) from None
        if first.event != "ready":
            await self.close()
            raise ChatdockApiError(
                502, "Bad Gateway", f"expected the event stream's `ready`, got {first.event!r}", retryable=False
            )

    async def changes(self) -> AsyncIterator[Changed]:
        while True:
            try:
                async for event in self._events or _nothing():  # none: closed by `aclose()` as it connected
                    if event.event == "changed":
                        yield Changed(self.contact_id)
            except (httpx2.TransportError, httpx2.StreamClosed):
                pass  # dropped, or closed by `aclose()`: reconnect below, unless the client is closed
            await self.close()
            if self.client._closed or not await self._reconnect():  # closing the client ends its watches
                return
            yield Changed(self.contact_id)  # whatever happened while it was away

    async def _reconnect(self) -> bool:
        """Connected again (True), or the client was closed meanwhile (False)."""
        attempt = 0
        while not self.client._closed:
            try:
                await self.connect()
                return True
            except ChatdockApiError as exc:
                if not exc.retryable:
                    raise
            await asyncio.sleep(wire.backoff(attempt))
            attempt = min(attempt + 1, 5)
        return False

    async def close(self) -> None:
        response, self._response, self._events = self._response, None, None
        if response is not None:
            await response.aclose()


async def _nothing() -> AsyncIterator[httpx2.ServerSentEvent]:
    return
    yield
