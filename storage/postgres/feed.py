"""The change feed through LISTEN/NOTIFY: what each write sends (`ChangeLog`), and how a replica follows what
the others send (`follow_notifications`, on a connection of its own).

Each write NOTIFYs who it changed (`ChangeLog`, chatdock_append) in its transaction, so the
notification leaves at commit. This process announced its own changes already and skips them. A lost
connection is noticed within a second (or at once, when the socket closes), connected again with growing
pauses, and then every listener is told to read again (`EVERYTHING`): what was committed meanwhile was not
heard.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from ..changes import EVERYTHING, Change, Deliver
from ..sql import writes as shared
from ..sql.ops import Ops, value
from .driver import named
from .failures import FAILURES, translate
from .schema import CHANNEL, MAX_PAYLOAD

logger = logging.getLogger("chatdock.storage")
# the feed lost and back: each line a change of state, never held back as a repeat (server/ops/logs.py), or a
# second loss within seconds of the first would not be told, and the log would read lost, back, back
FEED = logging.getLogger("chatdock.storage.feed")

CHECK_EVERY = 1.0  # seconds between checks that the listening connection still answers
# the pauses between tries to listen again, at most a second: one connection a second to a server that is away
# costs it nothing, and up to 5 s had the events of a server back heard 1.6 to 3 s late, after every request was
# served again (an operator's review)
RETRY_PAUSES = (0.2, 0.5, 1.0)


def payload(change: Change, origin: str) -> str:
    """A change as the feed's NOTIFY payload: who, never what; without the aliases when they would not fit
    (`x`: a follower then tells every listener of that organization to read again)."""
    text = json.dumps({"o": change.org, "c": change.contact_id, "k": change.kind, "a": change.aliases, "p": origin})
    if len(text.encode()) > MAX_PAYLOAD:
        text = json.dumps({"o": change.org, "c": change.contact_id, "k": change.kind, "x": True, "p": origin})
    return text


class ChangeLog(shared.ChangeLog):
    """Each change is sent (NOTIFY) inside the write's transaction, so the other replicas hear it at commit."""

    __slots__ = ()

    def write(self, change: Change) -> Ops[None]:
        yield value("SELECT pg_notify(?, ?)", CHANNEL, payload(change, self.origin))


def _heard(origin: str, deliver: Deliver, payload: str) -> None:
    try:
        found: dict[str, Any] = json.loads(payload)
        if found.get("p") == origin:
            return
        if found.get("x"):  # the aliases did not fit in the payload: that organization's listeners read again
            deliver(Change(found["o"], found["c"], found["k"], aliases_unknown=True))
            return
        deliver(Change(found["o"], found["c"], found["k"], tuple(found.get("a") or ())))
    except (ValueError, KeyError, TypeError):
        logger.warning("ignored a notification on %s that chatdock did not write: %.200r", CHANNEL, payload)


async def _listen_until_lost(
    url: str,
    origin: str,
    timeout: float,
    deliver: Deliver,
    ready: Callable[[], None],
    reconnected: bool,
    connected: list[bool],
    following: Callable[[bool | None], None],
) -> None:
    conn = await asyncpg.connect(url, timeout=timeout, server_settings=named(url, "chatdock feed"))
    connected.append(True)
    lost = asyncio.Event()
    try:
        conn.add_termination_listener(lambda _: lost.set())
        await conn.add_listener(CHANNEL, lambda _c, _pid, _channel, payload: _heard(origin, deliver, payload))
        ready()  # LISTEN has returned: what commits from here on is heard
        following(True)
        if reconnected:
            FEED.warning("listening for other replicas' changes again; listeners are told to read again")
            deliver(EVERYTHING)
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), CHECK_EVERY)
            except TimeoutError:
                await conn.execute("SELECT 1", timeout=timeout)
    finally:
        conn.terminate()


async def follow_notifications(
    url: str,
    origin: str,
    timeout: float,
    deliver: Deliver,
    ready: Callable[[], None],
    following: Callable[[bool | None], None],
) -> None:
    """Until cancelled, deliver the changes other processes commit on the database `url` names; `ready()`
    once LISTEN is in place; `following` told whether the feed is in place (True), lost (False), or no longer
    followed (None, when cancelled)."""
    failures = 0
    reconnected = False
    try:
        while True:
            connected: list[bool] = []
            try:
                await _listen_until_lost(url, origin, timeout, deliver, ready, reconnected, connected, following)
                problem = "the connection closed"
            except FAILURES as exc:
                problem = translate(exc, url) or str(exc)
            following(False)
            if connected:
                failures = 0
            if failures == 0:
                FEED.warning("lost the change feed of other replicas (%s); connecting again", problem)
            reconnected = True
            await asyncio.sleep(RETRY_PAUSES[min(failures, len(RETRY_PAUSES) - 1)])
            failures += 1
    finally:
        following(None)
