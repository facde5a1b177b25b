"""Every failure of `ChatdockClient` is a `ChatdockApiError` (or a ValueError when it is made), in the server's
words where the server has them: arguments no request can carry, a closed client, a store that cannot be
opened, a server that takes the request and never answers; and a client given as `http_client=` is the
caller's, never changed nor closed, so clients of several organizations can share one."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import pytest

from chatdock.client import ChatdockApiError, ChatdockClient
from tests.client.test_client import CALLER, client_of, refused
from tests.transports import create_key, free_port, http_server, send_body

pytestmark = pytest.mark.process

HALF = "holds half of a character (U+D800 at position 3, a lone surrogate"


class Silent:
    """A server on 127.0.0.1 that accepts connections, reads what is sent and never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.received = b""
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            with self._lock:
                self._connections.append(connection)
            reader = threading.Thread(target=self._read, args=(connection,), daemon=True)
            self._threads.append(reader)
            reader.start()

    def _read(self, connection: socket.socket) -> None:
        while True:
            try:
                data = connection.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.received += data

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for connection in self._connections:
                connection.shutdown(socket.SHUT_RDWR)
                connection.close()
        for thread in self._threads:
            thread.join(5)


@contextmanager
def silent_server() -> Iterator[Silent]:
    server = Silent()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("kind", ["http", "embedded"])
async def test_what_no_request_can_carry_is_refused_as_the_server_refuses_it(kind: str, db: str) -> None:
    """Half a character (a lone surrogate has no UTF-8 form) and an argument longer than a URL may be never
    reach the server; the client refuses them in the words the server has for them."""
    async with client_of(kind, db) as client:
        long_query = await refused(client.search_messages("refund " * 12000))
        assert (long_query.status, long_query.error) == (422, "Invalid arguments")
        assert long_query.message == "query must be at most 1000 characters, got 84000"
        long_id = await refused(client.get_context("x" * 70000))
        assert (long_id.status, long_id.message) == (422, "contact_id must be 1 to 256 characters, got 70000")
        long_path = await refused(client.get_contact("x" * 70000))
        assert (long_path.status, long_path.message) == (422, "contact_id must be 1 to 256 characters, got 70000")

        for call in (client.get_context("ab\ud800"), client.get_contact("ab\ud800"), client.list_chats("ab\ud800")):
            half = await refused(call)
            assert (half.status, half.error) == (422, "Invalid arguments")
            assert half.message.startswith(f"contact_id {HALF}") and "send whole characters" in half.message
        half = await refused(client.search_messages("re\ud800"))
        assert half.status == 422 and half.message.startswith(f"query {HALF}")
        half = await refused(client.append_message(CALLER, "sms", "user", "x\ud800"))
        assert half.status == 422 and half.message.startswith("content holds half of a character (U+D800 at position 2")
        half = await refused(client.append_message("ab\ud800", "sms", "user", "hi"))
        assert half.status == 422 and half.message.startswith(f"contact_id {HALF}")
        assert (await client.list_messages(CALLER)).messages == []  # refused, nothing written

        chat = await client.open_chat(CALLER, "voice")
        text = await refused(client.post_as_contact(CALLER, chat.id, "hello"))  # type: ignore[arg-type]
        assert (text.status, text.message) == (422, "message: input should be a valid list, got 'hello'")
        word = await refused(client.post_as_contact(CALLER, chat.id, ["hello"]))  # type: ignore[list-item]
        assert word.status == 422 and word.message.startswith("message[0]: input should be a valid dictionary")
        late = await refused(client.post_as_contact(CALLER, chat.id, [{"text": "hi", "start_timestamp": float("nan")}]))
        assert late.status == 422 and "plain JSON" in late.message  # JSON has no NaN: never sent


async def test_a_url_no_request_could_go_to_is_refused_when_the_client_is_made(db: str) -> None:
    for url, said in (
        ("http://127.0.0.1:99999", "port must be 1 to 65535, got 99999"),
        ("http://[::1", "url must be chatdock's address, like http://127.0.0.1:8765"),
        ("http://", "url must name chatdock's host"),
        ("http://127.0.0.1:8765/?org=acme", "without a ?query or #fragment"),
        ("ftp://127.0.0.1:8765", "starting with http:// or https://"),
    ):
        with pytest.raises(ValueError, match=re.escape(said)):
            ChatdockClient(url, "cdk_x")
    key = create_key(db, "default", "client-tests")
    with http_server(db) as base:
        async with ChatdockClient(base.replace("http://", "HTTP://") + "/", key) as shouting:  # schemes ignore case
            assert (await shouting.get_context(CALLER)).messages == []
            assert shouting.url == base


def test_a_timeout_or_retries_no_call_could_keep_are_refused_when_the_client_is_made() -> None:
    """A timeout of 0 failed every call as "could not be reached; nothing was sent", blaming a server that was up
    (found by a back-end developer's review)."""
    for timeout in (0, -1, float("nan")):
        with pytest.raises(ValueError, match=re.escape("timeout must be a number of seconds above 0 (or None for")):
            ChatdockClient("http://127.0.0.1:8765", "cdk_x", timeout=timeout)
    with pytest.raises(ValueError, match="retries must be 0 or more, got -1"):
        ChatdockClient("http://127.0.0.1:8765", "cdk_x", retries=-1)


@pytest.mark.parametrize("kind", ["http", "embedded"])
async def test_a_list_argument_given_as_one_string_is_that_one_item(kind: str, db: str) -> None:
    """`channels="sms"` was sent as `s,m,s` and answered an empty context, without an error (a string is a
    sequence of its letters); `roles="user"` was refused for a role 'u'."""
    async with client_of(kind, db) as client:
        await client.append_message(CALLER, "sms", "user", "by text")
        await client.append_message(CALLER, "whatsapp", "assistant", "on whatsapp")
        assert [m.content for m in (await client.get_context(CALLER, channels="sms")).messages] == ["by text"]
        assert [m.content for m in (await client.get_context(CALLER, roles="assistant")).messages] == ["on whatsapp"]
        both = await client.get_context(CALLER, roles="user,assistant", channels=["sms", "whatsapp"])
        assert [m.content for m in both.messages] == ["by text", "on whatsapp"]


async def test_the_embedded_client_called_from_another_event_loop_says_where_to_call_it(db: str) -> None:
    """The embedded store is the loop's that opened it. Called from sync code with an asyncio.run per call, a
    write failed as a 500 "stored is unknown" on SQLite (its writer ended with the first loop) and as a
    retryable 503 on PostgreSQL, which no retry could mend: now one refusal, the same on both, that says how."""
    async with ChatdockClient.embedded(db=db, org="acme") as client:
        await client.append_message(CALLER, "sms", "user", "from its own loop")

        def from_a_loop_of_its_own() -> ChatdockApiError:
            with pytest.raises(ChatdockApiError) as raised:
                asyncio.run(asyncio.wait_for(client.append_message(CALLER, "sms", "user", "elsewhere"), 10))
            return raised.value

        refusal = await asyncio.to_thread(from_a_loop_of_its_own)
        assert (refusal.status, refusal.retryable) == (503, False)
        assert "opened in another event loop" in refusal.message and "asyncio.Runner" in refusal.message
        assert [m.content for m in (await client.get_context(CALLER)).messages] == ["from its own loop"]


async def test_a_closed_client_says_so_and_can_be_entered_again(db: str) -> None:
    key = create_key(db, "default", "client-tests")
    with http_server(db) as base:
        client = ChatdockClient(base, key)
        async with client:
            await client.append_message(CALLER, "sms", "user", "before closing")
        closed = await refused(client.get_context(CALLER))
        assert (closed.status, closed.error) == (503, "Service unavailable")
        assert "the client is closed" in closed.message and "async with client" in closed.message
        assert not closed.retryable  # a retry alone gets the same answer: a voice call retried it all call long
        watch = await refused(client.watch(CALLER).__aenter__())
        assert watch.status == 503 and "the client is closed" in watch.message
        async with client:  # as `ChatdockClient.embedded` reopens its store
            assert [m.content for m in (await client.get_context(CALLER)).messages] == ["before closing"]

        given = httpx2.AsyncClient()
        async with ChatdockClient(base, key, http_client=given) as borrower:
            await given.aclose()  # by its owner, under the client
            gone = await refused(borrower.get_context(CALLER))
        assert gone.status == 503 and "the http_client given to the client is closed" in gone.message

    embedded = ChatdockClient.embedded(db=db)
    async with embedded:
        assert len((await embedded.get_context(CALLER)).messages) == 1
    unopened = await refused(embedded.get_context(CALLER))
    assert unopened.status == 503 and "async with ChatdockClient.embedded" in unopened.message
    assert not unopened.retryable
    never = ChatdockClient.embedded(db=db)  # never entered, as the LiveKit docs' bot would have it
    assert not (await refused(never.get_context(CALLER))).retryable
    watching = await refused(never.watch(CALLER).__aenter__())
    assert (watching.status, watching.retryable) == (503, False)
    async with embedded:
        assert len((await embedded.get_context(CALLER)).messages) == 1


async def test_a_store_the_embedded_client_cannot_open_is_a_503_on_entering(tmp_path: Path) -> None:
    for db, said in (
        ("/proc/nope/chatdock.db", "cannot open the database /proc/nope/chatdock.db"),
        (f"postgresql://chatdock@127.0.0.1:{free_port()}/nowhere", "cannot reach PostgreSQL at 127.0.0.1"),
    ):
        with pytest.raises(ChatdockApiError) as raised:
            async with ChatdockClient.embedded(db=db):
                pass
        assert (raised.value.status, raised.value.error, raised.value.retryable) == (503, "Service unavailable", True)
        assert said in raised.value.message


async def test_clients_of_two_organizations_share_one_http_client(db: str) -> None:
    """Each request carries its own key and address: a write through each client lands in its organization,
    and closing the clients leaves the shared one open for its owner."""
    acme, other = create_key(db, "acme", "acme-app"), create_key(db, "other", "other-app")
    with http_server(db) as base:
        async with httpx2.AsyncClient() as shared:
            async with (
                ChatdockClient(base, acme, http_client=shared) as for_acme,
                ChatdockClient(base, other, http_client=shared) as for_other,
            ):
                await for_acme.append_message(CALLER, "sms", "user", "acme's message")
                await for_other.append_message(CALLER, "sms", "user", "other's message")
                await for_acme.open_chat(CALLER, "voice")
                assert [m.content for m in (await for_acme.list_messages(CALLER)).messages] == ["acme's message"]
                assert [m.content for m in (await for_other.list_messages(CALLER)).messages] == ["other's message"]
                assert len((await for_acme.list_chats(CALLER)).chats) == 1
                assert (await for_other.list_chats(CALLER)).chats == []
            assert not shared.is_closed  # the caller's: `aclose()` closes only what the client made
            assert (await shared.get(base + "/healthz")).status_code == 200


async def test_closing_the_client_ends_its_watches_on_a_client_it_was_given(db: str) -> None:
    key = create_key(db, "default", "client-tests")
    with http_server(db) as base:
        async with httpx2.AsyncClient() as given:
            client = ChatdockClient(base, key, http_client=given)
            watching = asyncio.Event()

            async def follow() -> int:
                heard = 0
                async with client.watch(CALLER) as changes:
                    watching.set()
                    async for _ in changes:
                        heard += 1
                return heard

            task = asyncio.ensure_future(follow())
            await asyncio.wait_for(watching.wait(), 10)
            await client.aclose()
            assert await asyncio.wait_for(task, 5) == 0  # ended, neither hanging nor raising
            assert not given.is_closed


async def test_a_watch_of_a_server_that_never_answers_fails_within_the_timeout() -> None:
    with silent_server() as silent:
        async with ChatdockClient(silent.url, "cdk_x", timeout=1) as client:
            with pytest.raises(ChatdockApiError) as raised:
                await asyncio.wait_for(client.watch(CALLER).__aenter__(), 10)  # not the stream's 45 s of silence
    failed = raised.value
    assert (failed.status, failed.error, failed.retryable) == (503, "Service unavailable", True)
    assert failed.message.startswith(f"chatdock at {silent.url} did not answer (TimeoutError: no answer within 1 s)")
    assert "the request was sent" in failed.message and "nothing was sent" not in failed.message
    assert b"GET /contacts/%2B31612345678/events HTTP/1.1" in silent.received


async def test_a_write_without_an_answer_names_the_key_to_repeat_it_with() -> None:
    with silent_server() as silent:
        async with ChatdockClient(silent.url, "cdk_x", timeout=1, retries=0) as client:
            lost = await refused(client.append_message(CALLER, "sms", "user", "hello?"))
            mine = await refused(client.append_message(CALLER, "sms", "user", "again", idempotency_key="turn-7"))
            read = await refused(client.get_context(CALLER))
    assert (lost.status, lost.error) == (503, "Service unavailable")
    assert lost.message.startswith(f"chatdock at {silent.url} did not answer (ReadTimeout): the request was sent")
    assert "repeating it with the same idempotency_key is safe" in lost.message
    named = re.search(r"pass idempotency_key='([^']+)'", lost.message)
    assert named is not None, lost.message
    assert f"idempotency-key: {named.group(1)}".encode() in silent.received.lower()  # the key that was sent
    assert lost.idempotency_key == named.group(1)  # at hand, for the retry that stores it once
    assert "repeating it with the same idempotency_key is safe" in mine.message and "pass" not in mine.message
    assert mine.idempotency_key == "turn-7"
    assert read.message.endswith("the request was sent and no answer came")  # a read: nothing was changed
    assert read.idempotency_key is None


class Failing(BaseHTTPRequestHandler):
    """chatdock's answer to a write that met a bug: its 500, in its shape, whose outcome is unknown."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"error": "Internal error", "message": "whether it was stored is unknown"}).encode()
        send_body(self, 500, body, "application/json")

    def log_message(self, *args: object) -> None:
        pass


async def test_chatdocks_own_500_on_a_write_names_the_key_the_client_made() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), Failing) as failing:
        threading.Thread(target=failing.serve_forever, daemon=True).start()
        try:
            async with ChatdockClient(f"http://127.0.0.1:{failing.server_address[1]}", "cdk_x", retries=0) as client:
                failed = await refused(client.append_message(CALLER, "sms", "user", "hello?"))
        finally:
            failing.shutdown()
    assert (failed.status, failed.retryable) == (500, False)
    assert failed.message.startswith("whether it was stored is unknown (")
    assert "pass idempotency_key='" in failed.message  # the key to repeat the write with, safely
    assert failed.idempotency_key is not None and f"pass idempotency_key='{failed.idempotency_key}'" in failed.message
