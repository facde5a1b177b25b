"""chatdock with the MCP TypeScript SDK's clients: 1.x, of the initialize era most applications and hosts run
today, and 2.x in both its modes (the initialize era by default; "auto", which probes and speaks 2026-07-28 with
chatdock); over stdio (a `chatdock serve` it starts) and over streamable HTTP with a key, on both engines. The SDK
checks every structured result against the tool's output schema, so a result that strays from its schema fails
here as it would in a user's application. tests/mcp/typescript/client.mjs is the application; this test reads
its report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client

from chatdock.server.mcp.app import Settings, build_server
from chatdock.server.mcp.resources import TRANSCRIPT_URI, contact_uri
from tests import npm
from tests.transports import create_key, http_server, stdio_params

pytestmark = pytest.mark.process  # each test starts chatdock and Node.js

FOLDER = Path(__file__).parent / "typescript"
CONTACT = "+31612345678"
OTHER = "+442071838750"
TRANSCRIPT = "USER: Where is my order?\nASSISTANT: It ships tomorrow."


# (the SDK's major version, the era it is to speak), as an application configures it
CLIENTS = {"sdk1": (1, "legacy"), "sdk2": (2, "legacy"), "sdk2-auto": (2, "modern")}
PROTOCOLS = {"legacy": "2025-11-25", "modern": "2026-07-28"}  # each the newest of its era both sides speak


@pytest.fixture(scope="session")
def sdks() -> Path:
    npm.installed(FOLDER, "@modelcontextprotocol/client")
    return npm.installed(FOLDER, "@modelcontextprotocol/sdk")


@pytest.fixture(params=list(CLIENTS))
def client(request: pytest.FixtureRequest, sdks: Path) -> tuple[int, str]:
    return CLIENTS[request.param]


def run_application(client: tuple[int, str], server: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    sdk, era = client
    done = subprocess.run(
        [npm.node(), "client.mjs", json.dumps({"sdk": sdk, "era": era, "server": server, "peer": peer})],
        cwd=FOLDER,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def stdio_target(db: str) -> dict[str, Any]:
    params = stdio_params("--db", db, "--org", "acme")
    return {"stdio": {"command": params.command, "args": params.args, "env": params.env}}


async def registered_tools() -> set[str]:
    async with Client(build_server(Settings())) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


def check(report: dict[str, Any], client: tuple[int, str]) -> None:
    """What the application saw, whichever transport carried it."""
    assert report["server"]["name"] == "chatdock"
    assert report["protocol"] == PROTOCOLS[client[1]]
    assert report["capabilities"]["resources"] == {"subscribe": True, "listChanged": True}
    schemas = {tool["name"]: tool["outputSchema"] for tool in report["tools"]}
    # get_context's result is the transcript alone (docs/reference.md): no schema to check it against
    assert {name for name, declared in schemas.items() if not declared} == {"get_context"}

    first, second = report["appended"]
    for result in (first, second, report["retried"], report["listed"], report["searched"], report["contact"]):
        assert "thrown" not in result, result  # the SDK found every structured result true to its schema
        assert not result["isError"], result
    assert first["structured"]["content"] == "Where is my order?"
    assert [m["content"] for m in second["structured"]["context"]["messages"]] == [
        "Where is my order?",
        "It ships tomorrow.",
    ]
    assert report["retried"]["structured"]["id"] == first["structured"]["id"]
    assert report["retried"]["structured"]["deduplicated"] is True

    assert report["context"] == {"isError": False, "text": [TRANSCRIPT], "structured": None}
    rows = report["contextRows"]["structured"]
    assert [(m["role"], m["content"]) for m in rows["messages"]] == [
        ("user", "Where is my order?"),
        ("assistant", "It ships tomorrow."),
    ]
    assert report["listed"]["structured"]["messages"][0]["content"] == "It ships tomorrow."
    assert report["listed"]["structured"]["next_cursor"]
    [hit] = report["searched"]["structured"]["hits"]
    assert hit["snippet"] == "Where is my [order]?"
    assert report["contact"]["structured"]["message_count"] == 2  # before the chat's message below
    for result in (*report["chatTools"], *report["identityTools"]):  # the other tools, true to their schemas
        assert "thrown" not in result and not result["isError"], result
    opened, posted, ended, chats = (result["structured"] for result in report["chatTools"])
    assert (posted["role"], posted["chat_id"], ended["status"]) == ("user", opened["id"], "COMPLETED")
    assert [chat["id"] for chat in chats["chats"]] == [opened["id"]]
    _, linked, unlinked, deleted, forgotten = (result["structured"] for result in report["identityTools"])
    assert (linked["aliases"], unlinked["aliases"]) == (["ann@example.com"], [])
    assert deleted["deleted"] is True and forgotten["deleted_messages"] == 0

    refused = report["refused"]
    assert refused["isError"] and refused["structured"] is None
    assert "role must be one of user, assistant, system, tool, event, note; got 'robot'" in refused["text"][0]
    assert report["unknownTool"]["isError"] and report["unknownTool"]["structured"] is None
    [unknown] = report["unknownTool"]["text"]
    assert unknown.startswith("Error executing tool no_such_tool: there is no tool named 'no_such_tool'; the tools are")

    assert report["resources"] == [contact_uri(TRANSCRIPT_URI, CONTACT)]
    assert report["templates"] == [
        "chatdock://contacts/{contact_id}/transcript",
        "chatdock://contacts/{contact_id}/context",
    ]
    assert report["transcript"] == [TRANSCRIPT]
    assert (report["prompts"], report["prompt"]) == (["continue_conversation"], 1)
    # the write after unsubscribing came before the other contact's, which ended the wait: it was never heard
    assert report["heard"] == [contact_uri(TRANSCRIPT_URI, CONTACT), contact_uri(TRANSCRIPT_URI, OTHER)]


async def test_the_typescript_sdk_over_stdio(client: tuple[int, str], db: str) -> None:
    """Two `chatdock serve` processes on one database, as two desktop hosts start them: one listens, one writes."""
    report = run_application(client, stdio_target(db), stdio_target(db))
    check(report, client)
    assert {tool["name"] for tool in report["tools"]} == await registered_tools()


async def test_the_typescript_sdk_over_http(client: tuple[int, str], db: str) -> None:
    """Two sessions of one server, each with its key: one listens (on its GET stream), the other writes."""
    key = create_key(db, "acme", "typescript")
    with http_server(db) as base:
        target = {"http": {"url": base + "/mcp", "key": key}}
        report = run_application(client, target, target)
    check(report, client)
    assert {tool["name"] for tool in report["tools"]} == await registered_tools()
