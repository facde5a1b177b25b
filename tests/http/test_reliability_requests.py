"""The reliability suite, part 5: what a request's caller and the operator are told.

A retried POST with the same Idempotency-Key gets the first answer (on both engines); an unexpected error is
a JSON 500 whose traceback is in the log whatever the level; the wrong-key limit and the log take a client's
address from the socket unless the operator names trusted proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.subscriptions import SubscriptionLost

from chatdock.server.http.rest import build_rest
from chatdock.server.mcp.events import Events
from chatdock.server.mcp.org import ORG_SCOPE_KEY
from chatdock.server.mcp.resources import TRANSCRIPT_URI, contact_uri
from chatdock.server.ops import logs
from chatdock.storage import NewMessage, open_store
from chatdock.storage.keys import REMEMBER_SECONDS
from tests.test_reliability_hardening import served
from tests.transports import create_key, http_client

pytestmark = pytest.mark.process


# --- Idempotency-Key ---


def message(content: str, contact: str = "+31612345678") -> dict[str, Any]:
    return {"contact_id": contact, "channel": "widget", "role": "user", "content": content}


async def test_a_retried_post_with_the_same_idempotency_key_gets_the_first_answer(db: str, tmp_path: Path) -> None:
    key = create_key(db, "acme", "retries")
    other = create_key(db, "globex", "neighbour")
    with served(tmp_path, db) as server:
        async with httpx2.AsyncClient(base_url=server.base, headers={"Authorization": f"Bearer {key}"}) as http:
            once = str(uuid.uuid4())
            first = await http.post("/chats", json=message("where is my order?"), headers={"Idempotency-Key": once})
            again = await http.post("/chats", json=message("where is my order?"), headers={"Idempotency-Key": once})
            assert first.status_code == again.status_code == 201
            assert again.json() == first.json()  # the first answer: same id, same time, not "deduplicated"
            assert first.json()["deduplicated"] is False
            fresh = await http.post("/chats", json=message("where is my order?"), headers={"Idempotency-Key": "k2"})
            assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]  # a new key: a new message
            reused = await http.post("/chats", json=message("something else"), headers={"Idempotency-Key": once})
            assert reused.status_code == 409
            assert "was first sent with another request" in reused.json()["message"]
            elsewhere = await http.post(
                "/chats", json=message("where is my order?", "+31699999999"), headers={"Idempotency-Key": once}
            )
            assert elsewhere.status_code == 409  # the same key for another contact is another request
            bad = await http.post("/chats", json=message("x"), headers={"Idempotency-Key": "has space"})
            assert bad.status_code == 422
            dated_key, dated = str(uuid.uuid4()), {**message("from the archive"), "created_at": "2021-01-01T00:00:00Z"}
            assert (await http.post("/chats", json=dated, headers={"Idempotency-Key": dated_key})).status_code == 201
            redated = {**dated, "created_at": "2022-06-01T00:00:00Z"}  # the same text at another time: another request
            assert (await http.post("/chats", json=redated, headers={"Idempotency-Key": dated_key})).status_code == 409

            chat_key = str(uuid.uuid4())
            opened = await http.post(
                "/contacts/+31612345678/chats", json={"channel": "voice"}, headers={"Idempotency-Key": chat_key}
            )
            reopened = await http.post(
                "/contacts/+31612345678/chats", json={"channel": "voice"}, headers={"Idempotency-Key": chat_key}
            )
            assert opened.status_code == reopened.status_code == 201 and reopened.json() == opened.json()
            chat_id = opened.json()["id"]
            post_key = str(uuid.uuid4())
            parts = {"message": [{"type": "text", "text": "hello from the caller", "start_timestamp": 0.5}]}
            path = f"/contacts/+31612345678/chats/{chat_id}/messages"
            posted = await http.post(path, json=parts, headers={"Idempotency-Key": post_key})
            reposted = await http.post(path, json=parts, headers={"Idempotency-Key": post_key})
            assert posted.status_code == reposted.status_code == 201
            assert reposted.json()["messages"] == posted.json()["messages"]
            split = {"message": [{"type": "text", "text": "hello from"}, {"type": "text", "text": "the caller"}]}
            resplit = await http.post(path, json=split, headers={"Idempotency-Key": post_key})  # the same text
            assert resplit.status_code == 409  # in other parts is another request

            page = (await http.get("/chats", params={"contact_id": "+31612345678", "limit": 200})).json()
            contents = [m["content"] for m in page["messages"]]
            assert contents.count("where is my order?") == 2  # once per key, never per retry
            assert contents.count("from the archive") == 1
            assert contents.count("hello from the caller") == 1
            chats = (await http.get("/contacts/+31612345678/chats")).json()["chats"]
            assert [c["id"] for c in chats] == [chat_id]

            # a link's retry gets the first answer, with what it merged (linking again would merge nothing)
            link_key, alias = str(uuid.uuid4()), {"identifier": "+31612345678"}
            linked = await http.post("/contacts/crm-42/aliases", json=alias, headers={"Idempotency-Key": link_key})
            relinked = await http.post("/contacts/crm-42/aliases", json=alias, headers={"Idempotency-Key": link_key})
            assert linked.status_code == relinked.status_code == 200 and relinked.json() == linked.json()
            assert (linked.json()["merged_messages"], linked.json()["merged_chats"]) == (4, 1)
            anew = await http.post("/contacts/crm-42/aliases", json=alias, headers={"Idempotency-Key": "k3"})
            assert anew.status_code == 200 and anew.json()["merged_messages"] == 0  # a new key: linked again
            for path, body in (("/contacts/crm-43/aliases", alias), ("/contacts/crm-42/aliases", {"identifier": "x"})):
                reused = await http.post(path, json=body, headers={"Idempotency-Key": link_key})
                assert reused.status_code == 409 and "was first sent with another request" in reused.json()["message"]
            assert (await http.delete("/contacts/crm-42")).status_code == 200
            after = await http.post("/contacts/crm-42/aliases", json=alias, headers={"Idempotency-Key": link_key})
            assert after.status_code == 200  # the answer went with the contact: the retry links a new one
            assert (after.json()["merged_messages"], after.json()["message_count"]) == (0, 0)
        async with httpx2.AsyncClient(base_url=server.base, headers={"Authorization": f"Bearer {other}"}) as http:
            theirs = await http.post("/chats", json=message("where is my order?"), headers={"Idempotency-Key": once})
            assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]  # keys are per organization


# --- unexpected errors: a JSON answer, and the traceback in the log ---


class Broken:
    """A store whose append meets a bug (an exception chatdock does not expect)."""

    async def append_message(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the append path")


async def test_an_unexpected_error_is_a_json_500_and_its_traceback_is_logged_at_any_level() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(logs.FORMAT))
    handler.addFilter(logs.QuietRepeats())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.WARNING)  # the default --log-level
    try:
        app = build_rest(lambda: Broken(), read_only=False, events=Events())  # type: ignore[arg-type,return-value]

        async def with_org(scope: Any, receive: Any, send: Any) -> None:
            scope[ORG_SCOPE_KEY] = "acme"
            await app(scope, receive, send)

        transport = httpx2.ASGITransport(app=with_org, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://chatdock") as http:
            answers = [await http.post("/chats", json=message(f"m{i}")) for i in range(3)]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    for answer in answers:
        assert answer.status_code == 500
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["error"] == "Internal error"
        assert (
            "retrying with the same metadata.provider_message_id or Idempotency-Key is safe" in answer.json()["message"]
        )
    log = stream.getvalue()
    assert log.count("Traceback (most recent call last)") == 1, log  # the first with its trace, repeats held
    assert "RuntimeError: a bug in the append path" in log


async def test_an_export_that_cannot_have_its_snapshot_is_a_503_before_its_answer_starts(postgres_url: str) -> None:
    """Past the exports one server runs at once, an export answered 200, sent its headers, then was cut when its
    snapshot's wait ran out ("Exception in ASGI application" in the log; a client that does not check the
    chunked framing kept an empty file). The snapshot is had before the answer starts (an operator's review)."""
    async with open_store(postgres_url, timeout=1.0) as store:
        await store.append_message("acme", NewMessage(contact_id="ann", channel="sms", role="user", content="hi"))
        app = build_rest(lambda: store, read_only=False, events=Events())

        async def with_org(scope: Any, receive: Any, send: Any) -> None:
            scope[ORG_SCOPE_KEY] = "acme"
            await app(scope, receive, send)

        async with contextlib.AsyncExitStack() as held:
            for _ in range(4):  # the slow downloads under way: as many as run at once
                await held.enter_async_context(store.snapshot())
            transport = httpx2.ASGITransport(app=with_org, raise_app_exceptions=False)
            async with httpx2.AsyncClient(transport=transport, base_url="http://chatdock") as http:
                refused = await http.get("/contacts/ann/export")
        assert refused.status_code == 503 and refused.headers["content-type"] == "application/json"
        assert "4 exports are under way on this server" in refused.json()["message"]
        async with httpx2.AsyncClient(transport=transport, base_url="http://chatdock") as http:
            exported = await http.get("/contacts/ann/export")  # once one has ended
        assert exported.status_code == 200 and [
            line["kind"] for line in map(json.loads, exported.text.splitlines())
        ] == ["message"]


def test_expected_failures_below_error_keep_their_trace_for_debug_only() -> None:
    quiet = logs.QuietRepeats()
    try:
        raise OSError("disk full")
    except OSError as exc:
        warning = logging.LogRecord(
            "chatdock", logging.WARNING, __file__, 1, "write failed", None, (OSError, exc, None)
        )
    assert quiet.filter(warning) and warning.exc_info is None


def test_the_change_feed_lost_twice_is_told_twice() -> None:
    """A replica's feed lost, back, lost again within seconds: the second loss was held back as a repeat of the
    first, and the log read lost, back, back through a 21 s outage."""
    quiet = logs.QuietRepeats()
    said = [
        logging.LogRecord("chatdock.storage.feed", logging.WARNING, __file__, 1, text, None, None)
        for text in ("lost the change feed (%s)", "listening again", "lost the change feed (%s)", "listening again")
    ]
    assert [quiet.filter(record) for record in said] == [True, True, True, True]
    repeated = [logging.LogRecord("chatdock.storage", logging.WARNING, __file__, 1, "x", None, None) for _ in "ab"]
    assert [quiet.filter(record) for record in repeated] == [True, False]  # other lines are summed up, as before


def test_a_line_told_apart_by_its_kind_is_bounded_in_kinds() -> None:
    """A refused key is told apart by address and key (a revoked one in use shows beside a flood of guesses),
    but a flood of ever new addresses is summed up past DISTINCT_REPEATS kinds in a period."""
    quiet = logs.QuietRepeats()

    def refused(kind: str) -> bool:
        record = logging.LogRecord("chatdock.http", logging.WARNING, __file__, 1, "refused %s", (kind,), None)
        record.repeat_of = kind
        return quiet.filter(record)

    assert [refused(f"10.0.0.{n}") for n in range(logs.DISTINCT_REPEATS)] == [True] * logs.DISTINCT_REPEATS
    assert not refused("10.0.0.0")  # a kind seen in this period: held back as its repeat
    assert refused("10.0.1.1") and not refused("10.0.1.2")  # past the bound: the other kinds are one line


def test_running_out_of_files_is_an_error_line_without_a_trace() -> None:
    """asyncio logs "socket.accept() out of system resource" at ERROR with the OSError when a connection flood
    reaches the file limit: the machine's limit, not a bug; a bug's error keeps its trace."""
    quiet = logs.QuietRepeats()
    records = []
    for error in (OSError(errno.EMFILE, "Too many open files"), RuntimeError("a bug")):
        try:
            raise error
        except Exception as exc:
            records.append(
                logging.LogRecord("asyncio", logging.ERROR, __file__, 1, str(exc), None, (type(exc), exc, None))
            )
    out_of_files, bug = records
    assert quiet.filter(out_of_files) and out_of_files.exc_info is None
    assert quiet.filter(bug) and bug.exc_info is not None


# --- client addresses: the socket's, unless the operator names trusted proxies ---


def wrong_keys(base: str, count: int) -> list[int]:
    statuses = []
    with httpx2.Client(base_url=base) as http:
        for index in range(count):
            forged = {"Authorization": "Bearer cdk_00000000_wrong", "X-Forwarded-For": f"203.0.113.{index}"}
            statuses.append(http.post("/chats", json=message("x"), headers=forged).status_code)
    return statuses


def test_a_forged_x_forwarded_for_neither_dodges_the_wrong_key_limit_nor_reaches_the_log(tmp_path: Path) -> None:
    db = str(tmp_path / "proxies.db")
    with served(tmp_path, db) as server:
        statuses = wrong_keys(server.base, 30)
        log = server.log.read_text()
    assert statuses[:20] == [401] * 20 and statuses[20:] == [429] * 10
    assert "203.0.113." not in log and "from 127.0.0.1" in log
    with served(tmp_path, db, "--forwarded-allow-ips", "127.0.0.1") as behind_a_proxy:
        believed = wrong_keys(behind_a_proxy.base, 30)
        log = behind_a_proxy.log.read_text()
    assert believed == [401] * 30  # each forwarded address is its own client, as the named proxy says
    assert "from 203.0.113.0" in log  # the first; the rest are summed up


async def test_a_revoked_key_is_refused_and_what_it_opened_ends_within_the_bound(tmp_path: Path) -> None:
    """Another process revokes a key (as `chatdock keys revoke` does): within the key cache's bound its requests
    get 401, and within twice that bound the streams it had open end: a REST event stream, a 2026-07-28 listen and
    an initialize-era session's stream (they went on hearing changes for ever: found by a security review). A
    live key's streams stay open."""
    db = str(tmp_path / "keys.db")
    key, kept = create_key(db, "acme", "soon-revoked"), create_key(db, "acme", "kept")
    uri = contact_uri(TRANSCRIPT_URI, "+31600000000")
    with served(tmp_path, db, "--log-level", "INFO") as server:
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            httpx2.AsyncClient(base_url=server.base, headers=headers, timeout=30) as http,
            http_client(server.base, key) as listening,
            http_client(server.base, kept) as keeping,
            listening.listen(resource_subscriptions=[uri]) as events,
            keeping.listen(resource_subscriptions=[uri]) as kept_events,
        ):
            legacy = await legacy_session(http)
            async with (
                http.stream("GET", "/contacts/+31600000000/events") as rest_stream,
                http.stream("GET", "/mcp", headers=legacy) as legacy_stream,
            ):
                assert rest_stream.status_code == legacy_stream.status_code == 200
                async with open_store(db) as store:  # another process revokes it
                    await store.revoke_api_key("soon-revoked")
                revoked = time.monotonic()
                with anyio.fail_after(REMEMBER_SECONDS + 3):
                    while (await http.get("/chats", params={"contact_id": "+31600000000"})).status_code != 401:
                        await anyio.sleep(0.2)

                async def ends(lines: AsyncIterator[Any]) -> float:
                    with contextlib.suppress(StopAsyncIteration, SubscriptionLost):  # a clean end: no broken body
                        while True:
                            await anext(lines)
                    return time.monotonic() - revoked

                with anyio.fail_after(2 * REMEMBER_SECONDS + 3):
                    took = await asyncio.gather(
                        ends(rest_stream.aiter_lines()), ends(legacy_stream.aiter_lines()), ends(aiter(events))
                    )
            assert all(seconds <= 2 * REMEMBER_SECONDS + 1 for seconds in took), took
            async with open_store(db) as store:  # the live key's listen goes on hearing
                await store.append_message("acme", NewMessage(contact_id="+31600000000", channel="sms", role="user",
                                                              content="still heard"))  # fmt: skip
            with anyio.fail_after(10):
                assert uri in str(await anext(aiter(kept_events)))
        log = server.log.read_text()
        assert "ended a stream: the key cdk_" in log and "without completing response" not in log, log


async def legacy_session(http: httpx2.AsyncClient) -> dict[str, str]:
    """An initialize-era session opened with `http`'s key: the headers that name it."""
    mcp = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    opened = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello},
                             headers=mcp)  # fmt: skip
    session = {**mcp, "Mcp-Session-Id": opened.headers["mcp-session-id"]}
    await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    return session


# --- half a character ---


def test_half_a_character_is_refused_clearly_everywhere_it_can_come_in(tmp_path: Path) -> None:
    db = str(tmp_path / "surrogates.db")
    key = create_key(db, "acme", "halves")
    raw = {
        "contact_id": '{"contact_id": "+316\\ud83d", "channel": "sms", "role": "user", "content": "x"}',
        "content": '{"contact_id": "+316", "channel": "sms", "role": "user", "content": "cut \\ud83d"}',
        "metadata": '{"contact_id": "+316", "channel": "sms", "role": "user", "content": "x", '
        '"metadata": {"note": "\\udc00"}}',
    }
    with served(tmp_path, db) as server, httpx2.Client(base_url=server.base) as http:
        for field, body in raw.items():
            answer = http.post(
                "/chats", content=body, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            )
            assert answer.status_code == 422, (field, answer.text)
            assert f"{field} holds half of a character" in answer.json()["message"], answer.text
