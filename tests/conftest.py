from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage import SQLiteStore


@pytest.fixture(params=["memory", "file"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A fresh store for each test: once in memory, once on a database file."""
    path = ":memory:" if request.param == "memory" else str(tmp_path / "chatdock.db")
    async with SQLiteStore.open(path) as opened:
        yield opened
