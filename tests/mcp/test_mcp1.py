"""The Python SDK 1.x's client, of the initialize era most Python agent frameworks still run on, and LangChain's
MCP adapters on it (they do not install beside mcp 2.x, so they run from a virtual environment of their own,
made once from the package index): docs/events.md's whole 1.x client, taken from the page as it is, hears a
contact's writes over HTTP and reads the transcript each time; LangChain loads every tool, as an OpenAI tool
schema too, and a call's text (an error's included) is what its model reads."""

from __future__ import annotations

import fcntl
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path

import pytest
from mcp.client import Client

from chatdock.server.mcp.app import Settings, build_server
from tests.transports import Rest, create_key, http_server

pytestmark = pytest.mark.process  # runs chatdock and a Python of its own

FOLDER = Path(__file__).parent / "mcp1"
MCP1 = "1.30.0"  # the 1.x release the docs were checked against
ADAPTERS = "0.3.2"  # langchain-mcp-adapters
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="session")
def python1() -> Path:
    """A Python with mcp 1.x: FOLDER/.venv, made by the first worker that needs it, kept for the next runs."""
    FOLDER.mkdir(exist_ok=True)
    python = FOLDER / ".venv" / "bin" / "python"
    versions = "import importlib.metadata as m; print(m.version('mcp'), m.version('langchain-mcp-adapters'))"
    with open(FOLDER / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        probe = [str(python), "-c", versions]
        found = subprocess.run(probe, capture_output=True, text=True, check=False).stdout if python.exists() else ""
        if found.split() != [MCP1, ADAPTERS]:
            venv.create(FOLDER / ".venv", clear=True, with_pip=False)
            wanted = [f"mcp=={MCP1}", f"langchain-mcp-adapters=={ADAPTERS}"]
            install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", *wanted]
            done = subprocess.run(install, capture_output=True, text=True, timeout=300, check=False)
            assert done.returncode == 0, f"installing mcp {MCP1} failed:\n{done.stdout}{done.stderr}"
    return python


def docs_client() -> str:
    """The mcp 1.x client of docs/events.md, as the page has it."""
    blocks: list[str] = re.findall(r"```python\n(.*?)```", (DOCS / "events.md").read_text(), re.DOTALL)
    [client] = [block for block in blocks if block.startswith("# initialize era (mcp 1.x)")]
    return client


def lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """The process's stdout, a line at a time, read by a thread."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def next_line(lines: queue.Queue[str], process: subprocess.Popen[str]) -> str:
    try:
        return lines.get(timeout=30)
    except queue.Empty:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"the 1.x client said nothing for 30 s; its stderr:\n{stderr}") from None


async def test_the_docs_mcp1_client_hears_each_write_and_reads_the_transcript(
    python1: Path, db: str, tmp_path: Path
) -> None:
    script = tmp_path / "listen.py"
    script.write_text(docs_client())
    key = create_key(db, "acme", "mcp1")
    with http_server(db) as base:
        env = {**os.environ, "CHATDOCK_URL": base, "CHATDOCK_KEY": key}
        process = subprocess.Popen(
            [str(python1), str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            lines = lines_of(process)
            assert next_line(lines, process) == "listening"
            rest = Rest(base, key)
            said: list[str] = []
            printed: list[str] = []
            for role, content in (("user", "Where is my order?"), ("assistant", "It ships tomorrow.")):
                message = {"contact_id": "+31612345678", "channel": "sms", "role": role, "content": content}
                rest.ok("POST", "/chats", message)
                said.append(f"{role.upper()}: {content}")
                deadline = time.monotonic() + 30
                while printed[-len(said) :] != said:  # each write heard, and the transcript read after it
                    assert time.monotonic() < deadline, printed
                    printed.append(next_line(lines, process))
        finally:
            process.kill()
            process.communicate()


LANGCHAIN_APP = """
import asyncio, json, os
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_mcp_adapters.client import MultiServerMCPClient


async def main():
    key = os.environ["CHATDOCK_KEY"]
    connection = {"transport": "streamable_http", "url": os.environ["CHATDOCK_URL"] + "/mcp",
                  "headers": {"Authorization": "Bearer " + key}}
    tools = {tool.name: tool for tool in await MultiServerMCPClient({"chatdock": connection}).get_tools()}
    converted = [convert_to_openai_tool(tool)["function"]["name"] for tool in tools.values()]
    report = {"tools": sorted(tools), "openai": sorted(converted)}
    said = {"contact_id": "+31612345678", "channel": "whatsapp", "role": "user", "content": "Where is my order?"}
    await tools["append_message"].ainvoke(said)
    texts = lambda blocks: [block["text"] for block in blocks]
    report["context"] = texts(await tools["get_context"].ainvoke({"contact_id": "+31612345678"}))
    wrong = {**said, "channel": "WhatsApp", "role": "customer"}
    report["refused"] = texts(await tools["append_message"].ainvoke(wrong))
    print(json.dumps(report))


asyncio.run(main())
"""


async def test_langchain_loads_every_tool_and_its_model_reads_the_text(python1: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "chatdock.db")
    script = tmp_path / "langchain_app.py"
    script.write_text(LANGCHAIN_APP)
    key = create_key(db, "acme", "langchain")
    async with Client(build_server(Settings(db=":memory:"))) as client:
        registered = sorted(tool.name for tool in (await client.list_tools()).tools)
    with http_server(db) as base:
        env = {**os.environ, "CHATDOCK_URL": base, "CHATDOCK_KEY": key}
        done = subprocess.run([str(python1), str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["tools"] == report["openai"] == registered  # every schema converts for an OpenAI model
    assert report["context"] == ["USER: Where is my order?"]
    assert report["refused"] == [
        "Error executing tool append_message: channel must be a lower-case name of 1 to 64 characters from a-z, "
        "0-9 and _.:- starting with a letter or digit (like 'whatsapp' or 'voice'), got 'WhatsApp'; role must be "
        "one of user, assistant, system, tool, event, note; got 'customer'"
    ]
