"""Shared fixtures.

hypothesis is imported here, at collection, on purpose: otherwise its pytest
plugin imports it at the very end of the session, from deep in pytest's stack,
where CPython 3.11.7's parser fails with "AST constructor recursion depth
mismatch" (a CPython bug fixed in 3.11.8) and the run ends in a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import hypothesis
import hypothesis.internal.lambda_sources
import pytest
import schemathesis.specs.openapi.schemas  # noqa: F401  (loaded lazily by schemathesis otherwise: see above)

if sys.version_info[:3] == (3, 11, 7):
    # The same CPython bug meets hypothesis when it describes a lambda for a strategy's repr: it parses the
    # lambda's source with ast.parse, and schemathesis builds its strategies (and their lambdas) while a test
    # draws, deep in the stack. On this interpreter the description is left unknown; only reprs change.
    def _unknown_lambda(function: object, *args: object, **kwargs: object) -> str:
        return "lambda: <unknown>"

    hypothesis.internal.lambda_sources._lambda_description = _unknown_lambda

from chatdock.storage import Store, open_store

# Each backend the store's contract tests run on: a parameter names how to reach a fresh database.
BACKENDS = ["sqlite-memory", "sqlite-file"]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store for each test, once on each backend."""
    url = ":memory:" if request.param == "sqlite-memory" else str(tmp_path / "chatdock.db")
    async with open_store(url) as opened:
        yield opened
