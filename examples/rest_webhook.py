"""A WhatsApp Cloud API webhook handler that stores each message with one plain HTTP call: POST /chats.

    python examples/rest_webhook.py

What a webhook handler in any language does, here with Python's standard library only: no MCP client.
It starts `chatdock serve --http` on a free port with a fresh key, delivers `whatsapp_webhook.json` (beside
this script) twice, as providers retry webhooks, and shows that the second delivery stored nothing new:
chatdock answers 201 for a new message and 200 with the first copy for a retried one.
"""

from __future__ import annotations

import atexit
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PAYLOAD = Path(__file__).with_name("whatsapp_webhook.json")


def bodies(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The POST /chats body of every text message in a WhatsApp Cloud API payload."""
    found = []
    for entry in payload["entry"]:
        for change in entry["changes"]:
            for message in change["value"].get("messages", []):
                if message["type"] == "text":
                    found.append(
                        {
                            "contact_id": "+" + message["from"],
                            "channel": "whatsapp",
                            "role": "user",
                            "content": message["text"]["body"],
                            "created_at": datetime.fromtimestamp(int(message["timestamp"]), UTC).isoformat(),
                            "metadata": {"provider_message_id": message["id"]},
                        }
                    )
    return found


def post(base: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        base + "/chats",
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def deliver(base: str, key: str, payload: dict[str, Any]) -> list[int]:
    """What a webhook handler does with one delivery: each message, one POST."""
    return [post(base, key, body)[0] for body in bodies(payload)]


def main() -> None:
    chatdock = shutil.which("chatdock") or sys.exit("chatdock is not on PATH: install it first (see the README)")
    folder = tempfile.mkdtemp(prefix="chatdock-example-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # with the database in it, however this ends
    db = str(Path(folder) / "chatdock.db")
    key = subprocess.run(
        [chatdock, "keys", "create", "--db", db, "--org", "acme", "--name", "webhook"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([chatdock, "serve", "--http", "--db", db, "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).close()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        payload = json.loads(PAYLOAD.read_text())
        print("first delivery:", deliver(base, key, payload))
        print("second delivery:", deliver(base, key, payload))
        request = urllib.request.Request(
            base + "/chats/context?contact_id=%2B31612345678", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            print(json.loads(response.read())["formatted"])
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
