"""Who may read now: the pool's connections for reads, shared so that no burst of reads stalls the rest.

Reads take at most `size` connections at once (the appends keep the other half of the pool, batches.py);
one organization takes at most half of those, so a burst of one organization's searches leaves the other
half to everyone else. A read that cannot start within the time limit gets a clear `Unavailable` (503 over
REST), never a wait without end. Key checks and health checks do not come through here: they must never
queue behind reads (see PostgresBackend.pool's reserve).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from ..errors import Unavailable


class Reads:
    def __init__(self, size: int, timeout: float, place: str, failed: Callable[[str], None]) -> None:
        self._failed = failed  # told "reads_busy" when a read gets no turn in time (telemetry.py)
        self.size = max(1, size)
        self.per_org = max(1, self.size // 2)
        self._timeout = timeout
        self._place = place
        self._all = asyncio.Semaphore(self.size)
        self._orgs: dict[str | None, tuple[asyncio.Semaphore, list[int]]] = {}  # semaphore, [users]

    @contextlib.asynccontextmanager
    async def slot(self, org: str | None) -> AsyncIterator[None]:
        """A turn to read for `org` (None: a read of no one organization, such as an export of all)."""
        gate, users = self._orgs.setdefault(org, (asyncio.Semaphore(self.per_org), [0]))
        users[0] += 1
        try:
            try:
                async with asyncio.timeout(self._timeout):
                    await gate.acquire()
                    try:
                        await self._all.acquire()
                    except BaseException:
                        gate.release()
                        raise
            except TimeoutError:
                self._failed("reads_busy")
                raise Unavailable(
                    f"{self._place}: every connection for reads stayed busy for {self._timeout:g} s (a burst of "
                    "reads, such as searches); try again, or raise --pool-size or --db-timeout"
                ) from None
            try:
                yield
            finally:
                self._all.release()
                gate.release()
        finally:
            users[0] -= 1
            if not users[0]:
                self._orgs.pop(org, None)
