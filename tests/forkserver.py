"""A fork server per test worker, so that a test's chatdock process costs a fork rather than a Python start.

The suite starts chatdock as a real process a few hundred times (`serve --http`, `serve` over stdio, the CLI's
commands); each fresh start spends ~0.7 s of CPU importing the MCP SDK, FastAPI and pydantic's models before
chatdock runs a line, which on a 2-core machine was about a third of the whole suite's CPU. This process imports
chatdock's modules once, then forks a child for each start that tests/launcher.py asks for: the child takes the
launcher's descriptors (standard input, output and error, and any other it has open), its environment, working
folder and file limit, and runs `chatdock.server.cli.main.main()` as the installed command would, in a process of
its own, over real pipes and real sockets. The fork server tells the launcher the child's pid and, later, how it
ended; it kills the child at once if the launcher is killed, so a SIGKILL of the process a test holds is a SIGKILL
of chatdock.

What a forked child does not share with a fresh start: the imports (done before the fork, with the worker's
environment; chatdock reads its variables when a command runs, not at import) and the hash seed. Tests that
show that the installed command starts from scratch (tests/http/test_http.py's server, tests/mcp/test_stdio.py's
round trip) pass `fresh=True` or use `transports.installed_command()`.

Run as `python -P forkserver.py SOCKET` (-P: tests/ is not put first on sys.path, where its mcp/ would hide the
SDK): it prints `ready` once it listens and ends when its standard input does.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import importlib
import json
import os
import pkgutil
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

ADDRESS_VARIABLE = "CHATDOCK_TEST_FORKSERVER"
LAUNCHER = Path(__file__).with_name("launcher.py")

# What `chatdock serve` imports while it serves, beyond chatdock's own modules (which are all imported).
THIRD_PARTY = (
    "anyio._backends._asyncio",
    "uvicorn.lifespan.on",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.loops.auto",
    "rich.logging",
    "pydantic.v1",
    "wsgiref.simple_server",
    "http.server",
    "concurrent.futures.thread",
)


@dataclass
class Start:
    """What a launcher asked for."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    nofile: tuple[int, int]
    numbers: list[int]  # the launcher's descriptor numbers
    descriptors: list[int]  # the same files, as this process received them


def preload() -> None:
    import chatdock.server
    import chatdock.storage

    for package in (chatdock.server, chatdock.storage):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    for name in THIRD_PARTY:
        importlib.import_module(name)


def read_start(connection: socket.socket) -> Start:
    data, descriptors, _flags, _address = socket.recv_fds(connection, 1 << 16, 250)
    while not data.endswith(b"\n"):
        more = connection.recv(1 << 16)
        if not more:
            raise ConnectionError("the launcher went away mid-request")
        data += more
    request = json.loads(data)
    if len(descriptors) != len(request["descriptors"]):
        raise ConnectionError(f"the launcher sent {len(descriptors)} of its {len(request['descriptors'])} descriptors")
    nofile = (int(request["nofile"][0]), int(request["nofile"][1]))
    return Start(request["argv"], request["env"], request["cwd"], nofile, request["descriptors"], descriptors)


def serve(address: str) -> Start:
    """Fork a chatdock for each launcher until standard input ends; in a child, return what it must run."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, ("accept", None))
    selector.register(sys.stdin, selectors.EVENT_READ, ("parent", None))
    launchers: dict[int, socket.socket] = {}  # child pid -> its launcher's connection
    children: dict[int, int] = {}  # child pid -> its pidfd
    gc.collect()
    gc.freeze()  # the imported modules' objects are never collected: a child's collections need not touch them
    print("ready", flush=True)
    while True:
        for key, _events in selector.select():
            kind, pid = key.data
            if kind == "parent":
                for child in children:
                    os.kill(child, signal.SIGKILL)
                os._exit(0)
            if kind == "accept":
                connection, _ = listener.accept()
                start = read_start(connection)
                assert threading.active_count() == 1, "a fork server must not fork with threads running"
                child = os.fork()
                if child == 0:
                    selector.close()
                    listener.close()
                    connection.close()
                    for other in launchers.values():
                        other.close()
                    for pidfd in children.values():
                        os.close(pidfd)
                    return start
                for fd in start.descriptors:
                    os.close(fd)
                connection.sendall(json.dumps({"pid": child}).encode() + b"\n")
                launchers[child] = connection
                children[child] = os.pidfd_open(child)
                selector.register(children[child], selectors.EVENT_READ, ("child", child))
                selector.register(connection, selectors.EVENT_READ, ("launcher", child))
            elif kind == "child":
                _, status = os.waitpid(pid, 0)
                selector.unregister(children[pid])
                os.close(children.pop(pid))
                ended = launchers.pop(pid, None)
                if ended is not None:
                    selector.unregister(ended)
                    with contextlib.suppress(OSError):  # a launcher killed meanwhile
                        ended.sendall(json.dumps({"status": status}).encode() + b"\n")
                    ended.close()
            elif kind == "launcher":  # a launcher says nothing after its request: this is its end
                gone = launchers.pop(pid)
                selector.unregister(gone)
                gone.close()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def become(start: Start) -> None:
    """In a forked child: take the launcher's descriptors, environment and folder, as a fresh process has them."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1024) for fd in start.descriptors]  # out of the numbers' way
    for fd in start.descriptors:
        os.close(fd)
    for target, fd in zip(start.numbers, high, strict=True):
        os.dup2(fd, target)  # inheritable, as a command's descriptors are
        os.close(fd)
    os.chdir(start.cwd)
    os.environ.clear()
    os.environ.update(start.env)
    resource.setrlimit(resource.RLIMIT_NOFILE, start.nofile)
    # sys.stdin, sys.stdout and sys.stderr stay the objects Python made at this process's start, with empty
    # buffers (nothing read through them; `ready` flushed): on the descriptors just replaced, they are what a
    # fresh start would have made (not a terminal: block-buffered; stderr line-buffered).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = start.argv


_server: subprocess.Popen[bytes] | None = None
_lock = threading.Lock()


def launcher_command() -> list[str] | None:
    """The command that starts chatdock through this worker's fork server (started on first use), or None where
    none can run (not Linux)."""
    global _server
    if not hasattr(os, "pidfd_open"):
        return None
    with _lock:
        if _server is None:
            address = os.path.join(tempfile.mkdtemp(prefix="chatdock-fork-"), "socket")
            _server = subprocess.Popen(
                [sys.executable, "-P", __file__, address], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert _server.stdout is not None
            if _server.stdout.readline() != b"ready\n":
                raise RuntimeError("the tests' fork server did not start")
            os.environ[ADDRESS_VARIABLE] = address
            atexit.register(_stop, os.path.dirname(address))
    return [sys.executable, "-I", "-S", str(LAUNCHER)]


def _stop(folder: str) -> None:
    """End the fork server (it kills any chatdock still running) and remove its socket's folder."""
    shutil.rmtree(folder, ignore_errors=True)
    if _server is not None:
        for stream in (_server.stdin, _server.stdout):
            if stream is not None:
                stream.close()
        _server.wait(10)


if __name__ == "__main__":
    preload()
    started = serve(sys.argv[1])
    become(started)
    from chatdock.server.cli.main import main

    sys.exit(main())
