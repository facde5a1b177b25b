"""A progress bar on stderr, redrawn at most ten times a second, so stdout stays clean for data."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`update(done)` as work advances, `finish()` once at the end; `total=None` when the end is unknown. Used as a
    context manager, it ends its line when an error or an interruption stops the work, so what is said about it
    starts a line of its own."""

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self._drawn = 0.0
        self._done = 0
        self._open = False  # a bar is drawn on the line, which no newline has ended yet

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None and self._open:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, end: str = "") -> None:
        if self.total:
            filled = min(self.width, int(self.width * self._done / self.total))
            bar = f"[{'#' * filled}{'.' * (self.width - filled)}] {self._done:>11,}/{self.total:,}"
        else:
            bar = f"{self._done:>11,}"
        self.stream.write(f"\r{self.label:<28} {bar}{end}")
        self.stream.flush()
        self._open = not end

    def update(self, done: int) -> None:
        self._done = done
        now = time.monotonic()
        if now - self._drawn >= 0.1:
            self._drawn = now
            self._draw()

    def finish(self, done: int | None = None) -> None:
        if done is not None:
            self._done = done
        self._draw("\n")
