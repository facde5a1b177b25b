"""`chatdock bench` rows for what must stay bounded under load: the SQLite write-ahead log's size under
sustained appends, and another organization's append p99 beside one organization's 256 busy listeners.

`python -m chatdock.server.bench.reliability --neighbour BASE KEY LISTENERS SECONDS` is that noisy
neighbour, in a process of its own (its listen streams and appends over HTTP), for the bench and the tests:
it prints `listening` once its streams are open, then `APPENDS EVENTS` when it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx2

from chatdock.server.bench.rows import die_with_parent, percentile
from chatdock.storage import NewMessage, open_store
from chatdock.storage.sqlite import checkpoints

NEIGHBOUR_LISTENERS = 256


async def log_size(folder: str, appends: int) -> tuple[float, float]:
    """MB: the largest the write-ahead log grew while 100 callers appended `appends` messages to a fresh file,
    and its size once the writes had stopped for a second and a half."""
    path = str(Path(folder) / "log-size.db")
    largest = 0
    done = False

    async def watch() -> None:
        nonlocal largest
        while not done:
            with contextlib.suppress(OSError):
                largest = max(largest, os.path.getsize(path + "-wal"))
            await asyncio.sleep(0.01)

    async with open_store(path) as store:
        queue = list(range(appends))

        async def caller() -> None:
            while queue:
                index = queue.pop()
                message = NewMessage(contact_id=f"+3198{index % 1000:07d}", channel="sms", role="user", content="x")
                await store.append_message("bench", message)

        watcher = asyncio.ensure_future(watch())
        await asyncio.gather(*(caller() for _ in range(100)))
        done = True
        await watcher
        await asyncio.sleep(checkpoints.IDLE + 0.5)
        try:
            idle = os.path.getsize(path + "-wal")
        except OSError:
            idle = 0
    return largest / 1e6, idle / 1e6


async def append_latencies(base: str, key: str, seconds: float) -> list[float]:
    """ms of each REST append of one caller, one after the other for `seconds`."""
    took: list[float] = []
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.perf_counter()
            body = {"contact_id": "+31699999999", "channel": "sms", "role": "user", "content": f"calm {len(took)}"}
            (await http.post(base + "/chats", json=body)).raise_for_status()
            took.append((time.perf_counter() - began) * 1000)
    return took


@contextlib.contextmanager
def noisy_neighbour(base: str, key: str, listeners: int, seconds: float) -> Iterator[Callable[[], tuple[int, int]]]:
    """The noisy neighbour (`neighbour` below) in a process of its own, once its streams listen; yields a
    function that waits for it to end and returns (appends, events heard). Killed if still running after."""
    here = [sys.executable, "-m", "chatdock.server.bench.reliability"]
    process = subprocess.Popen(
        [*here, "--neighbour", base, key, str(listeners), str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=die_with_parent,
    )

    def ended() -> tuple[int, int]:
        assert process.stdout is not None
        appended, heard = (int(word) for word in process.stdout.readline().split())
        if process.wait(60) != 0:
            raise RuntimeError(f"the noisy neighbour ended with {process.returncode}")
        return appended, heard

    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "listening":
            raise RuntimeError("the noisy neighbour did not start")
        yield ended
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def beside_listeners(base: str, path: str, seconds: float = 3.0) -> tuple[float, float]:
    """ms: another organization's REST append p99 alone, then beside a neighbour's 256 busy listeners."""
    async with open_store(path) as store:
        calm = (await store.create_api_key("calm")).key
        noisy = (await store.create_api_key("noisy")).key
    alone = percentile(await append_latencies(base, calm, seconds), 0.99)
    with noisy_neighbour(base, noisy, NEIGHBOUR_LISTENERS, seconds + min(2.0, seconds)) as ended:
        beside = percentile(await append_latencies(base, calm, seconds), 0.99)
        ended()
    return alone, beside


async def neighbour(base: str, key: str, listeners: int, seconds: float) -> tuple[int, int]:
    """The noisy neighbour: `listeners` listen streams on two contacts, and an append to them every 20 ms for
    `seconds`; (appends, events heard)."""
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    from chatdock.server.mcp.resources import TRANSCRIPT_URI, contact_uri

    heard = 0
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx2.Limits(max_connections=listeners + 8, max_keepalive_connections=listeners + 8)
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300), limits=limits)
    appended = 0
    async with Client(streamable_http_client(base + "/mcp", http_client=http)) as client:
        async with contextlib.AsyncExitStack() as streams, anyio.create_task_group() as group:
            for index in range(listeners):
                uri = contact_uri(TRANSCRIPT_URI, f"+3160000000{index % 2}")
                events = await streams.enter_async_context(client.listen(resource_subscriptions=[uri]))

                async def drain(events: object = events) -> None:
                    nonlocal heard
                    async for _ in events:  # type: ignore[attr-defined]
                        heard += 1

                group.start_soon(drain)
            print("listening", flush=True)
            async with httpx2.AsyncClient(headers=headers, timeout=30) as rest:
                with anyio.move_on_after(seconds):
                    while True:
                        body = {"contact_id": f"+3160000000{appended % 2}", "channel": "sms", "role": "user"}
                        (
                            await rest.post(base + "/chats", json={**body, "content": f"noise {appended}"})
                        ).raise_for_status()
                        appended += 1
                        await anyio.sleep(0.02)
            group.cancel_scope.cancel()
    return appended, heard


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--neighbour":
    counts = anyio.run(neighbour, sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    print(*counts, flush=True)
