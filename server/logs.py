"""Logging for the `chatdock` command: one line per event on stderr, and no flood of the same line.

A line that repeats (asyncio's "socket.accept() out of system resource" when files run out, uvicorn's
"Invalid HTTP request received.", a refused key, a write that fails on a full disk) is written once, then
summed up at most every ten seconds.
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
        key = f"{record.name}:{record.msg}"
        now = time.monotonic()
        last, held = self._seen.get(key, (float("-inf"), 0))
        if now - last < self.every:
            self._seen[key] = (last, held + 1)
            return False
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held:,} more like it in the last {now - last:.0f} s)"
        if record.levelno > logging.DEBUG:  # one line: a trace is for who asked for DEBUG
            record.exc_info = None
            record.exc_text = None
        return True


def configure(level: str) -> None:
    """Log to stderr (stdout carries the protocol over stdio), with repeats summed up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(QuietRepeats())
    logging.basicConfig(level=level, handlers=[handler], force=True)
