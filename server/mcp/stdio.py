"""stdio serving that answers every request line, also one the SDK cannot read.

The SDK's stdio transport drops a line it cannot parse as a JSON-RPC message
(logged at debug level only), so the client waits for an answer that never
comes. A lone UTF-16 surrogate escape (`"\\ud83d"`, half an emoji cut off by
a JavaScript client) is enough. Here such a line gets the JSON-RPC error it
deserves, addressed to the request's id when the line still shows one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any, cast

import anyio
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp_types import (
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
)
from pydantic import ValidationError

from chatdock.server.ops.memory import settle_collector

logger = logging.getLogger("chatdock.server")

DRAIN_SECONDS = 30  # how long requests still running at the end of stdin may take to finish
# a stop asked of the process: served as the end of stdin (Windows has no SIGHUP)
STOP_SIGNALS = tuple(signal.Signals[name] for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
LINES_AHEAD = 64  # lines read from stdin before the server takes them
READ_BYTES = 1 << 16


# `{"jsonrpc": "2.0", "id": 7, ...` or `{"jsonrpc": "2.0", "method": "...", "id": "a", ...`: an id
# that comes before anything nested, so it cannot be an "id" inside the params.
_LEADING_ID = re.compile(
    r'^\s*\{(?:\s*"(?:jsonrpc|method)"\s*:\s*"[^"\\]*"\s*,)*\s*"id"\s*:\s*(-?\d{1,18}|"[^"\\]{0,200}")'
)


def _request_id(errors: list[Any]) -> str | int | None:
    """The id of the request in an unreadable line, when it shows one: in the message as parsed (a line that is
    JSON but not a valid message: pydantic's error about a field of the message itself holds the message), or,
    for a line that is not JSON, when Python's more lenient parser can find it."""
    parsed: object = None
    for error in errors:
        given = error.get("input")
        if isinstance(given, dict) and len(error["loc"]) == 2:  # (the kind of message tried, its field)
            parsed = given
            break
        if error["type"] == "json_invalid" and isinstance(given, str):
            try:
                parsed = json.loads(given)
            except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's parser goes
                leading = _LEADING_ID.match(given)
                return None if leading is None else json.loads(leading.group(1))
            break
    found = parsed.get("id") if isinstance(parsed, dict) else None
    return found if isinstance(found, str | int) and not isinstance(found, bool) else None


def unreadable(exc: Exception) -> JSONRPCError:
    """The JSON-RPC error for a line that is not valid JSON (-32700) or not a valid message (-32600)."""
    errors = exc.errors(include_url=False) if isinstance(exc, ValidationError) else []
    if any(error["type"] == "json_invalid" for error in errors):
        detail = errors[0]["msg"]
        hint = (
            "; a \\u escape must not be half of a surrogate pair: send whole characters"
            if "surrogate" in detail or "hex escape" in detail
            else ""
        )
        error = ErrorData(code=PARSE_ERROR, message=f"Parse error: {detail}{hint}")
    else:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:3]) or str(exc)
        error = ErrorData(code=INVALID_REQUEST, message=f"Invalid request: {detail[:500]}")
    return JSONRPCError(jsonrpc="2.0", id=_request_id(errors), error=error)


class _Answers:
    """The write side, noting which requests have been answered, so EOF can wait for the rest."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pending: set[str | int] = set()
        self.settled = anyio.Event()

    async def send(self, item: SessionMessage) -> None:
        await self.inner.send(item)
        if isinstance(item.message, JSONRPCResponse | JSONRPCError):
            self.forget(item.message.id)

    def forget(self, request_id: object) -> None:
        if isinstance(request_id, str | int):
            self.pending.discard(request_id)
        if not self.pending:
            self.settled.set()

    def expect(self, request_id: str | int) -> None:
        self.pending.add(request_id)
        self.settled = anyio.Event()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> _Answers:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


async def _hand_over(item: SessionMessage | Exception, answers: _Answers, server: Any) -> None:
    """A line read: its answer, when the SDK could not read it; else to the server, noted as waited for."""
    if isinstance(item, Exception):
        await answers.send(SessionMessage(_unreadable_answer(item)))
        return
    message = item.message
    if isinstance(message, JSONRPCRequest) and message.method != "subscriptions/listen":
        # every request is waited for (a write's answer must not be lost, nor a read's), but a
        # subscriptions/listen stream, which would never end on its own
        answers.expect(message.id)
    elif isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
        answers.forget((message.params or {}).get("requestId"))  # a cancelled request gets no answer
    await server.send(item)


def _unreadable_answer(item: Exception) -> JSONRPCError:
    try:
        answer = unreadable(item)
    except Exception:  # the reader must outlive any line
        logger.exception("could not describe an unreadable line")
        answer = JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=PARSE_ERROR, message="Parse error"))
    logger.info("answered an unreadable line with %s", answer.error.message)
    return answer


async def serve_stdio(lowlevel: Any) -> None:
    """Run the SDK's low-level server on stdio, answering the lines its transport cannot read.

    When stdin ends, requests still running (but listen streams) are answered before the server stops (the
    SDK alone would cancel them and answer "Connection closed", even for a write that was already stored,
    inviting a retry that stores it twice).
    """
    settle_collector()
    lines = StdinLines(sys.stdin.fileno())
    with lines.ended_by(STOP_SIGNALS):
        await _serve(lowlevel, cast("anyio.AsyncFile[str]", lines))
    # a container started without --http (stdin /dev/null): an SRE's review found it restarting in silence
    if not lines.served and not lines.stopped:
        logger.warning(
            "stdin ended before any message: chatdock serve speaks MCP over stdio, to the client that started it; "
            "to serve over HTTP, add --http"
        )


async def _serve(lowlevel: Any, stdin: anyio.AsyncFile[str]) -> None:
    async with stdio_server(stdin=stdin) as (read_stream, write_stream):
        answers = _Answers(write_stream)
        relay_in, relay_out = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def relay() -> None:
            async with relay_in:
                async for item in read_stream:
                    await _hand_over(item, answers, relay_in)
                if answers.pending:
                    with anyio.move_on_after(DRAIN_SECONDS):
                        await answers.settled.wait()

        async with anyio.create_task_group() as group:
            group.start_soon(relay)
            await lowlevel.run(relay_out, answers, lowlevel.create_initialization_options())
            group.cancel_scope.cancel()


class StdinLines:
    """stdin's lines for the SDK's stdio transport, read by a thread of their own; a stop signal (SIGTERM,
    SIGHUP) ends them as the end of stdin does: no more requests are read, those under way are answered, the
    store is closed. The signals killed the process at once (an MCP client stopping its server sends SIGTERM two
    seconds after closing stdin): requests under way were stored unanswered, and a `--db :memory:` database was
    left, with what it held, in /dev/shm. The thread is a daemon: one waiting for a line that will never be read
    does not hold the process at its end (the SDK's reader, a worker thread, would)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: the end (of stdin, or a stop)
        self._room = threading.BoundedSemaphore(LINES_AHEAD)  # lines read ahead of the server, at most
        self._reader: threading.Thread | None = None
        self.stopped = False  # by a stop signal
        self.served = 0  # lines handed to the server

    def __aiter__(self) -> StdinLines:
        return self

    async def __anext__(self) -> str:
        if self._reader is None:
            loop = asyncio.get_running_loop()
            self._reader = threading.Thread(target=self._read, args=(loop,), name="chatdock-stdin", daemon=True)
            self._reader.start()
        line = await self._lines.get()
        if self.stopped:  # nothing more is read: the reader may wait for room for ever (a daemon, it may)
            if line is not None:
                logger.debug("a line read before the stop is left unserved, as the lines not read yet")
            raise StopAsyncIteration
        self._room.release()
        if line is None:
            raise StopAsyncIteration
        self.served += 1
        return line.decode("utf-8", errors="replace")  # a blank line too: the SDK answers it -32700

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        """Lines off the descriptor itself, with `os.read`: a thread blocked in a buffered reader holds its lock,
        and the interpreter's end, which takes it to close stdin, aborted the process. A line's pieces are kept
        apart until its end comes (a long line is not copied again at each read)."""
        pieces: list[bytes] = []
        while True:
            try:
                chunk = os.read(self._fd, READ_BYTES)
            except OSError:  # closed under it: as the end
                chunk = b""
            lines: list[bytes | None] = []
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                lines.append(b"".join([*pieces, chunk[start : end + 1]]))
                pieces, start = [], end + 1
            if chunk:
                pieces.append(chunk[start:])
            else:
                lines += [b"".join(pieces)] if any(pieces) else []  # a last line without its end
                lines.append(None)
            for line in lines:
                self._room.acquire()  # waits while LINES_AHEAD lines are unread (a client faster than the server)
                try:
                    loop.call_soon_threadsafe(self._lines.put_nowait, line)
                except RuntimeError:  # the loop is closed: serving has ended
                    return
            if not chunk:
                return

    def stop(self, name: str) -> None:
        logger.info("%s: no more requests are read; those under way are answered, then chatdock stops", name)
        self.stopped = True
        self._lines.put_nowait(None)  # wakes a wait for the next line

    @contextlib.contextmanager
    def ended_by(self, signals: Sequence[signal.Signals]) -> Iterator[None]:
        """The stop signals handled while serving: those the process does not ignore (`nohup` ignores SIGHUP),
        and where the event loop can (Windows' cannot: there they stop the process as before); their handlers
        before, given back after."""
        loop = asyncio.get_running_loop()
        handled: list[tuple[signal.Signals, Any]] = []
        for signum in signals:
            before = signal.getsignal(signum)
            if before == signal.SIG_IGN:
                continue
            try:
                loop.add_signal_handler(signum, self.stop, signum.name)
            except (NotImplementedError, RuntimeError):
                continue
            handled.append((signum, before))
        try:
            yield
        finally:
            for signum, before in handled:
                loop.remove_signal_handler(signum)
                if before is not None:  # (None: a handler not set from Python, which remove left as the default)
                    signal.signal(signum, before)
