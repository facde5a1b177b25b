"""`chatdock serve` as a real subprocess over stdio, the way desktop clients start it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from mcp.client import Client

from chatdock.server.mcp.resources import TRANSCRIPT_URI, contact_uri
from tests.transports import RawStdio, chatdock_command, installed_command, run_cli, stdio_params, unwritable

pytestmark = pytest.mark.process  # each test here starts real processes


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_stdio_round_trip_and_restart_on_the_same_file(tmp_path: Path, mode: str) -> None:
    db = str(tmp_path / "nested" / "folder" / "chatdock.db")
    async with Client(stdio_params("--db", db, "--org", "acme", fresh=True), mode=mode) as client:
        stored = await client.call_tool(
            "append_message",
            {"contact_id": "+31612345678", "channel": "voice", "role": "user", "content": "Calling about my order"},
        )
        assert not stored.is_error
        context = await client.call_tool("get_context", {"contact_id": "+31612345678"})
        assert context.content[0].text == "USER: Calling about my order"  # type: ignore[union-attr]
        transcript = await client.read_resource("chatdock://contacts/%2B31612345678/transcript")
        assert transcript.contents[0].text == "USER: Calling about my order"  # type: ignore[union-attr]
        bad = await client.call_tool("get_context", {"contact_id": "+31612345678", "limit": 500})
        assert bad.is_error and "limit must be between 1 and 200, got 500" in bad.content[0].text  # type: ignore[union-attr]

    async with Client(stdio_params("--db", db, "--org", "acme", "--read-only"), mode=mode) as again:
        tools = {tool.name for tool in (await again.list_tools()).tools}
        assert "append_message" not in tools
        context = await again.call_tool("get_context", {"contact_id": "+31612345678", "include_messages": True})
        assert context.structured_content is not None
        assert [m["content"] for m in context.structured_content["messages"]] == ["Calling about my order"]

    async with Client(stdio_params("--db", db, "--org", "other"), mode=mode) as other:
        context = await other.call_tool("get_context", {"contact_id": "+31612345678", "include_messages": True})
        assert context.structured_content is not None and context.structured_content["messages"] == []

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_read_only_server_gives_the_model_no_write_advice(tmp_path: Path, mode: str) -> None:
    """The instructions a client hands its model name only tools the server has: a --read-only server's do not
    tell it to store messages with append_message (a tool it does not list)."""
    db = str(tmp_path / "chatdock.db")
    async with Client(stdio_params("--db", db), mode=mode) as writer:
        assert writer.instructions is not None and "append_message" in writer.instructions
    async with Client(stdio_params("--db", db, "--read-only"), mode=mode) as reader:
        tools = {tool.name for tool in (await reader.list_tools()).tools}
        assert reader.instructions is not None and "get_context" in reader.instructions
        named = set(re.findall(r"\b[a-z]+_[a-z_]+\b", re.sub(r"\{\w+\}", "", reader.instructions)))  # not {contact_id}
        assert named <= tools, named - tools
        assert "store each" not in reader.instructions


def test_help_explains_every_option() -> None:
    top = run_cli("--help")
    assert top.returncode == 0 and "serve" in top.stdout and "keys" in top.stdout
    serve = run_cli("serve", "--help")
    for option in ["--db", "--org", "--read-only", "--log-level", "--http", "--host", "--port", "--durability"]:
        assert option in serve.stdout
    assert "CHATDOCK_DB" in serve.stdout and "CHATDOCK_ORG" in serve.stdout
    said = " ".join(serve.stdout.split("options:", 1)[1].split())  # argparse wraps its lines
    # every variable serve reads is named where its flag is
    assert "(env CHATDOCK_DURABILITY; default: normal)" in said
    listens = said.split("--max-listens-per-org N", 1)[1].split("--max-sessions-per-org N", 1)[0]
    assert "initialize-era event streams (the GET on /mcp)" in listens.replace("initialize- era", "initialize-era")
    read_only = said.split("--read-only ", 1)[1].split("--durability", 1)[0]
    assert "REST routes" in read_only and "inspector" in read_only
    bench = " ".join(run_cli("bench", "--help").stdout.split())
    assert "pip install -e '.[compare]'" in bench and "chatdock[compare]" not in bench  # chatdock is not on PyPI


def test_keys_cli_round_trip(tmp_path: Path) -> None:
    db = str(tmp_path / "keys.db")
    created = run_cli("keys", "create", "--db", db, "--org", "acme", "--name", "voice-prod")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("cdk_") and "not shown again" in created.stderr
    listed = run_cli("keys", "list", "--db", db)
    assert "voice-prod" in listed.stdout and "acme" in listed.stdout and key not in listed.stdout
    assert key.split("_")[0] + "_" + key.split("_")[1] in listed.stdout
    duplicate = run_cli("keys", "create", "--db", db, "--org", "acme", "--name", "voice-prod")
    assert duplicate.returncode == 2 and "organization 'acme' already has a live key named" in duplicate.stderr
    elsewhere = run_cli("keys", "create", "--db", db, "--org", "initech", "--name", "voice-prod")
    assert elsewhere.returncode == 0, elsewhere.stderr  # a name is the organization's own
    which = run_cli("keys", "revoke", "--db", db, "voice-prod")
    assert which.returncode == 2 and "chatdock keys revoke --org ORG voice-prod" in which.stderr, which
    assert run_cli("keys", "revoke", "--db", db, "--org", "initech", "voice-prod").returncode == 0
    revoked = run_cli("keys", "revoke", "--db", db, "voice-prod")
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    again = run_cli("keys", "revoke", "--db", db, "voice-prod")
    assert again.returncode == 2 and "no live key" in again.stderr
    for org in ("acme", "globex"):
        assert run_cli("keys", "create", "--db", db, "--org", org, "--name", f"{org}-web").returncode == 0
    listed = run_cli("keys", "list", "--db", db, "--org", "globex")
    assert listed.returncode == 0 and "globex-web" in listed.stdout
    assert "acme" not in listed.stdout and "voice-prod" not in listed.stdout  # only that organization's keys
    elsewhere = run_cli("keys", "revoke", "--db", db, "--org", "globex", "acme-web")
    assert elsewhere.returncode == 2 and "no live key of organization 'globex'" in elsewhere.stderr
    assert "acme-web" in run_cli("keys", "list", "--db", db, "--org", "acme").stdout  # still live
    assert run_cli("keys", "revoke", "--db", db, "--org", "acme", "acme-web").returncode == 0
    leaked = run_cli("keys", "create", "--db", db, "--org", "acme").stdout.strip()
    revoked = run_cli("keys", "revoke", "--db", db, leaked)  # the whole key, as one has it when it leaked
    assert revoked.returncode == 0 and revoked.stdout.strip() == f"revoked {leaked[:12]}", revoked
    again = run_cli("keys", "revoke", "--db", db, leaked)
    assert again.returncode == 2 and leaked[:12] in again.stderr and leaked[12:] not in again.stderr, again
    named = run_cli("keys", "create", "--db", db, "--org", "acme", "--name", "billing-cdk_rotation")
    assert named.returncode == 0 and run_cli("keys", "revoke", "--db", db, "billing-cdk_rotation").returncode == 0
    header = run_cli("keys", "revoke", "--db", db, f"Bearer {leaked}")  # pasted from a request's header
    assert header.returncode == 2 and leaked[:12] in header.stderr and leaked[12:] not in header.stderr, header
    with unwritable(Path(db)):  # listing is a read: a file chatdock may not write is listed all the same
        listed = run_cli("keys", "list", "--db", db)
    assert listed.returncode == 0 and listed.stdout.count("\n") == 1 + 6 and "acme-web" in listed.stdout, listed


def test_requests_still_running_when_stdin_ends_are_answered_not_cancelled(tmp_path: Path) -> None:
    """A client that writes its requests and closes stdin gets every answer; nothing stored is reported lost."""
    db = tmp_path / "piped.db"
    lines = [
        {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "pipe", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ] + [
        {
            "jsonrpc": "2.0",
            "id": i,
            "method": "tools/call",
            "params": {
                "name": "append_message",
                "arguments": {"contact_id": "+31612345678", "channel": "sms", "role": "user", "content": f"piped {i}"},
            },
        }
        for i in range(1, 41)
    ] + [  # and requests of every other kind, which the SDK alone would cancel too (found by a client review)
        {"jsonrpc": "2.0", "id": 41, "method": "resources/read",
         "params": {"uri": contact_uri(TRANSCRIPT_URI, "+31612345678")}},
        {"jsonrpc": "2.0", "id": 42, "method": "prompts/get",
         "params": {"name": "continue_conversation", "arguments": {"contact_id": "+31612345678"}}},
        {"jsonrpc": "2.0", "id": 43, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 44, "method": "resources/subscribe",
         "params": {"uri": contact_uri(TRANSCRIPT_URI, "+31612345678")}},
        {"jsonrpc": "2.0", "id": 45, "method": "ping"},
    ]  # fmt: skip
    done = subprocess.run(
        [*chatdock_command(), "serve", "--db", str(db)],
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answers = {answer["id"]: answer for answer in map(json.loads, done.stdout.splitlines())}
    assert sorted(answers) == list(range(46)), done.stdout
    assert all("result" in answer and not answer["result"].get("isError") for answer in answers.values())
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 40


def files_open_by_server(pid: int) -> list[str]:
    """What the chatdock process started as `pid` has open: it, or the process the tests' fork server made for it
    (tests/launcher.py), which holds the same standard input (chatdock keeps it under another descriptor)."""
    stdin = os.readlink(f"/proc/{pid}/fd/0")
    opened: list[str] = []
    for process in Path("/proc").iterdir():
        if not process.name.isdigit() or int(process.name) == os.getpid():  # (this one writes to that pipe)
            continue
        with contextlib.suppress(OSError):
            held = [os.readlink(fd) for fd in (process / "fd").iterdir()]
            if stdin in held:
                opened += held
    return opened


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_answers_what_was_read_and_leaves_nothing_behind(tmp_path: Path, stop: signal.Signals) -> None:
    """A client stopping its server closes stdin, then sends SIGTERM (the TypeScript SDK, after 2 s): the signal
    killed the process at once, with writes stored but unanswered (248 of 400), and a `--db :memory:` database
    left, with what it held, in /dev/shm (a desktop user's review). It ends serving as the end of stdin does:
    what was read is answered, what was not is not done, the store is closed."""
    arguments = {"contact_id": "+31612345678", "channel": "sms", "role": "user"}
    db = tmp_path / "stopped.db"
    with RawStdio(str(db), "--log-level", "INFO") as server:
        asked = [server.send_tool("append_message", {**arguments, "content": f"under way {n}"}) for n in range(200)]
        server.wait(asked[:1])  # serving them: more are read and under way
        server.process.send_signal(stop)
        assert server.process.wait(30) == 0
        answers = server.wait(asked, timeout=5)
    assert answers and all("result" in answer and not answer["result"].get("isError") for answer in answers)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == len(answers)  # none stored unanswered
    assert f"{stop.name}: no more requests are read" in server.stderr.decode()

    with RawStdio(":memory:") as server:
        shm = {Path(opened).parent for opened in files_open_by_server(server.process.pid)
               if opened.startswith("/dev/shm/chatdock-")}  # fmt: skip
        assert len(shm) == 1, shm  # the throwaway database's folder, in RAM
        assert "result" in server.tool("append_message", {**arguments, "content": "kept in RAM"})
        server.process.send_signal(stop)
        assert server.process.wait(30) == 0
    assert not any(folder.exists() for folder in shm)


def test_a_blank_line_is_answered_and_serving_goes_on() -> None:
    """A blank line (a client writing a message and "\n\n") ended serving in the first version of the stop
    signals' reader, which took an empty line for the end of stdin (found by a review of the diff)."""
    with RawStdio(":memory:") as server:
        server.send_line(b"")
        after = server.tool("append_message", {"contact_id": "c", "channel": "sms", "role": "user", "content": "x"})
        assert "result" in after and server.process.poll() is None


def test_a_stop_signal_the_process_ignores_stays_ignored() -> None:
    """`nohup chatdock serve`: SIGHUP ignored from the start stays ignored while serving."""
    server = subprocess.Popen(
        [*installed_command(), "serve", "--db", ":memory:"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )
    assert server.stdin is not None and server.stdout is not None
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    server.stdin.write(
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}).encode() + b"\n"
    )
    server.stdin.flush()
    assert json.loads(server.stdout.readline())["id"] == 1
    server.send_signal(signal.SIGHUP)
    server.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}).encode() + b"\n")
    server.stdin.flush()
    assert json.loads(server.stdout.readline())["id"] == 2  # still serving
    server.stdin.close()
    assert server.wait(30) == 0
    server.stdout.close()


def test_ids_sent_in_latin_1_over_stdio_are_refused_not_merged(tmp_path: Path) -> None:
    """The SDK's stdio reader replaces bytes that are not UTF-8 with U+FFFD: "José" and "Josë" sent in Latin-1
    both became the contact "Jos\ufffd", one person's history in the other's transcript (found by an agent
    developer's review). An id with U+FFFD is refused, in words that say why."""
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "latin-1", "version": "1"}}
    lines = [
        json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello}).encode(),
        json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode(),
    ]
    for number, name in ((1, "José"), (2, "Josë")):
        call = {"name": "append_message", "arguments": {"contact_id": name, "channel": "sms", "role": "user",
                                                         "content": f"I am {name}"}}  # fmt: skip
        lines.append(
            json.dumps(
                {"jsonrpc": "2.0", "id": number, "method": "tools/call", "params": call}, ensure_ascii=False
            ).encode("latin-1")
        )
    done = subprocess.run(
        [*chatdock_command(), "serve", "--db", str(tmp_path / "latin.db")],
        input=b"".join(line + b"\n" for line in lines),
        capture_output=True,
        timeout=60,
        check=False,
    )
    answers = {answer["id"]: answer for answer in map(json.loads, done.stdout.decode().splitlines())}
    for number in (1, 2):
        result = answers[number]["result"]
        assert result["isError"], result
        assert "must not contain U+FFFD, the replacement character" in result["content"][0]["text"]


@pytest.mark.process
def test_a_client_that_dies_with_answers_on_their_way_ends_the_server_quietly(tmp_path: Path) -> None:
    """A desktop app that crashes closes both pipes while the server still has answers to write: a 57-line
    traceback (a broken pipe in an exception group) and exit 1, though every write was whole (found by a
    desktop user's review). It exits 0, says nothing, and every acknowledged write is stored whole."""
    db = tmp_path / "dies.db"
    server = subprocess.Popen(
        [*chatdock_command(), "serve", "--db", str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert server.stdin is not None and server.stdout is not None and server.stderr is not None
    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "dies", "version": "0"}}
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ]
    message = {"contact_id": "dies", "channel": "sms", "role": "user", "context_limit": 200}
    lines += [
        {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "append_message",
         "arguments": {**message, "content": f"n{n}"}}} for n in range(2, 400)
    ]  # fmt: skip
    server.stdin.write("".join(json.dumps(line) + "\n" for line in lines).encode())
    server.stdin.flush()
    assert json.loads(server.stdout.readline())["id"] == 1
    server.stdout.readline()  # the first answers are being written
    server.stdout.close()
    server.stdin.close()
    assert server.wait(30) == 0
    assert server.stderr.read() == b""
    server.stderr.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert all(content.startswith("n") for (content,) in conn.execute("SELECT content FROM messages"))
