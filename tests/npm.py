"""Node.js packages the tests run (a real authorization server, the MCP TypeScript SDK's client), installed from
the npm registry by the folder's own package-lock.json the first time a test needs them; one worker installs, the
others wait for it."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path


def node() -> str:
    found = shutil.which("node")
    assert found, "these tests run Node.js programs: install node and npm"
    return found


def installed(folder: Path, package: str) -> Path:
    """`folder`'s node_modules, with `package` among them (`npm ci` if it is not)."""
    modules = folder / "node_modules"
    with open(folder / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (modules / package).is_dir():
            npm = shutil.which("npm")
            assert npm, f"the tests of {folder.name} run Node.js programs: install node and npm"
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--silent"],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, f"npm ci in {folder} failed:\n{done.stdout}{done.stderr}"
    return modules
