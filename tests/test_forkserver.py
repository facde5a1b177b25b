"""The tests' way of starting chatdock (tests/forkserver.py, tests/launcher.py) behaves as the installed command:
the same exit codes and output, signals that reach chatdock, a SIGKILL that kills it, descriptors passed on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.transports import chatdock_command, free_port, installed_command, wait_healthy

pytestmark = pytest.mark.process


def test_a_forked_command_answers_as_the_installed_one(tmp_path: Path) -> None:
    assert chatdock_command() != installed_command()  # the fork server runs here (Linux)
    for args in (["--help"], ["keys", "list", "--db", str(tmp_path / "none.db")], ["serve", "--port", "x"]):
        forked = subprocess.run([*chatdock_command(), *args], capture_output=True, text=True, timeout=60)
        fresh = subprocess.run([*installed_command(), *args], capture_output=True, text=True, timeout=60)
        assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)


def test_a_descriptor_beyond_the_standard_three_is_passed_on(tmp_path: Path) -> None:
    message = {"contact_id": "+31612345678", "channel": "sms", "role": "user", "content": "hi"}
    line = json.dumps({**message, "created_at": "2025-01-01T00:00:00Z"})
    read, write = os.pipe()
    os.write(write, line.encode() + b"\n")
    os.close(write)
    db = str(tmp_path / "chatdock.db")
    done = subprocess.run(
        [*chatdock_command(), "import", "--db", db, f"/dev/fd/{read}"],
        pass_fds=[read],
        capture_output=True,
        text=True,
        timeout=60,
    )
    os.close(read)
    assert done.returncode == 0, done.stderr
    assert "stored 1 message(s)" in done.stdout, (done.stdout, done.stderr)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_signal_to_the_launcher_reaches_chatdock(tmp_path: Path, how: str) -> None:
    port = free_port()
    command = [*chatdock_command(), "serve", "--http", "--db", str(tmp_path / "c.db"), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}")
        process.send_signal(getattr(signal, how))
        # SIGTERM: chatdock ends as it does on SIGTERM (exit 0); SIGKILL: the launcher dies of it, and so does chatdock
        assert process.wait(15) == (0 if how == "SIGTERM" else -signal.SIGKILL)
        deadline = time.monotonic() + 5
        while True:  # the port is let go: nothing answers there any more
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=1).close()
            except OSError:
                break
            assert time.monotonic() < deadline, "chatdock still answers after its launcher ended"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
