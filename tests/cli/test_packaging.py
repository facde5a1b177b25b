"""chatdock installs as one top-level package, `chatdock`, beside projects with their own `server` or `storage`,
and the commands that do not serve start without the MCP SDK."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.process


def run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def build_wheel(source: Path, out: Path) -> Path:
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", out, source)
    [wheel] = out.glob("*.whl")
    return wheel


def squatter(folder: Path) -> Path:
    """A distribution of someone else's that ships top-level `server` and `storage` packages."""
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=77"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "squatter"\nversion = "1.0"\n[tool.setuptools]\npackages = ["server", "storage"]\n'
    )
    for package in ("server", "storage"):
        (folder / package).mkdir()
        (folder / package / "__init__.py").write_text(f"OWNER = 'squatter {package}'\n")
    return build_wheel(folder, folder / "dist")


def test_the_wheel_installs_chatdock_beside_other_server_and_storage_packages(tmp_path: Path) -> None:
    source = tmp_path / "chatdock"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("server", "storage", "client", "integrations"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    wheel = build_wheel(source, tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist() if ".dist-info/" not in name}
    assert tops == {"chatdock"}
    packages = {name.rsplit("/", 1)[0] for name in archive.namelist() if name.endswith("/__init__.py")}
    assert {"chatdock/client", "chatdock/integrations"} <= packages
    shipped = {"chatdock/server/http/static/ui/inspector.js", "chatdock/server/http/static/docs/swagger-ui-bundle.js"}
    assert shipped <= set(archive.namelist())  # /ui and /docs work from the wheel, offline

    other = tmp_path / "squatter"
    other.mkdir()
    squatter_wheel = squatter(other)

    # A fresh environment that borrows this one's dependencies (mcp, pydantic, ...) but not chatdock itself.
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = (sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps")
    run(*pip, squatter_wheel)
    run(*pip, wheel)

    elsewhere = tmp_path / "elsewhere"  # not a folder holding server/, storage/ or chatdock/, found first
    elsewhere.mkdir()
    assert "serve" in run(env / "bin" / "chatdock", "--help", cwd=elsewhere).stdout
    probe = run(
        python,
        "-c",
        "import server, storage, chatdock.server.cli.main, chatdock.storage, chatdock.client; "
        "print(server.OWNER, storage.OWNER, chatdock.storage.__file__, sep='|')",
        cwd=elsewhere,
    ).stdout.strip()
    server_owner, storage_owner, location = probe.split("|")
    assert (server_owner, storage_owner) == ("squatter server", "squatter storage")
    assert location.startswith(str(site))
    run(*pip[:5], "uninstall", "--yes", "squatter")
    assert "serve" in run(env / "bin" / "chatdock", "--help", cwd=elsewhere).stdout


def test_commands_that_do_not_serve_do_not_import_the_mcp_sdk() -> None:
    probe = run(
        sys.executable,
        "-c",
        "import sys\n"
        "from chatdock.server.cli import main as cli\nfrom chatdock.server.history import transfer\n"
        "cli.parser().parse_args(['keys', 'list'])\n"
        "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith(('mcp.', 'uvicorn', 'starlette'))))",
    )
    assert probe.stdout.strip() == "[]"


def test_the_registry_entry_is_valid_and_names_this_package() -> None:
    """server.json against the MCP Registry's schema (2025-12-11, kept in tests/data from the registry's
    repository), its name in the README's `mcp-name:` line (which the registry checks for a PyPI package, once
    there is one), its version the package's, no PyPI package named, and the remote's Authorization header
    optional (OAuth needs none)."""
    import json
    import re
    import tomllib

    import jsonschema

    entry = json.loads((ROOT / "server.json").read_text())
    jsonschema.validate(entry, json.loads((ROOT / "tests" / "data" / "mcp-registry-server.schema.json").read_text()))
    [named] = re.findall(r"<!-- mcp-name: (\S+) -->", (ROOT / "README.md").read_text())
    assert entry["name"] == named
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert entry["version"] == version
    # chatdock is not on PyPI (it installs from a checkout): a `pypi` package entry would name one nobody can install
    assert all(package["registryType"] != "pypi" for package in entry.get("packages", []))
    [remote] = entry["remotes"]
    [header] = remote["headers"]
    assert (remote["type"], header["name"], header["isRequired"], header["isSecret"]) == (
        "streamable-http",
        "Authorization",
        False,
        True,
    )


def test_python_dash_m_exits_as_the_command_does(tmp_path: Path) -> None:
    """`python -m chatdock.server.cli` (what a script without the command on its PATH runs) fails as `chatdock`
    does: exit status 2 and one line (it exited 0 on any failure, found by a review)."""
    missing = str(tmp_path / "missing.db")
    done = subprocess.run(
        [sys.executable, "-m", "chatdock.server.cli", "check", "--db", missing],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (2, f"chatdock: cannot check {missing}: there is no such file\n")
