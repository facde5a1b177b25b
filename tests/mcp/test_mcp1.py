"""The Python SDK 1.x's client, of the initialize era most Python agent frameworks still run on (it does not
install beside mcp 2.x, so it runs from a virtual environment of its own, made once from the package index):
docs/events.md's whole 1.x client, taken from the page as it is, hears a contact's writes over HTTP and reads
the transcript each time."""

from __future__ import annotations

import fcntl
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

from tests.transports import Rest, create_key, http_server

pytestmark = pytest.mark.process  # runs chatdock and a Python of its own

FOLDER = Path(__file__).parent / "mcp1"
MCP1 = "1.30.0"  # the 1.x release the docs were checked against
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="session")
def python1() -> Path:
    """A Python with mcp 1.x: FOLDER/.venv, made by the first worker that needs it, kept for the next runs."""
    FOLDER.mkdir(exist_ok=True)
    python = FOLDER / ".venv" / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('mcp'))"]
    with open(FOLDER / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = subprocess.run(probe, capture_output=True, text=True, check=False) if python.exists() else None
        if found is None or found.stdout.strip() != MCP1:
            venv.create(FOLDER / ".venv", clear=True, with_pip=False)
            install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", f"mcp=={MCP1}"]
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
