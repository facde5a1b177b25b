"""Shared fixtures.

hypothesis is imported here, at collection, on purpose: otherwise its pytest
plugin imports it at the very end of the session, from deep in pytest's stack,
where CPython 3.11.7's parser fails with "AST constructor recursion depth
mismatch" (a CPython bug fixed in 3.11.8) and the run ends in a traceback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import hypothesis  # noqa: F401
import pytest

from storage import SQLiteStore


@pytest.fixture(params=["memory", "file"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A fresh store for each test: once in memory, once on a database file."""
    path = ":memory:" if request.param == "memory" else str(tmp_path / "chatdock.db")
    async with SQLiteStore.open(path) as opened:
        yield opened
