"""`chatdock bench` runs to the end in a small mode and prints every row (no timing is asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatdock.server.bench.compare import RIVALS, installed
from chatdock.server.bench.main import table
from chatdock.server.bench.rows import Row
from chatdock.server.cli import main as cli
from tests.transports import run_cli

pytestmark = pytest.mark.process  # each test here starts real processes

ROWS = [
    "raw sqlite3: insert, one commit each",
    "raw sqlite3: last-50 read p99",
    "raw sqlite3: an append's statements",
    "append, 1 caller",
    "append, 100 callers (normal)",
    "append, 100 callers (full)",
    "context last-50 p99",
    "context p99, alias of 5 ids",
    "search, one contact p99",
    "search, organization, rare word p99",
    "search, organization, common word p99",
    "search index share of the database",
    "append, 1 caller, search index",
    "cursor page p50",
    "delete p50",
    "16 readers + 1 writer: reads",
    "16 readers + 1 writer: writes",
    "MCP in-memory: get_context",
    "MCP stdio: bare tool call",
    "MCP stdio: get_context",
    "MCP HTTP: bare tool call",
    "MCP HTTP: get_context",
    "serve: python importing the MCP SDK",
    "serve: first answer (stdio)",
    "get_context (50 messages): formatted",
    "get_context (50 messages): text",
    "get_context (50 messages): whole result",
    "get_context (50 messages): structured, include_messages",
    "event at another process p50",
    "event at another process p99",
    "append, 0 listeners",
    "append, 500 idle listeners",
    "HTTP bare route, 32 clients",
    "REST append, 1 clients",
    "REST append, 32 clients",
    "REST get_context p99",
    "MCP-over-HTTP append, 32 clients",
    "REST append beside MCP append (32)",
    "voice turn: bare append (client, HTTP) p50",
    "voice turn: append with context_limit=50 p50",
    "voice turn: append with context_limit=50 p99",
    "voice turn: append, then get_context (two calls) p50",
    "write-ahead log, largest during 2,000 appends",
    "write-ahead log, idle",
    "another org's REST append p99, alone",
    "... beside 256 busy listeners",
    *(
        f"{measure}, {mode}"
        for measure in ("REST append, 32 clients", "REST get_context p50", "REST get_context p99")
        for mode in ("unobserved", "with metrics", "with metrics, 1 in 10 traced", "with metrics, every request traced")
    ),
]


SQLITE_ONLY = [
    "append, 100 callers (full)",
    "raw asyncpg: an append's statements",
    "write-ahead log, largest during 2,000 appends",
    "write-ahead log, idle",
]


COMPARED = [  # --compare (on SQLite): chatdock and each rival store, for each measure
    f"{store}: {measure}"
    for measure in ("append, 1 caller", "last 50 of 500 messages p50", "last 50 of 10 messages p50")
    for store in ("chatdock", "LangChain SQLChatMessageHistory", "LlamaIndex SQLiteChatStore")
]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_bench_small_mode_prints_every_row_as_json_and_as_a_table(engine: str, request: pytest.FixtureRequest) -> None:
    on = ["--compare"] if engine == "sqlite" else ["--db", request.getfixturevalue("postgres_server")]
    # every row, small: about 50 s on a quiet 2-core machine, more beside other tests
    result = run_cli("bench", "--messages", "5000", "--contacts", "500", "--rounds", "1", "--json", *on, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "building data" in result.stderr  # progress goes to stderr, so stdout stays pure JSON
    report = json.loads(result.stdout)
    server = "PostgreSQL 1[0-9][.0-9]*, shared_buffers [0-9]+[kMG]B" if engine == "postgres" else "SQLite 3[.0-9]+"
    assert re.fullmatch(rf"[0-9]+ cores, [0-9]+ GiB, Python 3[.0-9]+, {server}", report["machine"]), report["machine"]
    names = [row["name"] for row in report["rows"]]
    expected = ROWS if engine == "sqlite" else [row.replace("sqlite3", "asyncpg") for row in ROWS]
    for row in expected:
        assert (row in names) != (engine == "postgres" and row in SQLITE_ONLY), row
    for row in COMPARED:
        assert (row in names) == (engine == "sqlite"), row
    for row in report["rows"]:
        assert row["value"] > 0 or (row["goal"] == "0" and row["value"] == 0), row  # a size that must be nothing
        if row["floor"] is not None:
            assert row["ratio"] == row["value"] / row["floor"]
    shown = table([Row(**row) for row in report["rows"]], report["messages"], report["contacts"])
    for row in names:
        assert row in shown
    assert ("-- compared on the same data" in shown) == (engine == "sqlite")


def test_bench_refuses_too_small_a_run_and_a_db_that_is_not_a_server() -> None:
    bad = run_cli("bench", "--messages", "10")
    assert bad.returncode == 2 and "at least 1000" in bad.stderr
    bad = run_cli("bench", "--db", "my.db")
    assert bad.returncode == 2 and "bench --db takes a postgresql:// server URL" in bad.stderr
    bad = run_cli("bench", "--compare", "--db", "postgresql://127.0.0.1:1/x")
    assert bad.returncode == 2 and "run it without --db" in bad.stderr
    bad = run_cli("bench", "--db", "postgresql://postgres@127.0.0.1:1/x", "--messages", "1000", "--rounds", "1")
    assert bad.returncode == 2 and bad.stdout == "", bad.stderr  # one line, not a traceback (found by a review)
    assert bad.stderr.startswith("chatdock: cannot make the bench's database: cannot reach PostgreSQL at 127.0.0.1:1")
    assert len(bad.stderr.splitlines()) == 1, bad.stderr


def test_bench_compare_leaves_out_a_store_that_is_not_installed_and_refuses_when_none_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert installed() == ["LangChain SQLChatMessageHistory", "LlamaIndex SQLiteChatStore"]  # the test extra's
    absent = "chatdock-no-such-distribution"
    llamaindex, langchain = "LlamaIndex SQLiteChatStore", "LangChain SQLChatMessageHistory"
    monkeypatch.setitem(RIVALS, llamaindex, (absent, *RIVALS[llamaindex][1:]))
    assert installed() == [langchain]
    monkeypatch.setitem(RIVALS, langchain, (absent, *RIVALS[langchain][1:]))
    assert installed() == []
    assert cli.main(["bench", "--compare", "--messages", "1000"]) == 2
    assert (
        "bench --compare needs the stores it compares with: pip install 'chatdock[compare]'" in capsys.readouterr().err
    )


def test_the_servers_the_bench_starts_die_with_it() -> None:
    """A bench killed by a timeout (SIGKILL: no cleanup runs) leaves none of its servers behind."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys\n"
            "from chatdock.server.bench.rows import die_with_parent\n"
            "sleeper = [sys.executable, '-c', 'import time; time.sleep(60)']\n"
            "child = subprocess.Popen(sleeper, preexec_fn=die_with_parent)\n"
            "print(child.pid, flush=True)\n"
            "child.wait()\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait(10)
    parent.stdout.close()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and "Z" not in Path(f"/proc/{child}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the bench's server outlived the bench"
        time.sleep(0.05)
