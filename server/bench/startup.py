"""How soon `chatdock serve` (stdio) answers its first request, beside its floor: a Python that imports the
MCP SDK's server and says so. Both are new processes of this Python, timed from the start of the process to
the first line it writes; each figure is the median of `count` starts."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
}
SDK_IMPORT = (
    "import sys, mcp.server.mcpserver, mcp.server.stdio; sys.stdout.write('ready\\n'); sys.stdout.flush(); "
    "sys.stdin.read()"
)


async def _first_line(args: list[str], send: bytes) -> float:
    """Milliseconds from starting `args` to its first line on stdout (after `send` on its stdin)."""
    began = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(send)
    await process.stdin.drain()
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    elapsed = (time.perf_counter() - began) * 1000
    process.stdin.close()
    await asyncio.wait_for(process.wait(), 60)
    if not line:
        raise RuntimeError(f"{' '.join(args[:4])} ended without answering")
    return elapsed


async def first_answers(db: str, count: int) -> tuple[float, float]:
    """Median ms to the first answer of `chatdock serve --db db`, and to a bare SDK import's first line."""
    request = (json.dumps(INITIALIZE) + "\n").encode()
    served, floor = [], []
    for _ in range(count):
        served.append(await _first_line([sys.executable, "-m", "chatdock.server.cli", "serve", "--db", db], request))
        floor.append(await _first_line([sys.executable, "-c", SDK_IMPORT], b""))
    return statistics.median(served), statistics.median(floor)
