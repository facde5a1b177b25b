"""What the bench's modules share: a row of the table, a percentile, a timed loop of calls, appends to time,
and the MCP round trips every transport's rows measure."""

from __future__ import annotations

import asyncio
import ctypes
import random
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mcp.client import Client

from chatdock.storage import NewMessage, Store

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """`preexec_fn` of the servers the bench starts: on Linux they are sent SIGTERM when the bench process dies,
    so a bench killed by a timeout leaves none of them running; elsewhere nothing is asked."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Row:
    name: str
    value: float
    unit: str
    floor: float | None = None
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    section: str = ""  # rows of a section are printed under its heading


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


CONVERSATION = "+31650000050"  # a contact with 50 ordinary chat messages, for the MCP rows

_WORDS = ["hi", "order", "refund", "parcel", "tomorrow", "thanks", "please", "when", "where", "delivery", "address"]


def realistic(contact: str, count: int) -> list[NewMessage]:
    """Ordinary WhatsApp messages of 60 to 120 characters, each with the provider's message id."""
    rng = random.Random(7)
    start = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    messages = []
    for index in range(count):
        size = rng.randint(60, 120)
        text = ""
        while len(text) < size:
            text += rng.choice(_WORDS) + " "
        messages.append(
            NewMessage(
                contact_id=contact,
                channel="whatsapp",
                role="user" if index % 2 else "assistant",
                content=text[:size].strip() + ".",
                metadata={"provider_message_id": f"wamid.HBgLMzE2MTIzNDU2NzgVAgASGBQzQTg{index:05d}"},
                created_at=start + timedelta(minutes=index),
            )
        )
    return messages


async def timed(calls: list[Callable[[], Awaitable[Any]]], concurrency: int) -> tuple[float, list[float]]:
    """Run the calls with `concurrency` callers; return the rate (calls/s) and each call's latency in ms."""
    latencies: list[float] = []
    queue = list(reversed(calls))

    async def worker() -> None:
        while queue:
            call = queue.pop()
            began = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - began) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(calls) / (time.perf_counter() - start), latencies


def appends(store: Store, count: int, tag: str) -> list[Callable[[], Awaitable[Any]]]:
    def append(i: int) -> Callable[[], Awaitable[Any]]:
        message = NewMessage(contact_id=f"+3199{i % 1000:07d}", channel="sms", role="user", content=f"{tag} {i}")
        return lambda: store.append_message("bench", message)

    return [append(i) for i in range(count)]


async def mcp_round_trips(client: Client, count: int, contact: str = CONVERSATION) -> tuple[float, float]:
    """Median ms of get_context (50 messages) and of a bare do-nothing tool call, on one connection."""
    context, bare = [], []
    for _ in range(count):
        began = time.perf_counter()
        await client.call_tool("get_context", {"contact_id": contact})
        context.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        await client.call_tool("bench_noop", {})
        bare.append((time.perf_counter() - began) * 1000)
    return statistics.median(context), statistics.median(bare)
