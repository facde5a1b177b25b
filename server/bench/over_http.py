"""`chatdock bench` over HTTP: MCP and the REST routes against a real `chatdock serve --http` on loopback, each
beside the same server's floor (a do-nothing tool, the store-less `/livez` route) in the same run."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from chatdock.client import ChatdockClient
from chatdock.server.bench.rows import CONVERSATION, Row, die_with_parent, mcp_round_trips, percentile, realistic
from chatdock.storage import open_store

CLIENTS = (1, 8, 32)


@asynccontextmanager
async def serving(command: Callable[[int], list[str]], env: dict[str, str] | None = None) -> AsyncIterator[str]:
    """The server `command(port)` starts, on a free loopback port, once its /healthz answers; its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        command(port), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx2.AsyncClient(timeout=30) as http:
            for _ in range(300):
                try:
                    if (await http.get(base + "/healthz")).status_code == 200:
                        break
                except httpx2.TransportError:
                    await asyncio.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(30)


@asynccontextmanager
async def served_over_http(path: str) -> AsyncIterator[tuple[str, str]]:
    """The bench server (chatdock and a do-nothing tool) behind `serve --http` on a free port; (base URL, key)."""
    async with open_store(path) as store:
        key = (await store.create_api_key("bench")).key
    async with serving(
        lambda port: [sys.executable, "-m", "chatdock.server.bench.main", "--serve-http", path, str(port)]
    ) as base:
        yield base, key


def _http(key: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
        # idle connections let go before the server closes them (IDLE_CONNECTION_SECONDS, http/app.py): a
        # request sent on one the server is closing at that moment fails with a read error, and MCP's POSTs are
        # not retried
        limits=httpx2.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=2.0),
    )


async def http_round_trips(base: str, key: str, count: int) -> tuple[float, float]:
    """`bench.mcp_round_trips` over streamable HTTP."""

    async with _http(key) as http, Client(streamable_http_client(base + "/mcp", http_client=http)) as client:
        return await mcp_round_trips(client, count)


async def calls_per_second(call: Callable[[int], Awaitable[Any]], clients: int, count: int) -> float:
    """Calls per second with `clients` callers sharing `count` calls."""
    queue = list(range(count))

    async def caller() -> None:
        while queue:
            await call(queue.pop())

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(clients)))
    return count / (time.perf_counter() - began)


async def rest_figures(base: str, key: str, count: int) -> dict[str, float]:
    """REST append and the bare route at 1, 8 and 32 clients, REST get_context p50/p99, MCP append at 32."""

    figures: dict[str, float] = {}
    async with _http(key) as http:

        async def bare(_: int) -> None:
            (await http.get(base + "/livez")).raise_for_status()

        async def append(index: int) -> None:
            body = {
                "contact_id": f"+3188{index % 500:07d}",
                "channel": "sms",
                "role": "user",
                "content": f"rest {index}",
            }
            (await http.post(base + "/chats", json=body)).raise_for_status()

        for clients in CLIENTS:
            figures[f"bare_{clients}"] = await calls_per_second(bare, clients, count)
            figures[f"rest_{clients}"] = await calls_per_second(append, clients, count)
        samples = []
        for _ in range(count):
            began = time.perf_counter()
            (await http.get(base + "/chats/context", params={"contact_id": CONVERSATION})).raise_for_status()
            samples.append((time.perf_counter() - began) * 1000)
        figures["rest_context_p50"] = percentile(samples, 0.5)
        figures["rest_context_p99"] = percentile(samples, 0.99)
        figures.update(await voice_turn_figures(base, key, count))
        async with Client(streamable_http_client(base + "/mcp", http_client=http)) as client:

            async def mcp_append(index: int) -> None:
                arguments = {"contact_id": f"+3189{index % 500:07d}", "channel": "sms", "role": "user", "content": "m"}
                result = await client.call_tool("append_message", arguments)
                assert not result.is_error

            figures["mcp_append_32"] = await calls_per_second(mcp_append, 32, count)
    return figures


async def voice_turn_figures(base: str, key: str, count: int) -> dict[str, float]:
    """A voice turn's memory cost through the Python client, one caller: the user's turn stored with the fresh
    context of 50 messages in one round trip, beside a bare append and beside the same done as two calls; the
    three interleaved, so that the machine's moods fall on each alike. The caller is new to each run, with 50
    ordinary messages of history, and its turns are ordinary messages too: every round reads a context alike
    (CONVERSATION, read by other rows, is left as it is). A quarter as many rounds as `count` (500 at full
    size): the p99 of 200 turns was their second slowest, which one pause of the machine decided (4.0 to
    5.9 ms in three runs on PostgreSQL, against 4.4 to 4.5 ms over 500)."""
    samples: dict[str, list[float]] = {"bare": [], "one": [], "two": []}
    caller = f"+3166{time.time_ns() // 1000 % 10**7:07d}"
    history = realistic(caller, 50)

    async def timed(kind: str, *calls: Awaitable[Any]) -> None:
        began = time.perf_counter()
        for call in calls:
            await call
        samples[kind].append((time.perf_counter() - began) * 1000)

    async with ChatdockClient(base, key) as client:
        for message in history:
            await client.append_message(caller, message.channel, message.role, message.content or "")
        for turn in range(max(100, count // 4)):
            text = history[turn % len(history)].content or ""
            await timed("bare", client.append_message(caller, "voice", "user", text))
            await timed("one", client.append_message(caller, "voice", "user", text, context_limit=50))
            await timed(
                "two",
                client.append_message(caller, "voice", "user", text),
                client.get_context(caller, limit=50),
            )
    return {
        f"voice_{kind}_{name}": percentile(values, q)
        for kind, values in samples.items()
        for name, q in (("p50", 0.5), ("p99", 0.99))
    }


def voice_rows(m: dict[str, float]) -> list[Row]:
    one, bare, two = m["voice_one_p50"], m["voice_bare_p50"], m["voice_two_p50"]
    return [
        Row("voice turn: bare append (client, HTTP) p50", bare, "ms"),
        Row("voice turn: append with context_limit=50 p50", one, "ms", bare, one / bare, "<= 1.3x bare append",
            one <= 1.3 * bare),
        Row("voice turn: append with context_limit=50 p99", m["voice_one_p99"], "ms", goal="< 5 ms",
            met=m["voice_one_p99"] < 5),
        Row("voice turn: append, then get_context (two calls) p50", two, "ms", one, two / one),
    ]  # fmt: skip


def rest_rows(m: dict[str, float]) -> list[Row]:

    rows = []
    for clients in CLIENTS:
        rows.append(Row(f"HTTP bare route, {clients} clients", m[f"bare_{clients}"], "req/s"))
        rows.append(
            Row(f"REST append, {clients} clients", m[f"rest_{clients}"], "msg/s", m[f"bare_{clients}"],
                m[f"rest_{clients}"] / m[f"bare_{clients}"],
                ">= 0.7x bare" if clients == 32 else "", m["rest_32"] >= 0.7 * m["bare_32"] if clients == 32 else None)
        )  # fmt: skip
    rows += [
        Row("REST get_context p50", m["rest_context_p50"], "ms"),
        Row("REST get_context p99", m["rest_context_p99"], "ms"),
        Row("MCP-over-HTTP append, 32 clients", m["mcp_append_32"], "msg/s"),
        Row(
            "REST append beside MCP append (32)",
            m["rest_32"],
            "msg/s",
            m["mcp_append_32"],
            m["rest_32"] / m["mcp_append_32"],
            ">= 3x",
            m["rest_32"] >= 3 * m["mcp_append_32"],
        ),
        *voice_rows(m),
    ]
    return rows
