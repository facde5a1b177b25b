"""What the log says of the database failing everyone's requests (a full disk, a file made read-only,
PostgreSQL away): a line per failure, summed up every ten seconds by the server's log (server/ops/logs.py), of no
one request or organization; and once the database does its work again, one line that the outage is over, how
long it lasted and how many requests it failed, by cause. Without that line the log's last word on an outage
was the failure, and the failures of its last ten seconds were in no line."""

from __future__ import annotations

import logging
import time
from collections import Counter

OUTAGES = logging.getLogger("chatdock.storage.outage")
# the line that an outage is over: a fact of its own, never held back as a repeat (server/ops/logs.py), so that
# a second outage soon after the first still says when it ended
OVER = logging.getLogger("chatdock.storage.outage.over")


class Outage:
    """One backend's outage, if there is one: `failed` for each request the database failed, `worked` for each
    that it did (a no-op but for the first after failures)."""

    def __init__(self, what: str) -> None:
        self.what = what  # what works again: "writes to FILE", "requests to PostgreSQL at HOST"
        self._since: float | None = None
        self._causes: Counter[str] = Counter()

    def failed(self, text: str, cause: str) -> None:
        OUTAGES.warning(text)  # its text the key of its repeats (logs.py), each kind of failure its own
        if self._since is None:
            self._since = time.monotonic()
        self._causes[cause] += 1

    def worked(self) -> None:
        if self._since is None:
            return
        lasted = time.monotonic() - self._since
        causes = ", ".join(f"{count:,} {cause}" for cause, count in self._causes.most_common())
        self._since, self._causes = None, Counter()
        OVER.warning("%s work again, after %.1f s of failed requests (%s)", self.what, lasted, causes)
