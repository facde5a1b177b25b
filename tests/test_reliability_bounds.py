"""The reliability suite, part 4: what stays bounded and truthful under sustained load and failures.

A write-ahead log that never fills the disk, listeners of one organization that cannot slow another, events
and errors that stay inside the organization and tell the truth, flags that take effect on every transport.
Each case is bounded to seconds (small counts, a small log limit, a small pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from chatdock.server.bench.reliability import append_latencies, noisy_neighbour
from chatdock.server.mcp.delivery import BURST, RATE
from chatdock.storage import NewMessage, open_store
from chatdock.storage.sqlite import checkpoints
from tests.test_reliability_hardening import served
from tests.transports import create_key

pytestmark = pytest.mark.process  # starts real processes


def wal_size(db: Path) -> int:
    try:
        return os.path.getsize(f"{db}-wal")
    except OSError:
        return 0


# --- 1. the SQLite write-ahead log stays bounded ---


async def test_the_write_ahead_log_stays_bounded_under_sustained_writes_and_empties_when_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 4 * 1024 * 1024
    monkeypatch.setattr(checkpoints, "LIMIT", limit)
    db = tmp_path / "busy.db"
    largest = 0
    sampling = True

    async def sample() -> None:
        nonlocal largest
        while sampling:
            largest = max(largest, wal_size(db))
            await asyncio.sleep(0.01)

    async with open_store(str(db)) as store:

        async def writer(number: int) -> None:
            for index in range(2000):
                contact = f"+3161{(number * 7919 + index) % 300:07d}"
                message = NewMessage(contact_id=contact, channel="whatsapp", role="user", content=f"order {index}")
                await store.append_message("acme", message)

        async def reader() -> None:
            for index in range(2000):
                await store.get_context("acme", f"+3161{index % 300:07d}")

        watcher = asyncio.create_task(sample())
        await asyncio.gather(*(writer(number) for number in range(4)), reader())
        sampling = False
        await watcher
        stored = (await store.get_contact("acme", "+31610000000")).message_count
        deadline = time.monotonic() + 5
        while wal_size(db) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        idle = wal_size(db)
    # 8,000 appends wrote about 240 MB of log before the log was bounded; now it stays near the limit (plus
    # what the writer commits between two looks at its size, and a restart that waits for a reader) and goes
    # back to nothing once the writes stop
    print(f"\n[reliability] 8,000 appends, 4 writers and a reader: the log at most {largest:,} bytes (limit {limit:,})")
    assert largest <= limit + 16 * 1024 * 1024, f"the log reached {largest:,} bytes (limit {limit:,})"
    assert idle == 0, f"the log still holds {idle:,} bytes a few seconds after the last write"
    assert stored > 0


def test_the_log_is_left_empty_after_sigterm_of_a_busy_http_server(tmp_path: Path) -> None:
    db = tmp_path / "served.db"
    key = create_key(str(db), "acme", "ingest")
    with served(tmp_path, str(db)) as server:

        def post(number: int) -> None:
            for index in range(250):
                body = {"contact_id": f"+3162{number:03d}{index % 20:04d}", "channel": "sms", "role": "user"}
                body["content"] = f"webhook {number}.{index}"
                request = urllib.request.Request(
                    server.base + "/chats",
                    json.dumps(body).encode(),
                    {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert response.status == 201

        threads = [threading.Thread(target=post, args=(number,)) for number in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(15)  # uvicorn ends by raising the signal again, after closing everything
    assert wal_size(db) == 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (1000,)


# --- 2. one organization's listeners cannot slow another's requests ---


async def test_an_organizations_256_listeners_are_told_within_its_own_budget(tmp_path: Path) -> None:
    """One organization's 256 busy listeners get their events within that organization's budget of sends,
    while another organization's appends go on being answered. How much the other's appends slow is a
    timing, so the bench measures it (row "... beside 256 busy listeners"); this checks the budget that
    keeps it small, which no slowness of the machine can break."""
    db = str(tmp_path / "neighbours.db")
    noisy, quiet = create_key(db, "noisy", "a"), create_key(db, "quiet", "b")
    with served(tmp_path, db) as server:
        began = time.monotonic()
        with noisy_neighbour(server.base, noisy, 256, 4) as ended:
            beside = await append_latencies(server.base, quiet, 2.0)
            appended, heard = ended()
        lasted = time.monotonic() - began
    allowed = BURST + RATE * lasted  # sends the noisy organization's courier may have made in that time
    report = (
        f"{appended} appends of the noisy organization heard {heard} times by its 256 listeners in {lasted:.1f} s "
        f"(its budget: {allowed:.0f} sends); the quiet organization's appends meanwhile: {len(beside)}, "
        f"median {statistics.median(beside):.2f} ms"
    )
    print(f"\n[reliability] {report}")
    assert heard <= allowed, report  # without the budget, 256 listeners of 50 appends a second hear 12,800 a second
    assert len(beside) > 20, report
    assert appended > 20 and heard > 256, "the neighbour's listeners still hear its writes, within its own budget"
