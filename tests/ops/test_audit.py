"""The audit log: who deleted, forgot, merged or unlinked, over REST (the inspector's routes), MCP over HTTP and
stdio, at the default --log-level, on both engines; never a contact's identifier (found by a support team
lead's review: deletes made in the inspector left no line anywhere); a link retried under its key, or a forget
of a contact already gone, says nothing more (found by a review of the diff)."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from chatdock.storage.keys import prefix_of
from tests.transports import RawStdio, call, chatdock_command, create_key, free_port, http_client, stop, wait_healthy

PHONE, EMAIL = "+31611111111", "ann@example.com"


def rest(
    base: str, key: str, method: str, path: str, body: dict[str, Any] | None = None, key_header: str | None = None
) -> dict[str, Any]:
    headers = {} if key_header is None else {"Idempotency-Key": key_header}
    request = urllib.request.Request(
        base + path,
        None if body is None else json.dumps(body).encode(),
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


def audit_lines(log: str) -> list[str]:
    return [line.partition(" chatdock.audit: ")[2] for line in log.splitlines() if " chatdock.audit: " in line]


async def test_each_deletion_forget_merge_and_unlink_names_who_did_it(db: str, tmp_path: Path) -> None:
    key = create_key(db, "acme", "support desk")
    who = f"key {prefix_of(key)}"
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [*chatdock_command(), "serve", "--http", "--db", db, "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, base)
        contact = urllib.parse.quote(PHONE, safe="")
        first = rest(
            base, key, "POST", "/chats", {"contact_id": PHONE, "channel": "sms", "role": "user", "content": "a"}
        )
        rest(base, key, "POST", "/chats", {"contact_id": PHONE, "channel": "sms", "role": "user", "content": "b"})
        rest(base, key, "POST", "/chats", {"contact_id": EMAIL, "channel": "email", "role": "user", "content": "c"})
        rest(base, key, "DELETE", f"/chats/{first['id']}")
        linking = (base, key, "POST", f"/contacts/{contact}/aliases", {"identifier": EMAIL})
        linked = rest(*linking, key_header="link-1")
        assert (linked["merged_messages"], linked["merged_chats"]) == (1, 0)
        assert rest(*linking, key_header="link-1") == linked  # a retry: the first answer, no merge
        rest(base, key, "POST", f"/contacts/{contact}/aliases", {"identifier": "w-8f2c"})  # merges nothing
        rest(base, key, "DELETE", f"/contacts/{contact}/aliases/{urllib.parse.quote(EMAIL, safe='')}")
        forgotten = rest(base, key, "DELETE", f"/contacts/{contact}")
        try:  # again (a double click): nothing more is erased, and nothing said
            rest(base, key, "DELETE", f"/contacts/{contact}")
        except urllib.error.HTTPError as refused:
            assert refused.code == 404
        async with http_client(base, key, "legacy") as client:
            message = await call(client, "append_message", contact_id="bob", channel="sms", role="user", content="x")
            await call(client, "delete_message", message_id=message["id"])
    finally:
        stop(process)
    written = log.read_text()
    erased = (
        f"{forgotten['deleted_messages']} messages, {forgotten['deleted_chats']} chats, "
        f"{forgotten['deleted_identifiers']} identifiers erased"
    )
    assert audit_lines(written) == [
        f"deleted message {first['id']} in organization acme by {who}",
        f"merged two contacts (1 messages, 0 chats moved) in organization acme by {who}",
        f"unlinked an identifier from its contact in organization acme by {who}",
        f"forgot a contact ({erased}) in organization acme by {who}",
        f"deleted message {message['id']} in organization acme by {who}",
    ], written
    assert forgotten["deleted_messages"] == 2 and forgotten["deleted_identifiers"] >= 1
    for identifier in (PHONE, EMAIL, "w-8f2c", key):  # a forgotten person is not kept in the log
        assert identifier not in written


def test_over_stdio_the_client_is_named_and_error_logging_keeps_it_quiet(tmp_path: Path) -> None:
    db = str(tmp_path / "chatdock.db")
    with RawStdio(db) as server:
        appended = server.tool("append_message", {"contact_id": "c", "channel": "sms", "role": "user", "content": "x"})
        message_id = appended["result"]["structuredContent"]["id"]
        assert not server.tool("delete_message", {"message_id": message_id})["result"]["isError"]
    assert audit_lines(server.stderr.decode()) == [
        f"deleted message {message_id} in organization default by the stdio client"
    ]
    with RawStdio(db, "--log-level", "error") as server:
        appended = server.tool("append_message", {"contact_id": "c", "channel": "sms", "role": "user", "content": "y"})
        message_id = appended["result"]["structuredContent"]["id"]
        assert not server.tool("delete_message", {"message_id": message_id})["result"]["isError"]
    assert audit_lines(server.stderr.decode()) == []


@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_chattier_level_keeps_the_audit_lines(tmp_path: Path, level: str) -> None:
    with RawStdio(str(tmp_path / "chatdock.db"), "--log-level", level) as server:
        appended = server.tool("append_message", {"contact_id": "c", "channel": "sms", "role": "user", "content": "x"})
        message_id = appended["result"]["structuredContent"]["id"]
        server.tool("delete_message", {"message_id": message_id})
    assert audit_lines(server.stderr.decode()) == [
        f"deleted message {message_id} in organization default by the stdio client"
    ]
