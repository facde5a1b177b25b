"""What the voice integrations' tests (test_pipecat.py, test_livekit.py) share: chatdock over HTTP or in the
test's process, a server a test can take away and bring back (the outage tests), the example scripts loaded as
modules (their scripted models stand in for the LLM), and small waits and reads."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from chatdock.client import ChatdockClient
from chatdock.storage import Message
from tests.transports import chatdock_command, create_key, end, free_port, http_server, installed_command, wait_healthy

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


class RestartableServer:
    """`chatdock serve --http` on one loopback port and database, which `stop()` ends and `start()` starts
    again on the same port (a client that kept the URL finds it back); `pause()` stops the process without
    ending it (SIGSTOP: requests hang, as on an overloaded host) and `resume()` lets it go on. A server to pause
    is the installed command started from scratch (`fresh`): a forked one is behind tests/launcher.py, which
    cannot pass on a SIGSTOP, nor a stop the test could wait for."""

    def __init__(self, db: str, *extra: str, fresh: bool = False) -> None:
        self.db = db
        self.extra = extra
        self.fresh = fresh
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        assert self.process is None, "already running"
        launch = installed_command() if self.fresh else chatdock_command()
        command = [*launch, "serve", "--http", "--db", self.db, "--port", str(self.port), *self.extra]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_healthy(self.process, self.url)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        end(process)

    def pause(self) -> None:
        assert self.process is not None, "not running"
        assert self.fresh, "pause a server started with fresh=True"
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def restartable_server(db: str, *extra: str, fresh: bool = False) -> Iterator[RestartableServer]:
    """A running `RestartableServer` for `db`, stopped at the end whatever state the test left it in."""
    server = RestartableServer(db, *extra, fresh=fresh)
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
