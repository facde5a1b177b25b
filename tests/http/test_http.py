"""`chatdock serve --http` as a real server on 127.0.0.1, reached with the SDK's HTTP client."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.subscriptions import ResourceUpdated

from tests.transports import call, create_key, error, http_client, http_server, run_cli

pytestmark = pytest.mark.process  # each test here starts real processes

UNKNOWN = "0192f0c4-7d3e-7b1a-9c4e-2f1d3a5b6c7d"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    db = str(tmp_path_factory.mktemp("http") / "chatdock.db")
    keys = {"acme": create_key(db, "acme", "acme-1"), "globex": create_key(db, "globex", "globex-1")}
    keys["revoked"] = create_key(db, "acme", "old")
    assert run_cli("keys", "revoke", "--db", db, "old").returncode == 0
    with http_server(db, fresh=True) as base:  # the installed command, started from scratch
        yield {"base": base, "db": db, **keys}


def post(base: str, headers: dict[str, str]) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}).encode()
    request = urllib.request.Request(
        base + "/mcp",
        data=body,
        headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), {}
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer cdk_00000000_wrong"},
        {"Authorization": "Bearer not-even-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
    ],
)
def test_missing_malformed_or_unknown_keys_get_401(served: dict[str, str], headers: dict[str, str]) -> None:
    status, response_headers, body = post(served["base"], headers)
    assert status == 401
    assert body["error"] == "Invalid API key" and body["message"]
    assert response_headers["www-authenticate"].startswith("Bearer ")


def test_two_authorization_headers_get_401(served: dict[str, str]) -> None:
    """Two keys in one request: the first was taken (a proxy that adds or checks a header of its own may read
    the other one); none is (found by a security review)."""
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(served["base"]).netloc, timeout=10)
    try:
        connection.putrequest("GET", "/chats/context?contact_id=anyone")
        for key in (served["acme"], served["globex"]):
            connection.putheader("Authorization", f"Bearer {key}")
        connection.endheaders()
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 401
    assert body == {"error": "Invalid API key", "message": "send one Authorization header, not 2"}


def test_a_revoked_key_gets_401(served: dict[str, str]) -> None:
    status, _, body = post(served["base"], {"Authorization": f"Bearer {served['revoked']}"})
    assert status == 401 and body["error"] == "Invalid API key"


def test_healthz_needs_no_key(served: dict[str, str]) -> None:
    with urllib.request.urlopen(served["base"] + "/healthz", timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"status": "ok", "store": "ok"}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_valid_key_gets_the_full_tool_set(served: dict[str, str], mode: str) -> None:
    async with http_client(served["base"], served["acme"], mode) as client:
        assert len((await client.list_tools()).tools) == 13
        contact = f"http-{mode}"
        await call(client, "append_message", contact_id=contact, channel="sms", role="user", content="hi")
        chat = await call(client, "open_chat", contact_id=contact, channel="voice")
        await call(client, "post_as_contact", contact_id=contact, chat_id=chat["id"], message=[{"text": "hello"}])
        context = await call(client, "get_context", include_messages=True, contact_id=contact)
        assert context["formatted"] == "USER: hi\nUSER: hello"
        transcript = await client.read_resource(f"chatdock://contacts/{contact}/transcript")
        assert transcript.contents[0].text == "USER: hi\nUSER: hello"  # type: ignore[union-attr]


async def test_two_organizations_never_see_each_other(served: dict[str, str]) -> None:
    base = served["base"]
    async with http_client(base, served["acme"]) as acme, http_client(base, served["globex"]) as globex:
        secret = await call(
            acme,
            "append_message",
            contact_id="shared",
            channel="sms",
            role="user",
            content="acme secret",
            metadata={"provider_message_id": "pm-1"},
        )
        chat = await call(acme, "open_chat", contact_id="shared", channel="voice")

        theirs = await call(
            globex,
            "append_message",
            contact_id="shared",
            channel="sms",
            role="user",
            content="globex own",
            metadata={"provider_message_id": "pm-1"},
        )
        assert theirs["deduplicated"] is False and theirs["id"] != secret["id"]
        context = await call(globex, "get_context", include_messages=True, contact_id="shared")
        assert [m["content"] for m in context["messages"]] == ["globex own"]
        assert [m["content"] for m in (await call(globex, "list_messages", contact_id="shared"))["messages"]] == [
            "globex own"
        ]
        assert (await call(globex, "list_chats", contact_id="shared"))["chats"] == []
        text = (await globex.read_resource("chatdock://contacts/shared/transcript")).contents[0].text  # type: ignore[union-attr]
        assert text == "USER: globex own"
        listed = [r.uri for r in (await globex.list_resources()).resources]
        assert "chatdock://contacts/shared/transcript" in listed

        for name, arguments, theirs_id, unknown_text in [
            ("delete_message", {"message_id": secret["id"]}, secret["id"], None),
            ("update_chat", {"chat_id": chat["id"], "status": "FAILED"}, chat["id"], None),
            (
                "post_as_contact",
                {"contact_id": "shared", "chat_id": chat["id"], "message": [{"text": "x"}]},
                chat["id"],
                None,
            ),
            (
                "append_message",
                {"contact_id": "shared", "channel": "sms", "role": "user", "content": "x", "chat_id": chat["id"]},
                chat["id"],
                None,
            ),
        ]:
            text = await error(globex, name, **arguments)
            unknown_args = json.loads(json.dumps(arguments).replace(theirs_id, UNKNOWN))
            unknown_text = await error(globex, name, **unknown_args)
            assert text.replace(theirs_id, "ID") == unknown_text.replace(UNKNOWN, "ID")

        forgotten = await call(globex, "forget_contact", contact_id="shared")
        assert forgotten == {
            "contact_id": "shared",
            "deleted_messages": 1,
            "deleted_chats": 0,
            "deleted_identifiers": 1,
        }
        still = await call(acme, "get_context", include_messages=True, contact_id="shared")
        assert [m["content"] for m in still["messages"]] == ["acme secret"]
        assert (await call(acme, "list_chats", contact_id="shared"))["chats"][0]["status"] == "RUNNING"


async def test_events_reach_listeners_of_the_same_organization_only(served: dict[str, str]) -> None:
    base = served["base"]
    uri = "chatdock://contacts/%2B3100/transcript"
    received: dict[str, list[str]] = {"acme": [], "globex": []}
    async with (
        http_client(base, served["acme"]) as acme_listener,
        http_client(base, served["globex"]) as globex_listener,
        http_client(base, served["acme"]) as acme_writer,
        http_client(base, served["globex"]) as globex_writer,
    ):
        async with (
            acme_listener.listen(resource_subscriptions=[uri]) as acme_events,
            globex_listener.listen(resource_subscriptions=[uri]) as globex_events,
        ):

            async def collect(org: str, events: Any) -> None:
                async for event in events:
                    assert isinstance(event, ResourceUpdated)
                    received[org].append(event.uri)

            async def heard(org: str, count: int) -> None:
                with anyio.fail_after(10):
                    while len(received[org]) < count:
                        await anyio.sleep(0.02)

            async with anyio.create_task_group() as group:
                group.start_soon(collect, "acme", acme_events)
                group.start_soon(collect, "globex", globex_events)
                await call(acme_writer, "append_message", contact_id="+3100", channel="sms", role="user", content="a")
                await call(acme_writer, "append_message", contact_id="+3100", channel="sms", role="user", content="b")
                await heard("acme", 2)
                # globex's own write is the sentinel: its event comes after any of acme's it could have been told
                await call(globex_writer, "append_message", contact_id="+3100", channel="sms", role="user", content="g")
                await heard("globex", 1)
                await call(acme_writer, "append_message", contact_id="+3100", channel="sms", role="user", content="c")
                await heard("acme", 3)  # and acme's third write, the sentinel of globex's
                group.cancel_scope.cancel()
    assert received == {"acme": [uri, uri, uri], "globex": [uri]}


def test_a_non_loopback_host_needs_allowed_hosts(tmp_path: Path) -> None:
    result = run_cli("serve", "--http", "--db", str(tmp_path / "x.db"), "--host", "0.0.0.0")
    assert result.returncode == 2 and "--allowed-host" in result.stderr
    # uvicorn takes '*' beside an address for a name no address matches: refused, not served untrusting
    trusted = ("--forwarded-allow-ips", "*", "--forwarded-allow-ips", "10.0.0.5")
    both = run_cli("serve", "--http", "--db", str(tmp_path / "x.db"), *trusted)
    assert (both.returncode, both.stderr) == (
        2,
        "chatdock: --forwarded-allow-ips '*' believes every address: give it alone, or name the proxies\n",
    )
