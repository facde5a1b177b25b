"""Helpers shared by the tests: chatdock as a real process (stdio, HTTP on 127.0.0.1), tool-call checks."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def chatdock_command() -> list[str]:
    found = shutil.which("chatdock", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "server.cli"]


def stdio_params(*args: str) -> StdioServerParameters:
    command = chatdock_command()
    return StdioServerParameters(command=command[0], args=[*command[1:], "serve", *args], env=dict(os.environ))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*chatdock_command(), *args], capture_output=True, text=True, timeout=60, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def http_server(db: str, *extra: str) -> Iterator[str]:
    """`chatdock serve --http` on a free loopback port; yields its base URL once /healthz answers."""
    port = free_port()
    process = subprocess.Popen(
        [*chatdock_command(), "serve", "--http", "--db", db, "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stderr.read() if process.stderr else ""
                    raise RuntimeError(f"chatdock did not start: {output}") from None
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


def http_client(base: str, key: str | None, mode: str = "auto", **kwargs: Any) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = streamable_http_client(base + "/mcp", http_client=create_mcp_http_client(headers=headers))
    return Client(transport, mode=mode, **kwargs)  # type: ignore[arg-type]


def create_key(db: str, org: str, name: str) -> str:
    created = run_cli("keys", "create", "--db", db, "--org", org, "--name", name)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


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
