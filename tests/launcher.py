"""`chatdock` as the tests start it: a stand-in for the installed command, run as `python -I -S launcher.py ARGS`.

It asks the test worker's fork server (tests/forkserver.py) for a chatdock process: it sends its arguments,
environment, working folder, file limit and its open descriptors (standard input, output and error, and any
other, such as a shell's `<(...)`), and the fork server forks a process that has chatdock's modules imported
already, which then runs `chatdock ARGS` on them. This stand-in passes on the signals a test sends it (SIGTERM,
SIGINT, ...) and ends as chatdock ended (its exit code, or the same signal); when it is killed, the fork server
kills chatdock at once. A process start then costs a fork, not the ~0.7 s of CPU the MCP SDK's imports take
(tests/forkserver.py says why that matters). Without a fork server (no CHATDOCK_TEST_FORKSERVER in the
environment, or none answering) it becomes the installed command itself (exec).

Standard library only, and imported without site-packages (-S): its own start costs ~10 ms.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import sys

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCONT,
)


def installed() -> str:
    return os.path.join(os.path.dirname(sys.executable), "chatdock")


def become_installed() -> None:  # never returns
    os.execv(installed(), [installed(), *sys.argv[1:]])


def open_descriptors(but: int) -> list[int]:
    """Every descriptor this process has open (a command's `<(...)` is one beside 0, 1 and 2), but `but`; /dev/null
    in place of a closed 0, 1 or 2 (as a fresh process would see nothing there)."""
    listed = [int(name) for name in os.listdir("/proc/self/fd")]  # its own descriptor is closed once listed
    descriptors = []
    for fd in sorted(set(listed) | {0, 1, 2}):
        try:
            os.fstat(fd)
        except OSError:
            if fd <= 2:
                os.dup2(os.open(os.devnull, os.O_RDWR), fd)
            else:
                continue
        if fd != but:
            descriptors.append(fd)
    return descriptors


def main() -> None:
    address = os.environ.get("CHATDOCK_TEST_FORKSERVER")
    if not address:
        return become_installed()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.connect(address)
    except OSError:
        return become_installed()
    descriptors = open_descriptors(but=server.fileno())
    request = {
        "argv": [installed(), *sys.argv[1:]],
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "descriptors": descriptors,
    }
    socket.send_fds(server, [json.dumps(request).encode() + b"\n"], descriptors)
    answers = server.makefile("rb")
    pid = int(json.loads(answers.readline())["pid"])

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    line = answers.readline()  # interrupted reads are resumed after a forwarded signal (PEP 475)
    if not line:  # the fork server went away: chatdock's end is unknown
        os._exit(70)
    status = int(json.loads(line)["status"])
    if os.WIFSIGNALED(status):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
