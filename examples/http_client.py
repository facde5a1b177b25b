"""chatdock over HTTP with an API key, as a hosted agent or voice framework would use it.

    python examples/http_client.py

It creates a key for organization `acme` in a temporary database, starts
`chatdock serve --http` on a free loopback port, and calls it with the key in
the Authorization header. A request without the key gets 401.
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main() -> None:
    chatdock = shutil.which("chatdock") or sys.exit("chatdock is not on PATH: run `pip install -e .` first")
    folder = tempfile.mkdtemp(prefix="chatdock-example-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # with the database in it, however this ends
    db = str(Path(folder) / "chatdock.db")
    key = subprocess.run(
        [chatdock, "keys", "create", "--db", db, "--org", "acme", "--name", "example"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen([chatdock, "serve", "--http", "--db", db, "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):  # wait until /healthz answers
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        try:
            urllib.request.urlopen(urllib.request.Request(base + "/mcp", data=b"{}", method="POST"), timeout=5)
        except urllib.error.HTTPError as refused:
            print(f"without a key: HTTP {refused.code} {refused.read().decode()}")
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30, read=300))
        async with Client(streamable_http_client(base + "/mcp", http_client=http)) as client:
            await client.call_tool(
                "append_message",
                {"contact_id": "a@b.com", "channel": "widget", "role": "user", "content": "Hello from the web widget"},
            )
            context = await client.call_tool("get_context", {"contact_id": "a@b.com"})
            print("with the key:", context.content[0].text)  # type: ignore[union-attr]  # the transcript
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
