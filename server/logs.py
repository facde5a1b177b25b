"""Logging for the `chatdock` command: one line per event on stderr, and no flood of the same line.

A line that repeats (asyncio's "socket.accept() out of system resource" when files run out, uvicorn's
"Invalid HTTP request received.", a refused key, a write that fails on a full disk) is written once, then
summed up at most every ten seconds. An unexpected error (ERROR and above, with an exception that is not a
cancellation) keeps its traceback whatever the level: it is how a bug gets found; repeats of the same error
at the same place are summed up like any other line. Expected failures below ERROR keep theirs at DEBUG only.
"""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class QuietRepeats(logging.Filter):
    """Lets a message through once, then at most once every `every` seconds with how often it was held back."""

    def __init__(self, every: float = 10.0) -> None:
        super().__init__()
        self.every = every
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}:{record.msg}:{_where(record)}"
        now = time.monotonic()
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
    """An error with an exception that is a bug's sign (not a task cancelled at shut-down, which uvicorn logs
    as an error too)."""
    return record.levelno >= logging.ERROR and record.exc_info is not None and isinstance(record.exc_info[1], Exception)


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


def configure(level: str) -> None:
    """Log to stderr (stdout carries the protocol over stdio), with repeats summed up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(QuietRepeats())
    logging.basicConfig(level=level, handlers=[handler], force=True)
