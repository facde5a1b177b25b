"""Store a WhatsApp Cloud API webhook's messages, twice, and see them stored once.

    python examples/webhook_ingest.py

Providers retry webhooks; chatdock deduplicates on (channel,
metadata.provider_message_id), so delivering the same payload again stores
nothing new. The payload is `whatsapp_webhook.json` beside this script.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

PAYLOAD = Path(__file__).with_name("whatsapp_webhook.json")


def messages_of(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The append_message arguments for every text message in a WhatsApp Cloud API payload."""
    found = []
    for entry in payload["entry"]:
        for change in entry["changes"]:
            for message in change["value"].get("messages", []):
                if message["type"] != "text":
                    continue
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


async def deliver(client: Client, payload: dict[str, Any]) -> list[bool]:
    flags = []
    for arguments in messages_of(payload):
        result = await client.call_tool("append_message", arguments)
        flags.append(bool((result.structured_content or {})["deduplicated"]))
    return flags


async def main() -> None:
    command = shutil.which("chatdock") or sys.exit("chatdock is not on PATH: run `pip install -e .` first")
    payload = json.loads(PAYLOAD.read_text())
    async with Client(StdioServerParameters(command=command, args=["serve", "--db", ":memory:"])) as client:
        first = await deliver(client, payload)
        print(f"first delivery: {len(first)} messages, deduplicated: {first}")
        again = await deliver(client, payload)
        print(f"second delivery: {len(again)} messages, deduplicated: {again}")
        page = await client.call_tool("list_messages", {"contact_id": "+31612345678"})
        stored = (page.structured_content or {})["messages"]
        print(f"stored messages: {len(stored)}")


if __name__ == "__main__":
    asyncio.run(main())
