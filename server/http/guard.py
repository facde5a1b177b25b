"""What keeps `chatdock serve --http` answering when clients are slow, many, or hostile.

- `GuardedProtocol` (uvicorn's HTTP/1.1 protocol on httptools, extended): a request must arrive whole in time. Its
  headers within `read_timeout` seconds of the connection (or of the previous response), and its body with
  no pause longer than `read_timeout`; otherwise the connection is closed. uvicorn alone times out only idle
  keep-alive connections, so a client that sends half a header holds its socket for ever.
- A response must be taken in time too: when the client stops reading (the socket's buffer full, the
  transport paused) and takes nothing more of it for `read_timeout` seconds, the connection is cut; a
  client that reads, however slowly, is not. Without it a client that asks for
  large answers (/docs' assets need no key) and never reads them holds its sockets for ever.
- Neither that deadline nor uvicorn's keep-alive one closes a connection whose socket holds bytes the loop has
  not read yet (a request sent while the process was paused past them): it is read first.
- A bound on what a request's line and headers may take, `MAX_HEAD_BYTES` (64 KiB: a large JWT is a few KiB),
  and on what follows them that is not body (a chunked body's sizes and trailers, which are header fields too):
  past it the answer is 431 and the connection closes. uvicorn's parser keeps whatever it is sent until the
  headers end, so without it a client with no key made the process hold gigabytes (found by a security review).
- A bound on open connections, below the process's file limit: when it is reached, a new connection
  closes the oldest one that has not yet sent a whole request (it has shown no key, so it costs little to
  drop), else the one whose client has left its answer untaken longest, or, when every connection is busy
  with a request, the new one itself.
- `raise_file_limit()`: the soft limit on open files goes up to the hard limit at start (a systemd service
  gets 1,024 by default).
- `FailedKeys`: failed key attempts per client address, answered 429 past a limit.
(Log lines that repeat, like asyncio's "socket.accept() out of system resource", are summed up by
`logs.QuietRepeats`.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chatdock.storage import Unavailable

logger = logging.getLogger("chatdock.http")

RESERVED_FILES = 32  # files the process keeps for the database, logs and its own needs
ACCEPT_BURST = 128  # connections the event loop may accept in one go, before any of them is looked at
UNREAD_GRACE = 0.5  # seconds a deadline waits for bytes in the socket that the loop has not read yet
SHUTDOWN_LINGER = 0.5  # seconds a connection waiting for a request stays open once the server shuts down
MAX_HEAD_BYTES = 64 * 1024  # a request's line and headers, at most (a chunk read more may be parsed first)
# beyond MAX_HEAD_BYTES, a chunked body's sizes may take up to 8 times the body (one-byte chunks take 5), to this
MAX_FRAMING_ROOM = 4 * 1024 * 1024
_TOO_LARGE_HEAD = json.dumps(
    {
        "error": "Request header fields too large",
        "message": f"the request line and headers are over {MAX_HEAD_BYTES:,} bytes; send less",
    }
).encode()


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 65_536)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # some sandboxes refuse; the lower limit still works
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


def connection_bound(requested: int | None, file_limit: int) -> int:
    """The most connections to keep open: what was asked, never so many that accepting would run out of files
    (room is left for two bursts of accepted connections not yet looked at)."""
    ceiling = max(8, file_limit - RESERVED_FILES - 2 * ACCEPT_BURST)
    return ceiling if requested is None else max(1, min(requested, ceiling))


def listening_socket(host: str, port: int, flags: tuple[str, str] = ("--host", "--port")) -> socket.socket:
    """A bound, listening TCP socket; Unavailable says in one line why not (port in use, no such address),
    naming the `flags` that set the address and the port."""
    host_flag, port_flag = flags
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror}; check {host_flag}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = f"; another program (or another chatdock) uses it: choose another {port_flag}" if exc.errno == 98 else ""
        raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from exc
    sock.set_inheritable(True)
    return sock


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol on httptools (llhttp, in C: parsing costs a fraction of h11's) with a deadline
    for reading each request and a bound on connections. A request is being read from when it is expected (the
    connection opened, or the previous response sent) until its last byte.

    Set `read_timeout` and `max_connections` on the class (see `guarded_protocol`)."""

    read_timeout: float = 10.0
    max_connections: int = 1_000
    _reading_since: dict[GuardedProtocol, float] = {}  # noqa: RUF012  (one table for all connections)
    _stalled_since: dict[GuardedProtocol, float] = {}  # noqa: RUF012  (the same, for answers left untaken)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._untaken: asyncio.TimerHandle | None = None  # the deadline of an answer the client does not read
        self._buffered = 0  # what was still to send when that deadline was set
        self._unanswered = 0  # requests that arrived whole and are not answered yet (one, unless pipelined)
        self._stopping = False  # the server is shutting down: the next answer closes the connection
        self._in_head = True  # a request's line and headers are being read (or awaited): not yet whole
        self._head_bytes = 0  # what the request's line and headers took so far (see data_received)
        self._ended = False  # a request ended in the bytes being parsed
        self._body = 0  # the request's body bytes so far
        self._framing = 0  # the request's bytes after its headers that are not body: chunk sizes, trailers

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._drop_one():
            self.transport.close()
            return
        self._expect_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        self._taken()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()  # the client reads no faster than the answer comes: it gets read_timeout
        self._stalled_since[self] = time.monotonic()
        if self._untaken is None:
            self._buffered = self.transport.get_write_buffer_size()
            self._untaken = self.loop.call_later(self.read_timeout, self._not_taken)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._taken()

    def _taken(self) -> None:
        self._stalled_since.pop(self, None)
        if self._untaken is not None:
            self._untaken.cancel()
            self._untaken = None

    def _not_taken(self) -> None:
        """`read_timeout` after the answer stalled: cut, unless the client took some of it meanwhile."""
        buffered = self.transport.get_write_buffer_size()
        if buffered < self._buffered and not self.transport.is_closing():
            self._buffered = buffered
            self._untaken = self.loop.call_later(self.read_timeout, self._not_taken)
            return
        self._cut()

    def _cut(self) -> None:
        """The answer was left untaken too long: the connection goes, with what is still buffered for it."""
        self._taken()
        self.transport.abort()

    def _close_unread(self) -> None:
        """The request was not sent in time (or will not be answered now): the connection closes."""
        self._stop_waiting()
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        in_body, body = not self._in_head, self._body
        self._ended = False
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # bytes that are all of one request's head count whole; bytes that also hold a body or a request
            # before it (pipelined) are not counted, and the head is counted from the next bytes on
            self._head_bytes = 0 if in_body or self._ended else self._head_bytes + len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()
        elif in_body and not self._ended and not self.transport.is_closing():
            # after the headers, what is not body (a chunked body's sizes, and its trailers: header fields the
            # parser keeps whole as they come) is bounded as the head is, with room for small chunks' sizes
            self._framing += len(data) - (self._body - body)
            if self._framing > MAX_HEAD_BYTES + min(8 * self._body, MAX_FRAMING_ROOM):
                self._refuse_head()
        if self.transport.is_closing():
            self._stop_waiting()
        elif not self._unanswered and self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # the headers are in and a body is on its way: no pause longer than read_timeout

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what comes next is the next request's
        self._ended = True
        if self.cycle is not None and self.cycle.response_complete:
            return  # answered before its body was all in (a 401, a 413): the wait for the next request goes on
        self._unanswered += 1
        self._stop_waiting()  # the request is in: the response may take as long as it takes

    def shutdown(self) -> None:
        """Called on SIGTERM: a connection with a request in hand finishes it and closes (or is cut when the
        graceful shutdown's time is up). One waiting for a request closes SHUTDOWN_LINGER later, unless a whole
        request came meanwhile, which is answered, and then it closes: a client sending on a kept-alive
        connection the moment it was closed under it got a reset or an empty answer and could not know whether
        its request was carried out (one in four of a busy client's connections at each restart)."""
        if not self._unanswered and not self.transport.is_closing():
            self._stopping = True
            self.loop.call_later(SHUTDOWN_LINGER, self._close_if_waiting)
            return
        super().shutdown()

    def _close_if_waiting(self) -> None:
        if self._unanswered or self.transport.is_closing():
            return  # a request came: answered, it closes the connection (keep_alive is off)
        if self._after_unread(self._close_if_waiting) is None:
            self._close_unread()

    def _refuse_head(self) -> None:
        """The request's line and headers passed MAX_HEAD_BYTES: 431, and the connection closes (what was read
        of it goes with the parser); while an answer is under way (an earlier request's, pipelined, or this
        one's, begun before its body was all in), it only closes: a 431 written now would land inside it."""
        head = [
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers),
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(_TOO_LARGE_HEAD)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        logger.info("refused a request whose headers passed %d bytes (431)", MAX_HEAD_BYTES)
        cycle = self.cycle
        if not self._unanswered and (cycle is None or cycle.response_complete or not cycle.response_started):
            self.transport.write(b"".join(head) + _TOO_LARGE_HEAD)  # else an answer is under way: only closed
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = self._body = self._framing = 0
        super().on_headers_complete()
        if self._stopping and self.cycle is not None:
            self.cycle.keep_alive = False  # shutting down: this answer is the connection's last

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        super().on_body(body)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._unanswered = max(0, self._unanswered - 1)
        if not self._unanswered and not self.transport.is_closing():
            self._expect_request()

    def _expect_request(self) -> None:
        self._reading_since[self] = time.monotonic()
        self._arm()

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.read_timeout, self._too_slow)

    def _stop_waiting(self) -> None:
        self._reading_since.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = self._after_unread(self._too_slow)
        if self._deadline is None and not self._unanswered and not self.transport.is_closing():
            self._close_unread()

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = self._after_unread(self.timeout_keep_alive_handler)
        if self.timeout_keep_alive_task is None:
            super().timeout_keep_alive_handler()

    def _after_unread(self, deadline: Callable[[], None]) -> asyncio.TimerHandle | None:
        """When bytes the loop has not read yet wait in the socket (`_unread_waiting`), `deadline` again a moment
        later, once they are read (its handle); else None: the deadline goes ahead now."""
        return self.loop.call_later(UNREAD_GRACE, deadline) if self._unread_waiting() else None

    def _unread_waiting(self) -> bool:
        """Whether bytes the loop has not read yet wait in the connection's socket. After the process was paused
        past a deadline (SIGSTOP, a stalled machine), the event loop runs its due timers before it next polls
        the sockets (Python's poll gives up once its own timeout is past), so a request that arrived during the
        pause would otherwise be cut by the deadline, reset with no answer: it is read first, a moment later."""
        sock = self.transport.get_extra_info("socket")
        if sock is None or self.transport.is_closing():
            return False
        poller = select.poll()  # not select(): it takes no descriptor above 1023, and the file limit is raised
        try:
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):  # closed meanwhile
            return False

    def _drop_one(self) -> bool:
        """Close the connection that has waited longest for its request, else the one whose client has left
        its answer untaken longest (not this one); False if there is neither."""
        for table, drop in (
            (self._reading_since, GuardedProtocol._close_unread),
            (self._stalled_since, GuardedProtocol._cut),
        ):
            waiting = [(since, protocol) for protocol, since in table.items() if protocol is not self]
            if waiting:
                drop(min(waiting, key=lambda item: item[0])[1])
                return True
        return False


def guarded_protocol(read_timeout: float, max_connections: int) -> type[GuardedProtocol]:
    """A `GuardedProtocol` class with these bounds, for uvicorn's `http=`."""
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {"read_timeout": read_timeout, "max_connections": max_connections, "_reading_since": {}, "_stalled_since": {}},
    )


class FailedKeys:
    """Failed key attempts per client address: past `limit` failures within `window` seconds, an address's
    failing requests get 429 with Retry-After until its window ends. A valid key is always checked and
    served, whatever its address did before; the table holds at most `max_addresses` addresses."""

    def __init__(self, limit: int = 20, window: float = 60.0, max_addresses: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._seen: dict[str, tuple[float, int]] = {}  # address: (window start, failures in it)

    def failed(self, address: str) -> float | None:
        """Count a failure; the seconds to wait when the address is over its limit, else None."""
        now = time.monotonic()
        start, count = self._seen.get(address, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        self._seen[address] = (start, count + 1)
        if len(self._seen) > self.max_addresses:
            self._seen.pop(next(iter(self._seen)))  # the address seen longest ago
        if count + 1 > self.limit:
            return max(1.0, start + self.window - now)
        return None
