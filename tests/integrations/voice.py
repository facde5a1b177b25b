"""What the voice integrations' tests (test_pipecat.py, test_livekit.py) share: chatdock over HTTP or in the
test's process, a server a test can take away and bring back (the outage tests), the example scripts loaded as
modules (their scripted models stand in for the LLM), and small waits and reads."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from chatdock.client import ChatdockClient
from chatdock.storage import Message
from tests.transports import RestartableServer, create_key, http_server, restartable_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """The example script `examples/<name>.py` as a module (examples are scripts, not a package): a test takes
    its scripted model from it, so the stand-in the example runs is the one the tests run."""
    module_name = f"examples_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Chatdock:
    """A client to chatdock, and the URL and key it uses when it goes over HTTP (None when embedded)."""

    client: ChatdockClient
    url: str | None = None
    key: str | None = None


@contextlib.asynccontextmanager
async def chatdock(transport: str, db: str, org: str = "default", key_name: str = "voice") -> AsyncIterator[Chatdock]:
    """chatdock over HTTP with a key for `org` (a real `chatdock serve --http` on 127.0.0.1), `transport="http"`,
    or in this process, `"embedded"`."""
    if transport == "embedded":
        async with ChatdockClient.embedded(db=db, org=org) as client:
            yield Chatdock(client)
        return
    key = create_key(db, org, key_name)
    with http_server(db) as url:
        async with ChatdockClient(url, api_key=key) as client:
            yield Chatdock(client, url, key)


async def chat_messages(client: ChatdockClient, contact_id: str, chat_id: str) -> list[Message]:
    """A chat's messages, oldest first (all of them: one page)."""
    page = await client.list_messages(contact_id, limit=200, chat_id=chat_id)
    assert page.next_cursor is None
    return page.messages[::-1]


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (at most 10 s) until `condition()` holds."""
    try:
        async with asyncio.timeout(10):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"{what} did not come within 10 s")


@contextlib.asynccontextmanager
async def restartable_chatdock(
    folder: Path, org: str, key_name: str, fresh: bool = False, **options: Any
) -> AsyncIterator[tuple[RestartableServer, ChatdockClient]]:
    """A running `RestartableServer` for a database in `folder` (`fresh`: one to pause) and a client to it with a
    key for `org` (`options`: the client's, such as its `timeout`), both closed at the end."""
    db = str(folder / "chatdock.db")
    key = create_key(db, org, key_name)
    with restartable_server(db, fresh=fresh) as server:
        async with ChatdockClient(server.url, api_key=key, **options) as client:
            yield server, client
