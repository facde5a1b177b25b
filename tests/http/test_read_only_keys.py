"""Keys that may only read (`chatdock keys create --read-only`), for support staff and dashboards: made and listed
by the command, refused every write over REST and over /mcp in both protocol eras (whose sessions are offered the
reading tools alone), on both engines; and a key of a database from before them keeps writing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.async_api import Browser, expect

from chatdock.storage import NewMessage, keys, open_store
from tests.http.browser import sign_in, watched
from tests.http.test_inspector import ANN, WRITES, seed
from tests.storage.raw import fetch, run_sql
from tests.storage.test_lookalike_identifiers import engine
from tests.transports import (
    Rest,
    call,
    create_key,
    error,
    http_client,
    http_server,
    run_cli,
)

pytestmark = pytest.mark.process  # runs the chatdock command and a real server

READING_TOOLS = {"get_context", "list_messages", "search_messages", "list_chats", "get_contact"}


def created(db: str, *args: str) -> tuple[str, str]:
    """`chatdock keys create --org acme ARGS`: the key it printed, and what it told."""
    made = run_cli("keys", "create", "--db", db, "--org", "acme", *args)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip(), made.stderr


async def test_a_read_only_key_reads_and_is_refused_every_write(db: str, tmp_path: Path) -> None:
    reader, told = created(db, "--name", "ann", "--read-only")
    writer, _ = created(db, "--name", "bot")
    assert "created read-only key cdk_" in told
    listed = run_cli("keys", "list", "--db", db).stdout.splitlines()
    assert listed[0].split() == ["PREFIX", "NAME", "ORG", "ACCESS", "CREATED", "LAST", "USED", "REVOKED"]
    assert {line.split()[1]: line.split()[3] for line in listed[1:]} == {"ann": "read", "bot": "write"}

    log = tmp_path / "server.log"
    with http_server(db, log=log) as base:
        async with httpx2.AsyncClient(base_url=base, timeout=10) as http:

            async def rest(method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
                answer = await http.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"})
                return answer.status_code, answer.json()

            message = {"contact_id": "+31612345678", "channel": "whatsapp", "role": "user", "content": "my order?"}
            status, stored = await rest("POST", "/chats", writer, message)
            assert status == 201, stored
            for method, path, body in [
                ("POST", "/chats", message),
                ("DELETE", f"/chats/{stored['id']}", None),
                ("POST", "/contacts/+31612345678/chats", {"channel": "voice"}),
            ]:
                status, refused = await rest(method, path, reader, body)
                assert status == 403, refused
                assert refused["error"] == "Read-only key"
                assert refused["message"] == (
                    f"the key {keys.prefix_of(reader)} may only read (it was created with `chatdock keys create "
                    f"--read-only`), so this {method} was refused and nothing was written; write with a key created "
                    "without --read-only"
                )
            assert (await rest("POST", "/no-such-route", reader, {}))[0] == 404  # a route that is not: as for any key
            for method, path in [
                ("PUT", "/chats"),
                ("POST", "/whoami"),
                ("POST", "/chats/context"),
                ("DELETE", "/contacts"),
            ]:
                # a method no route of the path takes: as for any key (and no refused write on record)
                assert [(await rest(method, path, key, {}))[0] for key in (reader, writer)] == [405, 405], path
            status, context = await rest("GET", "/chats/context?contact_id=%2B31612345678", reader)
            assert status == 200 and [m["content"] for m in context["messages"]] == ["my order?"]  # one, not deleted
            assert (await rest("GET", "/contacts/+31612345678/chats", reader)) == (200, {"chats": []})  # none opened
            assert (await rest("GET", "/whoami", reader))[1]["can_write"] is False
            assert (await rest("GET", "/whoami", writer))[1]["can_write"] is True
            document = (await http.get("/openapi.json")).json()["paths"]["/chats"]  # what a generated client knows
            assert document["post"]["responses"]["403"]["description"].startswith("Read-only key: ")
            assert "403" not in document["get"]["responses"]

        for mode in ("auto", "legacy"):
            async with http_client(base, reader, mode) as client:
                assert {tool.name for tool in (await client.list_tools()).tools} == READING_TOOLS
                said = await error(
                    client, "append_message", contact_id="+31612345678", channel="sms", role="user", content="hi"
                )
                assert said == (
                    "Error executing tool append_message: this key may only read (it was created with `chatdock keys "
                    "create --read-only`), so append_message was refused and nothing was written; the tools it may "
                    f"call are {', '.join(sorted(READING_TOOLS))}"
                )
                assert "may only read" in await error(client, "delete_message", message_id=stored["id"])
                unknown = await error(client, "Append_Message", contact_id="x")  # the tools it may call, named
                assert unknown.endswith(f"the tools are {', '.join(sorted(READING_TOOLS))}")
                read = await call(client, "get_context", contact_id="+31612345678", include_messages=True)
                assert [m["content"] for m in read["messages"]] == ["my order?"]
            async with http_client(base, writer, mode) as client:  # the same server: every tool for a full key
                assert len((await client.list_tools()).tools) == 13
    # every refusal is on record, naming the key and what it was refused, never the contact (a security review)
    refusals = [line.partition(" chatdock.audit: ")[2] for line in log.read_text().splitlines() if "refused" in line]
    expected = [
        f"refused {what} in organization acme to key {keys.prefix_of(reader)}, a read-only key"
        for what in ("append_message", "delete_message", "open_chat", *["append_message", "delete_message"] * 2)
    ]
    assert refusals == expected, log.read_text()
    with http_server(db, "--read-only") as base:  # a server that takes no write: no key may write there
        answer = httpx2.get(f"{base}/whoami", headers={"Authorization": f"Bearer {writer}"}, timeout=10)
        assert answer.json()["can_write"] is False

    # what a chatdock from before read-only keys compares (a replica not yet upgraded): the key's plain hash,
    # which a read-only key's stored hash is not, so that it refuses such a key rather than let it write
    stored_hashes = {str(name): str(hashed) for name, hashed in await fetch(db, "SELECT name, hash FROM api_keys")}
    assert stored_hashes["bot"] == hashlib.sha256(writer.encode()).hexdigest()
    assert stored_hashes["ann"] != hashlib.sha256(reader.encode()).hexdigest()


async def test_a_key_from_before_read_only_keys_keeps_writing(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database an older chatdock made, with a key in it: the upgrade leaves that key a writing one."""
    module = engine(db)
    (newest,) = [m for m in module.MIGRATIONS if m.name == "a key may be read-only"]
    with monkeypatch.context() as patched:
        patched.setattr(module, "MIGRATIONS", tuple(m for m in module.MIGRATIONS if m is not newest))
        async with open_store(db) as store:
            await store.append_message("acme", NewMessage(contact_id="ann", channel="sms", role="user", content="hi"))
    prefix, key = keys.new_key()
    await run_sql(
        db,
        (
            "INSERT INTO api_keys (prefix, name, org_id, hash, created_us) "
            "SELECT $1, 'old', id, $2, 1 FROM orgs WHERE name = 'acme'",
            (prefix, keys.key_hash(key)),
        ),
    )
    async with open_store(db) as store:
        assert await store.verify_api_key(key) == keys.LiveKey("acme", read_only=False)
        assert [(info.name, info.read_only) for info in await store.list_api_keys()] == [("old", False)]


async def test_the_inspector_offers_a_read_only_key_no_write(tmp_path: Path, browser: Browser) -> None:
    """Signed in with a read-only key, the page says so and offers no write (every write button and form hidden);
    signed out and in again with a full key on the same page, it offers them all."""
    db = str(tmp_path / "staff.db")
    writer = create_key(db, "acme", "bot")
    reader, _ = created(db, "--name", "ann", "--read-only")
    with http_server(db) as base:
        seed(Rest(base, writer))
        async with watched(browser) as seen:
            page = seen.page
            await sign_in(page, base, reader)
            await expect(page.locator("#who")).to_have_text(
                f"Organization acme · key {keys.prefix_of(reader)} (read-only)"
            )
            await expect(page.get_by_role("status")).to_have_text(
                "Signed in with a read-only key: the page offers no write."
            )
            await page.get_by_role("button", name=ANN).click()
            timeline = page.locator("#timeline > li")
            await expect(timeline.first).to_be_visible()
            for name in WRITES:
                await expect(page.get_by_role("button", name=name)).to_have_count(0)
            await expect(page.locator("#link-form")).to_be_hidden()
            await expect(page.get_by_role("button", name="Export JSON Lines")).to_be_visible()  # a read

            await page.get_by_role("button", name="Sign out").click()
            await sign_in(page, base, writer)
            await expect(page.locator("#who")).to_have_text(f"Organization acme · key {keys.prefix_of(writer)}")
            await page.get_by_role("button", name=ANN).click()
            await expect(timeline.first.get_by_role("button", name="Delete message")).to_be_visible()
            for name in ("Forget contact", "Link identifier"):
                await expect(page.get_by_role("button", name=name).first).to_be_visible()
