"""Replicas: two `chatdock serve --http` processes on one PostgreSQL database, as behind a load balancer.

Appends split over both are each stored once; copies of one webhook leave one row; a listener on one replica
hears the other's writes; a replica killed under load loses nothing it acknowledged; a database that goes
away gives clear errors and 503, and chatdock recovers by itself when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import asyncpg
import httpx2
import pytest

from chatdock.server.bench.postgres import throwaway_database
from chatdock.server.mcp.resources import TRANSCRIPT_URI, contact_uri
from chatdock.storage.keys import REMEMBER_SECONDS
from tests.mcp.test_events import heard_within, subscriber
from tests.postgres import PostgresServer
from tests.transports import call, chatdock_command, create_key, free_port, http_client, http_transport, stop

pytestmark = pytest.mark.process


@pytest.fixture
async def shared(postgres_server: str) -> AsyncIterator[tuple[str, str]]:
    """A fresh database for the replicas, and a key of organization acme on it."""
    async with throwaway_database(postgres_server, "chatdock_test_") as url:
        yield url, create_key(url, "acme", "replicas")


class Replica:
    """One `chatdock serve --http` process on a free loopback port."""

    def __init__(self, db: str, *extra: str) -> None:
        self.db, self.extra, self.port = db, extra, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Replica:
        self.process = subprocess.Popen(
            [*chatdock_command(), "serve", "--http", "--db", self.db, "--port", str(self.port), *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while self.healthz()[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chatdock did not start: {self.stop()}")
            time.sleep(0.02)
        return self

    def healthz(self) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + "/healthz", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        if self.process.stderr:
            self.process.stderr.close()

    def stop(self) -> str:
        """Stop it; what it wrote to stderr."""
        if self.process is None:
            return ""
        stop(self.process)
        if self.process.stderr is None or self.process.stderr.closed:
            return ""
        output = self.process.stderr.read()
        self.process.stderr.close()
        return output


@contextlib.contextmanager
def replicas(db: str, count: int = 2, *extra: str) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for _ in range(count):
            started.append(Replica(db, *extra).start())
        yield started
    finally:
        for replica in started:
            replica.stop()


def webhook(contact: str, content: str, provider_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"contact_id": contact, "channel": "whatsapp", "role": "user", "content": content}
    if provider_id is not None:
        body["metadata"] = {"provider_message_id": provider_id}
    return body


async def rows(db: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(db)
    try:
        return [tuple(row) for row in await conn.fetch(sql, *params)]
    finally:
        await conn.close()


async def post_all(bases: list[str], key: str, bodies: list[dict[str, Any]], at_once: int) -> list[httpx2.Response]:
    """POST /chats each body, spread round-robin over the replicas, `at_once` requests in flight."""
    gate = asyncio.Semaphore(at_once)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:

        async def one(index: int, body: dict[str, Any]) -> httpx2.Response:
            async with gate:
                return await http.post(bases[index % len(bases)] + "/chats", json=body)

        return list(await asyncio.gather(*(one(i, body) for i, body in enumerate(bodies))))


async def test_a_thousand_concurrent_appends_over_two_replicas_are_each_stored_once(shared: tuple[str, str]) -> None:
    db, key = shared
    with replicas(db) as (a, b):
        bodies = [webhook(f"+3161000{i % 40:04d}", f"append {i}") for i in range(1000)]
        answers = await post_all([a.base, b.base], key, bodies, at_once=64)
        assert [answer.status_code for answer in answers] == [201] * 1000
        ids = {answer.json()["id"] for answer in answers}
    assert len(ids) == 1000
    stored = await rows(db, "SELECT content, count(*) FROM messages GROUP BY content")
    assert len(stored) == 1000 and {count for _, count in stored} == {1}
    assert await rows(db, "SELECT count(*) FROM contacts") == [(40,)]  # no contact created twice


async def test_a_voice_turn_s_context_on_one_replica_holds_what_the_other_stored_since_the_turn_before(
    shared: tuple[str, str],
) -> None:
    db, key = shared
    caller = "+31612340077"
    turn = {"contact_id": caller, "channel": "voice", "role": "user", "context_limit": 10}
    with replicas(db) as (a, b):
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            for index in range(3):  # a's turns: from the second, joined to the newest messages a kept
                answer = await http.post(a.base + "/chats", json={**turn, "content": f"turn {index}"})
                assert answer.status_code == 201
            assert (await http.post(b.base + "/chats", json=webhook(caller, "sent on WhatsApp"))).status_code == 201
            answer = await http.post(a.base + "/chats", json={**turn, "content": "turn 3"})
            assert answer.status_code == 201
            said = [message["content"] for message in answer.json()["context"]["messages"]]
            assert said == ["turn 0", "turn 1", "turn 2", "sent on WhatsApp", "turn 3"]


async def test_fifty_copies_of_one_webhook_over_two_replicas_leave_one_row(shared: tuple[str, str]) -> None:
    db, key = shared
    with replicas(db) as (a, b):
        copies = [webhook("+31612345678", "the one webhook", "wamid.ABC") for _ in range(50)]
        answers = await post_all([a.base, b.base], key, copies, at_once=50)
    assert sorted({answer.status_code for answer in answers}) == [200, 201]
    assert [answer.status_code for answer in answers].count(201) == 1
    assert len({answer.json()["id"] for answer in answers}) == 1  # every caller gets the one stored row
    assert await rows(db, "SELECT count(*) FROM messages") == [(1,)]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_listener_on_one_replica_hears_the_other_replicas_writes(shared: tuple[str, str], mode: str) -> None:
    db, key = shared
    watched = "+31612345678"
    uri = contact_uri(TRANSCRIPT_URI, watched)
    with replicas(db) as (a, b):
        async with subscriber(http_transport(b.base, key), mode, uri) as (_, heard):
            await post_all([a.base], key, [webhook(watched, "hello")], 1)  # appears: the list changes
            await post_all([a.base], key, [webhook(watched, "again")], 1)
            await heard_within(heard, 3)
            assert heard.count(uri) == 2


async def test_sigkill_of_a_replica_under_load_loses_no_acknowledged_append(shared: tuple[str, str]) -> None:
    db, key = shared
    acknowledged: dict[str, str] = {}
    with replicas(db) as (a, b):
        headers = {"Authorization": f"Bearer {key}"}
        stop = asyncio.Event()

        async def writer(number: int) -> None:
            async with httpx2.AsyncClient(headers=headers, timeout=10) as http:
                for sent in range(400):  # bounded: the kill comes long before
                    if stop.is_set():
                        return
                    content = f"writer {number} append {sent}"
                    base = (a if sent % 2 else b).base
                    try:
                        answer = await http.post(base + "/chats", json=webhook(f"+316200{number}", content))
                    except httpx2.TransportError:
                        continue  # the killed replica: not acknowledged
                    if answer.status_code == 201:
                        acknowledged[content] = answer.json()["id"]

        async def kill_b() -> None:
            await asyncio.sleep(1.0)
            b.kill()
            await asyncio.sleep(0.5)
            b.start()  # restarted on the same database
            await asyncio.sleep(0.5)
            stop.set()

        await asyncio.gather(kill_b(), *(writer(n) for n in range(8)))
        assert b.healthz()[0] == 200
    stored = dict(await rows(db, "SELECT content, count(*) FROM messages GROUP BY content"))
    ids = dict(await rows(db, "SELECT content, id FROM messages"))
    assert len(acknowledged) > 100
    assert [content for content in acknowledged if stored.get(content) != 1] == []
    assert all(ids[content] == message_id for content, message_id in acknowledged.items())
    assert max(stored.values()) == 1


async def test_a_database_that_goes_away_gives_clear_errors_and_chatdock_recovers_by_itself() -> None:
    server = PostgresServer()  # its own server: this test stops it
    try:
        server.start()
        key = create_key(server.url, "acme", "outage")
        watched = "+31612345678"
        uri = contact_uri(TRANSCRIPT_URI, watched)
        with replicas(server.url, 1, "--db-timeout", "2") as (replica,):
            async with (
                http_client(replica.base, key) as client,
                subscriber(http_transport(replica.base, key), "auto", uri) as (_, heard),
            ):
                await call(client, "append_message", **webhook(watched, "before"))
                await heard_within(heard, 2)
                server.stop()
                status, body = replica.healthz()
                assert status == 503 and "cannot reach PostgreSQL at 127.0.0.1" in json.loads(body)["problems"][0]
                failed = await client.call_tool("append_message", webhook(watched, "during"))
                assert failed.is_error
                text = failed.content[0].text  # type: ignore[union-attr]
                assert "cannot reach PostgreSQL" in text and "reconnects by itself" in text
                server.start()
                with anyio.fail_after(15):
                    while replica.healthz()[0] != 200:
                        await anyio.sleep(0.2)
                after = await call(client, "append_message", **webhook(watched, "after"))
                assert after["content"] == "after"
                # the listener's own connection came back too: told to read again, then it hears new writes
                await heard_within(heard, 5, seconds=15)
                assert heard.count(uri) >= 3
            context = await rows(server.url, "SELECT content FROM messages ORDER BY seq")
            assert context == [("before",), ("after",)]
            log = replica.stop()
            assert "Traceback" not in log
            # the log says the outage is over, and what it failed (its last word on it was the failure)
            assert re.search(r"writes to PostgreSQL at 127\.0\.0\.1:[0-9]+, database \S+ work again, after", log), log
            assert re.search(r"failed requests \([0-9,]+ unreachable", log), log
    finally:
        server.remove()


async def test_a_revoked_key_is_refused_within_the_bound_while_the_keys_cannot_be_read(
    shared: tuple[str, str],
) -> None:
    """A key a replica checked a moment ago is revoked elsewhere, and another session holds the keys' table
    locked: past the key cache's bound the replica cannot read the key, and answers 503 saying why (it let the
    revoked key through on its older look for as long as the lock stayed: 15 s, found by an operator's review);
    once the table is free, 401."""
    url, key = shared
    headers = {"Authorization": f"Bearer {key}"}
    with replicas(url, 1, "--db-timeout", "2") as [replica]:
        async with httpx2.AsyncClient(base_url=replica.base, headers=headers, timeout=30) as http:
            assert (await http.get("/chats", params={"contact_id": "+31600000000"})).status_code == 200
            await rows(url, "UPDATE api_keys SET revoked_us = 1")  # `chatdock keys revoke` on another host
            locker = await asyncpg.connect(url)
            try:
                async with locker.transaction():
                    await locker.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
                    await asyncio.sleep(REMEMBER_SECONDS + 0.5)
                    refused = await http.get("/chats", params={"contact_id": "+31600000000"})
            finally:
                await locker.close()
            assert refused.status_code == 503, refused.text
            assert "did not answer" in refused.json()["message"], refused.text
            assert (await http.get("/chats", params={"contact_id": "+31600000000"})).status_code == 401
