"""Logging for the `chatdock` command: one line per event on stderr, and no flood of the same line.

Each line is plain text (`FORMAT`), or with `--log-format json` one JSON object (`JsonLines`): `time`, `level`,
`logger` and `message` always; `request_id` and `org` when the line was written for a request (the request
layers put them in `request_fields`, observe.py); `trace_id` and `span_id` within a traced request;
`traceback` when there is one.

A line that repeats (asyncio's "socket.accept() out of system resource" when files run out, uvicorn's
"Invalid HTTP request received.", a refused key (by address and key: `DISTINCT_REPEATS`), a write that fails
on a full disk) is written once, then summed up at most every ten seconds; but a database migration's lines,
each a fact of its own (an id renamed, a look-alike to decide on, the search index built so far), are all
written. An unexpected error (ERROR and
above, with an exception that is not a cancellation) keeps its traceback whatever the level: it is how a bug
gets found; repeats of the same error at the same place are summed up like any other line. Expected failures
below ERROR keep theirs at DEBUG only.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from chatdock.storage import audit

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
LogFormat = Literal["text", "json"]

# What a log line says of the request it was written for (`request_id`, `org`): set by the request layers for
# the request's task (observe.py), completed by the key check with the organization (http/app.py).
request_fields: ContextVar[dict[str, str] | None] = ContextVar("chatdock_log_request", default=None)
# loggers of what every request shares (asyncpg's pool, reconnecting in a task a request happened to start; the
# database failing, summed up over every organization's requests; OpenTelemetry's exporter dropping spans): their
# lines carry no request's fields nor its trace, which would name a request, and an organization, they are not about
SHARED_LOGGERS = ("asyncpg", "chatdock.storage.outage", "chatdock.storage.feed", "opentelemetry")
# loggers whose every line is a fact of its own, written once: never held back as a repeat (storage/sql/migrations.py,
# the change feed's losses and returns: storage/postgres/feed.py)
WHOLE_LOGGERS = (
    "chatdock.storage.migrations",
    "chatdock.storage.feed",
    "chatdock.storage.outage.over",
    audit.logger.name,  # who took data away: each line a record of its own
)


# A line may name what its repeats are told apart by (`extra={"repeat_of": ...}`: a refused key's address and
# prefix, so that a client still sending a revoked key shows beside a flood of guesses); at most this many of a
# line's kinds are told apart in one period, past which its other kinds are summed up together
DISTINCT_REPEATS = 20


class QuietRepeats(logging.Filter):
    """Lets a message through once, then at most once every `every` seconds with how often it was held back."""

    def __init__(self, every: float = 10.0) -> None:
        super().__init__()
        self.every = every
        self._seen: dict[str, tuple[float, int]] = {}
        self._kinds: dict[str, tuple[float, set[str]]] = {}  # a line's kinds told apart in its period
        self._pruned = float("-inf")  # when the lines not said for a period were last let go

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in WHOLE_LOGGERS:
            return True
        key = f"{record.name}:{record.msg}:{_where(record)}"
        now = time.monotonic()
        kind = getattr(record, "repeat_of", None)
        if isinstance(kind, str):
            line = key
            since, kinds = self._kinds.get(line, (now, set()))
            if now - since >= self.every:
                since, kinds = now, set()
            if kind in kinds or len(kinds) < DISTINCT_REPEATS:
                kinds.add(kind)
                key = f"{line}:{kind}"
            self._kinds[line] = (since, kinds)
            if len(self._seen) > 50 * DISTINCT_REPEATS and now - self._pruned >= self.every:
                # kinds come and go (addresses): those not said for a period go, with what they held back
                self._pruned = now
                self._seen = {seen: at for seen, at in self._seen.items() if now - at[0] < self.every}
        last, held = self._seen.get(key, (float("-inf"), 0))
        if now - last < self.every:
            self._seen[key] = (last, held + 1)
            return False
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held:,} more like it in the last {now - last:.0f} s)"
        if record.levelno > logging.DEBUG and not _unexpected(record):  # its trace is for who asked for DEBUG
            record.exc_info = None
            record.exc_text = None
        return True


def _unexpected(record: logging.LogRecord) -> bool:
    """An error with an exception that is a bug's sign: not a task cancelled at shut-down (which uvicorn logs
    as an error too), nor the machine running out of files or memory (asyncio's "socket.accept() out of system
    resource" under a connection flood: the line says it, and a traceback per burst says nothing more)."""
    if record.levelno < logging.ERROR or record.exc_info is None:
        return False
    error = record.exc_info[1]
    if isinstance(error, OSError) and error.errno in OUT_OF_RESOURCES:
        return False
    return isinstance(error, Exception)


def _where(record: logging.LogRecord) -> str:
    """The exception's type and the line it was raised at, so that two different errors logged with the same
    words are not summed up as one."""
    if not record.exc_info or record.exc_info[1] is None:
        return ""
    error = record.exc_info[1]
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    place = f"{trace.tb_frame.f_code.co_filename}:{trace.tb_lineno}" if trace is not None else ""
    return f"{type(error).__name__}@{place}"


class JsonLines(logging.Formatter):
    """One JSON object per line (see the module's docstring); a message's own line breaks are escaped."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if not record.name.startswith(SHARED_LOGGERS):
            line.update(request_fields.get() or {})
            line.update(_trace_ids())
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line["traceback"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def _trace_ids() -> dict[str, str]:
    """The ids of the trace and span current here, within a traced request."""
    from opentelemetry import trace  # the API only (imported by the MCP SDK as it is), on the first line logged

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


class Reworded(logging.Filter):
    """uvicorn's ERROR at a shut-down that cut requests off (they were answered: server/http/shutdown.py) is not
    a bug, which is what an ERROR stands for here: a WARNING in chatdock's words (an operator's review)."""

    CUT = "Cancel %s running task(s), timeout graceful shutdown exceeded"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.error" and record.msg == self.CUT:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = (
                "shutting down: %s request(s) still running after the grace period were cut off (one whose answer "
                "had not begun was answered 503: a write's outcome unknown, stored once if sent again with the same "
                "Idempotency-Key; a stream was ended)"
            )
            return logging.getLogger().isEnabledFor(logging.WARNING)
        return True


def handler(log_format: LogFormat = "text") -> logging.Handler:
    """A handler writing to stderr in `log_format`, with repeats summed up."""
    written = logging.StreamHandler(sys.stderr)
    written.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(FORMAT))
    written.addFilter(Reworded())
    written.addFilter(QuietRepeats())
    return written


def configure(level: str, log_format: LogFormat = "text") -> None:
    """Log to stderr (stdout carries the protocol over stdio), with repeats summed up; the audit log's INFO lines
    (storage/audit.py) at any level up to WARNING, the default: a deletion is on record unless logs are cut to
    errors."""
    logging.basicConfig(level=level, handlers=[handler(log_format)], force=True)
    chosen = logging.getLevelName(level.upper())
    audit.logger.setLevel(logging.INFO if isinstance(chosen, int) and chosen <= logging.WARNING else logging.NOTSET)
