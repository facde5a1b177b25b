"""Telling listeners, one organization at a time: a numerous or busy audience delays only itself.

Each event becomes a send on every listen stream and subscribed session of its URI, and sends are what cost
the event loop (each is serialized and written on its own connection). Done at once, one organization with
hundreds of listeners and a steady flow of writes would take the loop from everyone: another
organization's appends went from 1 ms to 55 ms. So the writer only marks what changed, and a courier per
organization does the sends, within a budget:

- Marks coalesce: an event says "read this URI again", so a URI already waiting is not marked twice, and
  what waits for an organization is bounded by the URIs its listeners follow, however fast it writes.
- The courier spends a token per send, from a bucket of `RATE` tokens a second holding at most `BURST`:
  an organization's ordinary events go out at once; one whose audience asks for more sends than that waits
  for its own tokens, and only its own events are late. The writer and other organizations never wait.
- Between every `SLICE` sends the courier lets the other tasks run, so a request of another organization
  never waits behind a whole audience's sends.

Each URI told is reported to `told` (the server's metrics): how many listeners heard it, and how late the last
of them did, counted from when the URI was first marked (from when this process knew of the change).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger("chatdock.events")

RATE = 250.0  # sends a second per organization, sustained
BURST = 64.0  # sends an organization may make at once, before it waits for its own tokens
SLICE = 16  # sends between two turns of the other tasks, so that none waits behind a whole audience

Sends = Callable[[str | None], list[Callable[[], None]]]  # one send per listener of a URI (None: the list)
Told = Callable[[str, int, float], None]  # (organization, listeners told, seconds since the change was marked)


def _untold(org: str, sends: int, lag: float) -> None:
    pass


class Courier:
    """What waits to be told for one organization, and the task that tells it."""

    def __init__(self, org: str, sends: Sends, told: Told = _untold) -> None:
        self.org = org
        self._sends = sends
        self._told = told
        self._waiting: dict[str | None, float] = {}  # URIs in order (None: the resource list): when first marked
        self._tokens = BURST
        self._filled = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def mark(self, uri: str | None) -> None:
        self._waiting.setdefault(uri, time.monotonic())
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"chatdock-events-{self.org}")

    async def _run(self) -> None:
        try:
            while self._waiting:
                uri = next(iter(self._waiting))
                marked = self._waiting.pop(uri)  # from here on, a new change of this URI is told again
                try:
                    await self._tell(uri, marked)
                except Exception:  # fan-out boundary: one URI's failure must not strand the others' marks
                    logger.exception("telling the listeners of %s failed; continuing", uri)
                await asyncio.sleep(0)
        finally:
            self._task = None

    async def _tell(self, uri: str | None, marked: float) -> None:
        number = 0
        for number, send in enumerate(self._sends(uri), 1):
            await self._token()
            try:
                send()
            except Exception:  # fan-out boundary: a broken listener must not stop the others
                logger.exception("telling a listener of %s failed; continuing", uri)
            if number % SLICE == 0:
                await asyncio.sleep(0)
        if number:
            self._told(self.org, number, time.monotonic() - marked)

    async def _token(self) -> None:
        while True:
            now = time.monotonic()
            self._tokens = min(BURST, self._tokens + (now - self._filled) * RATE)
            self._filled = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / RATE)


class Couriers:
    """A courier per organization that has had something to tell (kept, with its tokens: an organization
    that pauses between writes does not get a fresh budget for each)."""

    def __init__(self, sends: Callable[[str, str | None], list[Callable[[], None]]], told: Told = _untold) -> None:
        self._sends = sends
        self._told = told
        self._couriers: dict[str, Courier] = {}

    def mark(self, org: str, uri: str | None) -> None:
        """The listeners of `uri` in `org` (None: of the resource list) are to be told, soon."""
        courier = self._couriers.get(org)
        if courier is None:
            courier = self._couriers[org] = Courier(org, lambda uri: self._sends(org, uri), self._told)
        courier.mark(uri)
