"""`/healthz` and the writes of a SQLite server whose file went wrong under it: removed, replaced by another
file, no longer writable, or with an index page damaged. Each case drives `chatdock serve --http` on a real file
and asserts what a client sees (a 503 that names the cause, never a 201 into the void) and what /healthz says.

Every wait is bounded to seconds; none of them measures how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from chatdock.storage import NewMessage, open_store
from tests.transports import chatdock_command, create_key, free_port, run_cli, stop, unwritable

pytestmark = pytest.mark.process  # each test here starts real processes

WAIT = 15.0  # seconds any condition below may take at most


class Server:
    """`chatdock serve --http` on `db`, ready once `ready` (a read with `key`) answers; /healthz is not asked on
    the way (it runs checks of its own), so a test decides when it is first asked."""

    def __init__(
        self, tmp: Path, db: Path, key: str, ready: str = "/chats/context?contact_id=ready", *extra: str
    ) -> None:
        self.base = f"http://127.0.0.1:{free_port()}"
        self.key = key
        self.log = tmp / ("serve.log" if not extra else "serve-" + "".join(extra).strip("-") + ".log")
        self._log_file = self.log.open("wb")
        port = self.base.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [*chatdock_command(), "serve", "--http", "--db", str(db), "--port", port, *extra],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )
        until(lambda: self.process.poll() is not None or self.get(ready)[0] == 200)
        assert self.process.poll() is None, self.log.read_text()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of a request with the key; (0, {}) when nothing answers."""
        request = urllib.request.Request(
            self.base + path,
            None if body is None else json.dumps(body).encode(),
            {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as failed:
            return failed.code, json.loads(failed.read())
        except OSError:
            return 0, {}

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return self.call("GET", path)

    def append(self, contact: str, content: str) -> tuple[int, dict[str, Any]]:
        return self.call(
            "POST", "/chats", {"contact_id": contact, "channel": "sms", "role": "user", "content": content}
        )

    def health(self) -> tuple[int, dict[str, Any]]:
        return self.get("/healthz")

    def close(self) -> str:
        """Stop the server; its log."""
        stop(self.process)
        self._log_file.close()
        return self.log.read_text()


@contextlib.contextmanager
def serving(
    tmp: Path, db: Path, key: str, ready: str = "/chats/context?contact_id=ready", *extra: str
) -> Iterator[Server]:
    server = Server(tmp, db, key, ready, *extra)
    try:
        yield server
    finally:
        log = server.close()
        assert "Traceback" not in log, log[-3000:]


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT} seconds"
        time.sleep(0.1)


def unhealthy(server: Server, cause: str) -> dict[str, Any]:
    """Wait for /healthz to say 503 naming `cause`; its body."""
    answers: list[tuple[int, dict[str, Any]]] = []

    def said() -> bool:
        answers.append(server.health())
        return answers[-1][0] == 503 and cause in answers[-1][1]["store"]

    try:
        until(said)
    except AssertionError:
        raise AssertionError(f"/healthz never said {cause!r}: {answers[-1]}") from None
    return answers[-1][1]


def assert_refused(server: Server, count: int, *causes: str) -> None:
    """`count` appends, each refused with a 503 whose message names every one of `causes`."""
    for index in range(count):
        status, body = server.append(f"c{index % 5}", f"after the trouble {index}")
        assert status == 503, (index, status, body)  # never a 200 or a 201: nothing is acknowledged
        assert body["error"] == "Service unavailable", body
        assert all(cause in body["message"] for cause in causes), body


def a_store(tmp: Path, messages: int = 0) -> tuple[Path, str]:
    """A database file with a key (and `messages` messages over ten contacts); (its path, the key)."""
    db = tmp / "chatdock.db"
    key = create_key(str(db), "acme", "health")
    if messages:

        async def fill() -> None:
            async with open_store(str(db)) as store:
                batch = [
                    NewMessage(contact_id=f"c{i % 10}", channel="sms", role="user", content=f"message {i}")
                    for i in range(messages)
                ]
                await store.import_messages("acme", batch)

        asyncio.run(fill())
    return db, key


def context_ids(server: Server, contact: str) -> list[str]:
    status, body = server.get(f"/chats/context?contact_id={quote(contact)}&limit=200")
    assert status == 200, body  # reads keep working
    return [message["id"] for message in body["messages"]]


# --- (a) the file removed or replaced while serving ---


def test_a_file_removed_while_serving_refuses_writes_and_fails_healthz(tmp_path: Path) -> None:
    db, key = a_store(tmp_path)
    with serving(tmp_path, db, key) as server:
        stored = [server.append("c0", f"before {i}") for i in range(3)]
        assert [status for status, _ in stored] == [201] * 3
        assert server.health()[0] == 200

        db.unlink()  # as `rm` by mistake, or a clean-up job: the server still holds the file open
        assert_refused(server, 50, f"the database file {db} was removed", "writes are refused", "restore")
        body = unhealthy(server, "was removed while chatdock was serving")
        assert "restart chatdock" in body["store"] and f"chatdock check --db {db}" in body["store"], body
        assert server.get("/livez") == (200, {"status": "ok"})  # the process lives: a readiness matter only
        assert context_ids(server, "c0") == [message["id"] for _, message in stored]  # still read, from the open file
        assert server.health()[0] == 503  # and it stays so
    assert f"{db} was removed" in server.log.read_text()


def test_healthz_tells_why_only_to_the_networks_metrics_is_for(tmp_path: Path) -> None:
    """/healthz (no key needed) told anyone the database file's path, or PostgreSQL's host, while the store could
    not serve (found by a security review): an address outside --metrics-allow's networks (loopback and private
    ones by default) hears that it cannot serve, and where to look; the status is the same."""
    db, key = a_store(tmp_path)
    with serving(tmp_path, db, key, "/chats/context?contact_id=ready", "--metrics-allow", "10.0.0.5") as server:
        assert server.health() == (200, {"status": "ok", "store": "ok"})
        db.unlink()
        until(lambda: server.health()[0] == 503)
        told = (
            "the store cannot serve now; the server's log says why (and /healthz, to an address --metrics-allow names)"
        )
        assert server.health() == (503, {"status": "unavailable", "store": told, "problems": [told]})
        assert str(db) not in json.dumps(server.health()[1])


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_its_log_or_shared_index_removed_while_serving_refuses_writes_and_fails_healthz(
    tmp_path: Path, suffix: str
) -> None:
    """The -wal holds what was written since the last checkpoint (a restart would lose it with the file); a new
    -shm lets another process open the file without seeing this one's writes. Both were taken on in silence."""
    db, key = a_store(tmp_path)
    with serving(tmp_path, db, key) as server:
        stored = [server.append("c0", f"before {i}") for i in range(3)]
        assert [status for status, _ in stored] == [201] * 3 and server.health()[0] == 200

        Path(f"{db}{suffix}").unlink()
        # removed, or removed and made again by a connection SQLite opened since (under load): both are said
        said = f"the database's {suffix} file {db}{suffix} was removed or replaced while chatdock was serving"
        assert_refused(server, 20, said, "writes are refused")
        body = unhealthy(server, said)
        assert f"chatdock check --db {db}" in body["store"], body
        assert context_ids(server, "c0") == [message["id"] for _, message in stored]  # reads go on
    assert f"{suffix} file {db}{suffix} was removed or replaced" in server.log.read_text()


def test_a_file_removed_before_any_request_is_still_read_and_named_as_removed(tmp_path: Path) -> None:
    db, key = a_store(tmp_path, messages=20)
    with serving(tmp_path, db, key, ready="/livez") as server:  # /livez reads nothing
        db.unlink()  # before any read: every connection opened at start still reads the file it opened
        for _ in range(4):  # each of the readers, in turn
            assert len(context_ids(server, "c3")) == 2
        body = unhealthy(server, "was removed while chatdock was serving")
        assert body["problems"] == [body["store"]], body  # the removal is the cause, not a disk failure


def test_a_file_replaced_while_serving_refuses_writes_and_fails_healthz(tmp_path: Path) -> None:
    db, key = a_store(tmp_path)
    with serving(tmp_path, db, key) as server:
        stored = [server.append("c0", f"before {i}") for i in range(3)]
        assert [status for status, _ in stored] == [201] * 3
        assert server.health()[0] == 200

        other = tmp_path / "restored.db"  # another database put in its place: a restore done while serving
        with sqlite3.connect(db) as source, sqlite3.connect(other) as copy:
            source.backup(copy)
        os.replace(other, db)
        assert_refused(server, 20, f"the database file {db} was replaced by another file", "writes are refused")
        body = unhealthy(server, "was replaced by another file while chatdock was serving")
        assert "restart chatdock" in body["store"], body
        assert context_ids(server, "c0") == [message["id"] for _, message in stored]


# --- (b) a file chatdock may no longer write ---


def test_a_file_chatdock_may_no_longer_write_refuses_writes_until_it_may_again(tmp_path: Path) -> None:
    db, key = a_store(tmp_path)
    ready = "/chats/context?contact_id=ready"
    with serving(tmp_path, db, key) as server, serving(tmp_path, db, key, ready, "--read-only") as reader:
        assert server.append("c0", "before")[0] == 201
        assert server.health()[0] == 200
        with unwritable(db):
            body = unhealthy(server, f"the database file {db} cannot be written by chatdock")
            assert "make the file, its -wal and -shm files and its folder writable" in body["store"], body
            assert_refused(server, 10, "cannot be written by chatdock", "writes are refused")
            assert len(context_ids(server, "c0")) == 1
            assert reader.health() == (200, {"status": "ok", "store": "ok"})  # a server that only reads is sound
            assert len(context_ids(reader, "c0")) == 1
        until(lambda: server.health()[0] == 200)  # writable again: it shows by itself
        status, again = server.append("c0", "after")
        assert status == 201, again
        assert len(context_ids(server, "c0")) == 2
        # an outage as a full disk is, not a bug: it was an ERROR, never said to be over, counted as file_problem
        log = server.log.read_text()
        assert f"WARNING chatdock.storage.outage: the database file {db} cannot be written" in log, log[-2000:]
        assert re.search(
            rf"chatdock.storage.outage.over: writes to {re.escape(str(db))} work again, after .* read_only\)", log
        )
        assert " ERROR " not in log and "is back as chatdock opened it" not in log, log[-2000:]


# --- (c) an index page damaged under appends ---


def _varint(data: bytes | bytearray, at: int) -> tuple[int, int]:
    value = 0
    for step in range(9):
        byte = data[at + step]
        if step == 8:
            return (value << 8) | byte, at + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + step + 1
    raise AssertionError("unreachable")


def damage_an_index_page(db: Path, index: str) -> None:
    """Flip the row number stored in every third entry of one leaf page of `index`, as a failing disk might:
    the page stays well formed, so appends keep landing in it and SQLite's `quick_check` sees nothing."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        leaves = [
            page for (page,) in conn.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf'", (index,))
        ]
    assert len(leaves) > 2, leaves
    with db.open("r+b") as file:
        file.seek((leaves[len(leaves) // 2] - 1) * size)
        page = bytearray(file.read(size))
        for cell in range(0, struct.unpack(">H", page[3:5])[0], 3):
            pointer = struct.unpack(">H", page[8 + 2 * cell : 10 + 2 * cell])[0]
            length, start = _varint(page, pointer)
            page[start + length - 1] ^= 0x5A  # the last byte of the entry: its row number
        file.seek((leaves[len(leaves) // 2] - 1) * size)
        file.write(page)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]  # the damage SQLite's cheap check misses
        assert conn.execute("PRAGMA integrity_check").fetchone()[0].endswith("missing from index " + index)


def test_appends_into_a_damaged_index_page_are_stopped_within_seconds(tmp_path: Path) -> None:
    db, key = a_store(tmp_path, messages=2000)
    damage_an_index_page(db, "messages_contact")
    with serving(tmp_path, db, key) as server:  # /healthz is not asked: the appends alone find it
        acknowledged = 0
        deadline = time.monotonic() + WAIT
        while True:
            status, body = server.append(f"c{acknowledged % 10}", f"new {acknowledged}")
            if status != 201:
                break
            acknowledged += 1
            assert time.monotonic() < deadline, f"{acknowledged} appends went into the damaged file"
        assert status == 503, body
        assert body["message"].startswith("the database file is damaged:"), body
        assert "messages_contact" in body["message"] and "writes are refused" in body["message"], body
        assert f"chatdock check --db {db}" in body["message"], body
        assert_refused(server, 5, "the database file is damaged")
        status, health = server.health()
        assert status == 503 and health["store"] == body["message"], health
    assert "missing from index messages_contact" in server.log.read_text()
    checked = run_cli("check", "--db", str(db))
    assert checked.returncode == 1 and "is damaged" in checked.stdout, checked.stdout + checked.stderr
    head, *listed = checked.stdout.splitlines()
    assert f"({len(listed)} problem(s) found)" in head and all(line.startswith("  ") for line in listed), listed
    backup = tmp_path / "backup"  # the file alone, on read-only media: checked all the same
    backup.mkdir()
    shutil.copyfile(db, backup / db.name)
    (backup / f"{db.name}-shm").touch()  # left by a crash, or copied along (`cp chatdock.db*`)
    with unwritable(backup / db.name), unwritable(backup):
        again = run_cli("check", "--db", str(backup / db.name))
        assert sorted(path.name for path in backup.iterdir()) == [db.name, f"{db.name}-shm"]  # nothing made
    assert (again.returncode, again.stdout) == (1, checked.stdout.replace(str(db), str(backup / db.name))), again
    (tmp_path / "empty.db").touch()
    empty = run_cli("check", "--db", str(tmp_path / "empty.db"))
    assert (
        empty.returncode == 2
        and empty.stderr == f"chatdock: cannot check {tmp_path / 'empty.db'}: the file is empty, it holds no database\n"
    )


def test_healthz_finds_a_damaged_index_page_before_any_write(tmp_path: Path) -> None:
    db, key = a_store(tmp_path, messages=2000)
    damage_an_index_page(db, "messages_contact")
    with serving(tmp_path, db, key) as server:
        body = unhealthy(server, "the database file is damaged")
        assert "missing from index messages_contact" in body["store"], body
        assert_refused(server, 5, "the database file is damaged", "writes are refused")


def varied(count: int) -> Iterator[dict[str, Any]]:
    """Appends that fill every index, partial ones too (an agent, a provider's id)."""
    for i in range(count):
        message: dict[str, Any] = {"contact_id": f"c{i % 10}", "channel": "sms", "role": "user"}
        if i % 2:
            message["agent_id"] = "agent"
        if i % 3 == 0:
            message["metadata"] = {"provider_message_id": f"wamid.{time.monotonic_ns()}.{i}"}
        yield message


def test_a_sound_file_stays_healthy_while_healthz_sweeps_it(tmp_path: Path) -> None:
    db, key = a_store(tmp_path, messages=2000)
    with serving(tmp_path, db, key) as server:
        for round_ in range(5):  # the sweeps run between appends and deletes, over a file that is fine
            stored = [
                server.call("POST", "/chats", {**message, "content": f"round {round_} message {i}"})
                for i, message in enumerate(varied(20))
            ]
            assert [status for status, _ in stored] == [201] * 20
            for _, message in stored[::2]:
                assert server.call("DELETE", f"/chats/{message['id']}")[0] == 200
            time.sleep(1.1)  # past the sweep's interval, so each round meets a fresh sweep
            assert server.health() == (200, {"status": "ok", "store": "ok"})
    assert run_cli("check", "--db", str(db)).returncode == 0
