"""`--log-format json`: every line chatdock writes on stderr is one JSON object with `time`, `level`, `logger`
and `message`, and `request_id`, `org` and `traceback` when there are; the plain lines stay as they were."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from chatdock.server.ops import logs
from tests.transports import chatdock_command, create_key, error, http_client

KEYS = {"time", "level", "logger", "message"}


def read_lines(text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines()]
    for line in lines:
        assert set(line) >= KEYS, line
        assert line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert datetime.fromisoformat(line["time"]).utcoffset() is not None  # UTC, to the millisecond
    return lines


@pytest.mark.process
async def test_a_served_process_writes_one_json_object_per_line_naming_the_request(tmp_path: Path) -> None:
    db = str(tmp_path / "chatdock.db")
    key = create_key(db, "acme", "logged")
    log = tmp_path / "serve.log"
    with log.open("wb") as written:
        process = subprocess.Popen(  # on any free port: the log says which
            [
                *chatdock_command(),
                "serve",
                "--http",
                "--db",
                db,
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--log-format",
                "json",
            ],
            # and spans to the console, which wrote each as indented JSON over many lines among the records
            env={**os.environ, "CHATDOCK_LOG_LEVEL": "INFO", "OTEL_TRACES_EXPORTER": "console"},
            stdout=subprocess.DEVNULL,
            stderr=written,
        )
        try:
            deadline = time.monotonic() + 30
            while not (serving := re.search(r"serving MCP at (http://127\.0\.0\.1:[1-9][0-9]*)/mcp", log.read_text())):
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            base = serving[1]
            while True:
                try:
                    with urllib.request.urlopen(base + "/healthz", timeout=1):
                        break
                except OSError:
                    assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.05)
            wrong = urllib.request.Request(
                base + "/chats", b"{}", {"Authorization": "Bearer cdk_wrong_key", "X-Request-Id": "req-42"}
            )
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(wrong, timeout=10)
            async with http_client(base, key) as client:  # a tool that fails is logged (INFO) by the MCP SDK
                await error(
                    client, "get_context", contact_id="+31612345678", chat_id="01a24468-f4d6-78df-954c-09b07e48c692"
                )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    objects = [json.loads(line) for line in log.read_text().splitlines()]  # every line one JSON object
    spans = [line for line in objects if "context" in line and "message" not in line]
    assert {"tools/call get_context", "POST /chats"} <= {span["name"] for span in spans}, spans
    lines = read_lines("\n".join(json.dumps(line) for line in objects if line not in spans))
    assert any(line["message"].startswith("chatdock serving MCP at ") for line in lines)
    [metrics] = [line["message"] for line in lines if line["message"].startswith("chatdock serving metrics at ")]
    assert re.fullmatch(r"chatdock serving metrics at http://127\.0\.0\.1:[1-9][0-9]*/metrics", metrics)
    [refused] = [line for line in lines if line["message"].startswith("refused a key from 127.0.0.1")]
    assert refused["level"] == "WARNING" and refused["logger"] == "chatdock.http"
    assert refused["request_id"] == "req-42" and "org" not in refused  # the key named no organization
    [failed] = [line for line in lines if line["message"].startswith("Tool 'get_context' failed")]
    assert failed["org"] == "acme" and failed["request_id"]  # the JSON-RPC id of the tool call


def test_a_traceback_is_a_field_of_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("chatdock.test-log-format")
    logger.propagate = False
    logger.addHandler(logs.handler("json"))
    token = logs.request_fields.set({"request_id": "r-1", "org": "acme"})
    try:
        try:
            raise RuntimeError("a bug,\nover two lines")
        except RuntimeError:
            logger.exception("something failed unexpectedly")
        logger.warning("no request here, %s", "after")
    finally:
        logs.request_fields.reset(token)
        logger.handlers.clear()
    first, second = read_lines(capsys.readouterr().err)
    assert first["message"] == "something failed unexpectedly" and first["level"] == "ERROR"
    assert (first["request_id"], first["org"]) == ("r-1", "acme")
    assert first["traceback"].startswith("Traceback (most recent call last):")
    assert first["traceback"].endswith("RuntimeError: a bug,\nover two lines")
    assert second["message"] == "no request here, after" and "traceback" not in second


def test_a_line_of_the_pool_every_request_shares_names_no_request(capsys: pytest.CaptureFixture[str]) -> None:
    """asyncpg's pool reconnects in a task whichever request needed a connection started, and its line carried
    that request's id and organization (found by an operator's review during a PostgreSQL outage)."""
    pool, outage = logging.getLogger("asyncpg.pool"), logging.getLogger("chatdock.storage.outage")
    ours = logging.getLogger("chatdock.test-log-format")
    for logger in (pool, outage, ours):
        logger.propagate = False
        logger.addHandler(logs.handler("json"))
    token = logs.request_fields.set({"request_id": "r-7", "org": "acme"})
    try:
        pool.warning("Failed to restore the pool connection floor; retrying")
        outage.warning("cannot reach PostgreSQL ... (and 67 more like it in the last 10 s)")  # everyone's
        ours.warning("the request's own line")
    finally:
        logs.request_fields.reset(token)
        for logger in (pool, outage, ours):
            logger.handlers.clear()
            logger.propagate = True
    *shared, own = read_lines(capsys.readouterr().err)
    assert [line["logger"] for line in shared] == ["asyncpg.pool", "chatdock.storage.outage"]
    assert all("request_id" not in line and "org" not in line for line in shared), shared
    assert (own["request_id"], own["org"]) == ("r-7", "acme")


def test_text_lines_stay_as_they_were(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("chatdock.test-log-text")
    logger.propagate = False
    logger.addHandler(logs.handler())
    try:
        logger.warning("plain %s", "words")
    finally:
        logger.handlers.clear()
    line = capsys.readouterr().err
    assert line.endswith(" WARNING chatdock.test-log-text: plain words\n")


def test_each_outage_says_it_is_over_however_soon_the_next_comes(capsys: pytest.CaptureFixture[str]) -> None:
    """The line that an outage is over went through the filter that holds back repeats: a second outage within
    ten seconds of the first ended in silence (found by a review of the session's diff). The failures are summed
    up as before; each end is said."""
    from chatdock.storage.outage import OUTAGES, OVER, Outage

    written = logs.handler("json")
    for logger in (OUTAGES, OVER):
        logger.addHandler(written)
        logger.propagate = False
    try:
        outage = Outage("writes to /tmp/x.db")
        for _ in range(2):
            for _ in range(3):
                outage.failed("the disk is full: /tmp/x.db cannot grow", "disk_full")
            outage.worked()
    finally:
        for logger in (OUTAGES, OVER):
            logger.removeHandler(written)
            logger.propagate = True
    lines = [line["message"] for line in read_lines(capsys.readouterr().err)]
    assert lines[0] == "the disk is full: /tmp/x.db cannot grow"  # once: its repeats are held back
    over = [line for line in lines if " work again, after " in line]
    assert len(over) == 2 and all(line.endswith("of failed requests (3 disk_full)") for line in over), lines
    assert len(lines) == 3, lines
