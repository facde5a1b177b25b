"""Lint, format and strict typing run from the same command as every other test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # each test here starts real processes

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_the_package_then_on_tests_and_examples() -> None:
    """One after the other, in one test: the second run finds the libraries both import (the MCP SDK, pydantic,
    FastAPI, ...) in the first one's cache, where two runs at once on a fresh clone each read them all (47 s
    of CPU against 32)."""
    packages = ["chatdock.server", "chatdock.storage", "chatdock.client", "chatdock.integrations"]
    result = run("mypy", "--strict", *(arg for name in packages for arg in ("-p", name)))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run("mypy", "--strict", "tests", "examples")
    assert result.returncode == 0, result.stdout + result.stderr
