"""How a serving process's garbage collector is set, once it has started (`settle_collector`).

CPython collects its youngest generation every 700 net new container objects, and every tenth of those
collections the next one, and so on. A request allocates far more than 700 objects and frees nearly all of
them by reference counting (a search's hits, a context's messages, the JSON of an answer), so collections
ran in the middle of requests for nothing, and now and then a full collection walked every object of the
process: the imported SDK's models, the schemas, the store's message cache. On this 2-core machine such a
pause took 15-35 ms, which is what set the p99 of searches and of 100 concurrent callers.

Once serving, the objects built at start are frozen (`gc.freeze`: kept out of every later collection; they
live as long as the process anyway), and the youngest generation is collected every `YOUNG` net new
objects. Memory is still freed at once by reference counting; only objects in reference cycles wait for a
collection, which still comes as soon as that many accumulate. In a loop of 600 searches and 600 context
reads with a full message cache: no collection ran at all (552 young, 51 middle and 5 full ones before),
search p99 4.0-4.2 ms instead of 5.5-12.4 ms, and its worst 6 ms instead of 36-39 ms.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger("chatdock.server")

YOUNG = 10_000  # net new container objects between two collections of the youngest generation (CPython: 700)


def settle_collector() -> None:
    """Freeze what the process built so far and collect the youngest generation less often; for a process
    about to serve (`chatdock serve`, the bench's servers and its measuring process), never for a library's
    host."""
    gc.collect()  # what start-up left unreachable goes now, not into the frozen set
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, oldest)
    logger.debug(
        "garbage collector settled: %d objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold()
    )
