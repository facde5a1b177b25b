"""Batches of independent calls: group commit for a backend whose statements take a list.

`submit` hands one item over and waits for its outcome. While fewer than `in_flight` batches run, whatever
is waiting goes out at once (a lone caller never waits for a batch to fill); the items that arrive while
the limit is reached wait, and leave together as the next batch: the busier it gets, the more each round
trip and commit carries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from ..errors import ChatdockError

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")

MAX_BATCH = 256
logger = logging.getLogger("chatdock.storage")


class Batches(Generic[Item, Outcome]):
    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Outcome]]], in_flight: int) -> None:
        self._run = run
        self._limit = in_flight
        self._waiting: list[tuple[Item, asyncio.Future[Outcome]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._waiting and len(self._running) < self._limit:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            task = asyncio.ensure_future(self._settle(batch))
            self._running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start()

    async def _settle(self, batch: list[tuple[Item, asyncio.Future[Outcome]]]) -> None:
        try:
            outcomes = await self._run([item for item, _ in batch])
        except ChatdockError as exc:  # the database failed the batch: each caller hears why
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException as exc:
            if len(batch) > 1 and isinstance(exc, Exception):  # a bug met by one item: the others still go
                logger.exception("a batch of %d failed; trying each alone", len(batch))
                for single in batch:
                    await self._settle([single])
                return
            for _, future in batch:
                if not future.done():
                    if isinstance(exc, Exception):
                        future.set_exception(exc)
                    else:
                        future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)
