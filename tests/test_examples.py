"""The examples run as a user would run them, and say what their docstrings promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # each test here starts real processes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str) -> str:
    """The example's output; it must leave nothing behind in the temporary folder (its database included)."""
    with tempfile.TemporaryDirectory(prefix="chatdock-example-tmp-") as scratch:
        env = dict(os.environ, TMPDIR=scratch)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120, env=env, check=False
        )
        assert result.returncode == 0, result.stderr
        assert os.listdir(scratch) == [], f"{name} left {os.listdir(scratch)} in the temporary folder"
    return result.stdout


def test_agent_loop_builds_the_model_input_and_stores_the_reply() -> None:
    output = run_example("agent_loop.py")
    assert '"role": "system"' in output and '"content": "When does my order arrive?"' in output
    assert output.rstrip().endswith("USER: When does my order arrive?\nASSISTANT: Your order ships tomorrow.")


def test_claude_desktop_config_starts_chatdock_serve() -> None:
    config = json.loads((EXAMPLES / "claude_desktop_config.json").read_text())
    server = config["mcpServers"]["chatdock"]
    assert server["command"] == "chatdock" and server["args"][0] == "serve"


def test_webhook_ingest_stores_a_retried_payload_once() -> None:
    output = run_example("webhook_ingest.py")
    assert "first delivery: 2 messages, deduplicated: [False, False]" in output
    assert "second delivery: 2 messages, deduplicated: [True, True]" in output
    assert "stored messages: 2" in output


def test_voice_agent_hears_each_update_and_rebuilds_its_prompt() -> None:
    output = run_example("voice_agent.py")
    assert output.count("--- transcript updated") == 2
    assert "USER: Hi, I'm calling about my order 4471.\nUSER: It still hasn't arrived." in output


def test_http_example_is_refused_without_a_key_and_served_with_one() -> None:
    output = run_example("http_client.py")
    assert 'without a key: HTTP 401 {"error":"Invalid API key"' in output
    assert "with the key: USER: Hello from the web widget" in output


def test_rest_webhook_posts_a_retried_payload_with_plain_http_and_stores_it_once() -> None:
    output = run_example("rest_webhook.py")
    assert "first delivery: [201, 201]" in output and "second delivery: [200, 200]" in output
    assert output.rstrip().endswith("USER: Hi! Is my order 4471 on its way?\nUSER: It was due yesterday.")
