"""Helpers shared by the tests: chatdock as a real process (stdio, HTTP on 127.0.0.1), tool-call checks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx2
from mcp.client import Client, Transport
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from chatdock.storage import open_store
from tests import forkserver


def chatdock_command() -> list[str]:
    """How a test starts chatdock: through this worker's fork server (tests/forkserver.py says why)."""
    return forkserver.launcher_command() or installed_command()


def installed_command() -> list[str]:
    """The installed `chatdock` command itself, started from scratch."""
    found = shutil.which("chatdock", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "chatdock.server.cli"]


def stdio_params(*args: str, fresh: bool = False) -> StdioServerParameters:
    """`chatdock serve ARGS` over stdio; `fresh`: the installed command started from scratch (not forked)."""
    command = installed_command() if fresh else chatdock_command()
    return StdioServerParameters(command=command[0], args=[*command[1:], "serve", *args], env=dict(os.environ))


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """`path` (a file or a folder) made unwritable for this process's user: the immutable attribute for root
    (whom permission bits do not stop), read-only permission bits for anyone else."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
        undo: Callable[[], object] = lambda: subprocess.run(["chattr", "-i", str(path)], check=False)  # noqa: E731
    else:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)  # a folder stays open to read
        undo = lambda: path.chmod(mode)  # noqa: E731
    try:
        assert not os.access(path, os.W_OK), "the file is still writable: this test would show nothing"
        yield
    finally:
        undo()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*chatdock_command(), *args], capture_output=True, text=True, timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def http_server(
    db: str, *extra: str, fresh: bool = False, port: int | None = None, log: Path | None = None
) -> Iterator[str]:
    """`chatdock serve --http` on a free loopback port (or `port`: a server started again where the last one
    was); yields its base URL once /healthz answers. `fresh`: the installed command started from scratch (not
    forked); `log`: the file its log is written to."""
    port = free_port() if port is None else port
    command = installed_command() if fresh else chatdock_command()
    with contextlib.ExitStack() as files:
        process = subprocess.Popen(
            [*command, "serve", "--http", "--db", db, "--port", str(port), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE if log is None else files.enter_context(log.open("w")),
            text=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, base)
        yield base
    finally:
        end(process)


def stop(process: subprocess.Popen[Any]) -> None:
    """Stop a chatdock process: SIGTERM, SIGKILL if it is still there after 10 s (nothing if it has ended)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def end(process: subprocess.Popen[str]) -> None:
    """`stop` a chatdock process and close its stderr."""
    stop(process)
    if process.stderr:
        process.stderr.close()


def wait_healthy(process: subprocess.Popen[str], base: str) -> None:
    """Until the chatdock `process` started at `base` answers /healthz (at most 30 s); its stderr if it died."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stderr.read() if process.stderr else ""
                raise RuntimeError(f"chatdock did not start: {output}") from None
            time.sleep(0.02)


def http_transport(base: str, key: str | None) -> Transport:
    """The SDK's streamable HTTP transport to a chatdock on `base`, sending `key` as the bearer key."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300))
    return streamable_http_client(base + "/mcp", http_client=http)


def http_client(base: str, key: str | None, mode: str = "auto", **kwargs: Any) -> Client:
    return Client(http_transport(base, key), mode=mode, **kwargs)


def create_key(db: str, org: str, name: str) -> str:
    """A new API key of `org` in the database `db`, made as `chatdock keys create` makes it (the store's
    `create_api_key`), in a thread of this process: a test's key costs no process start (tests/cli and
    tests/mcp/test_stdio.py run the command itself)."""

    async def make() -> str:
        async with open_store(db) as store:
            return (await store.create_api_key(org, name)).key

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the caller may be inside a running event loop
        return pool.submit(asyncio.run, make()).result()


async def call(client: Client, name: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must succeed; its structured result."""
    result = await client.call_tool(name, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


async def error(client: Client, name: str, **arguments: Any) -> str:
    """A tool call that must fail with a clear message (never a traceback); the message."""
    result = await client.call_tool(name, arguments)
    assert result.is_error, result.structured_content
    text = str(result.content[0].text)  # type: ignore[union-attr]
    assert "Traceback" not in text
    return text


class RawStdio:
    """`chatdock serve` as a subprocess spoken to in raw JSON-RPC lines (initialize-era handshake).

    Requests can be pipelined (`send` many, then `wait`): the server runs them concurrently, which
    is what the crash and two-process tests need; `kill()` is a real SIGKILL.
    """

    def __init__(self, db: str, *extra: str) -> None:
        self.process = subprocess.Popen(
            [*chatdock_command(), "serve", "--db", db, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._next = 0
        self._lock = threading.Lock()
        self.responses: dict[int, dict[str, Any]] = {}
        self._arrived = threading.Condition(self._lock)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = b""
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        first = self.send(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "tests", "version": "0"}},
        )
        self.wait([first], timeout=60)
        self._write({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            message = json.loads(line)
            if "id" in message and ("result" in message or "error" in message):
                with self._arrived:
                    self.responses[message["id"]] = message
                    self._arrived.notify_all()
        with self._arrived:
            self._arrived.notify_all()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr += line

    def _write(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def send(self, method: str, params: dict[str, Any]) -> int:
        request_id = self.new_id()
        self._write({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return request_id

    def new_id(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def send_line(self, line: bytes) -> None:
        """Write one line as it is (to send what json.dumps would refuse or mend); take its id from `new_id`."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.rstrip(b"\n") + b"\n")
        self.process.stdin.flush()

    def send_tool(self, name: str, arguments: Any) -> int:
        return self.send("tools/call", {"name": name, "arguments": arguments})

    def wait(self, ids: list[int], timeout: float = 60) -> list[dict[str, Any]]:
        """The responses to `ids`, in order; fewer when the process ends first."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not all(i in self.responses for i in ids):
                if not self._reader.is_alive():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer to {[i for i in ids if i not in self.responses][:5]}")
                self._arrived.wait(left)
            return [self.responses[i] for i in ids if i in self.responses]

    def tool(self, name: str, arguments: Any, timeout: float = 60) -> dict[str, Any]:
        """One call; the JSON-RPC response (`result` with isError/structuredContent, or `error`)."""
        return self.wait([self.send_tool(name, arguments)], timeout)[0]

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self._reader.join(10)

    def close(self) -> None:
        """Close stdin (a clean shutdown for a live server) and reap the process."""
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):  # a killed server: the pipe is broken
            self.process.stdin.close()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(10)
        self._stderr_reader.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> RawStdio:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def structured(response: dict[str, Any]) -> dict[str, Any]:
    """The structured result of a tool call that must have succeeded."""
    assert "result" in response, response
    result = response["result"]
    assert not result.get("isError"), result["content"]
    return dict(result["structuredContent"])


class Rest:
    """A tiny JSON client of the REST routes, with one key (or none): (status, parsed body) of each call."""

    def __init__(self, base: str, key: str | None) -> None:
        self.base = base
        self.key = key

    def __call__(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, **query: Any
    ) -> tuple[int, Any]:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"}
        if self.key is not None:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(url, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as failed:
            return failed.code, json.loads(failed.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """The parsed body of a call that must succeed."""
        status, answer = self(method, path, body, **query)
        assert status < 300, (method, path, status, answer)
        return answer


def send_body(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    """A stub server's whole answer (a handler of http.server): the status, the body's type and length, the body."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


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
