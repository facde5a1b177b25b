"""Who took data away: one INFO line on the `chatdock.audit` logger for each write that erases or moves stored
history (a message deleted, a contact forgotten, two contacts merged by a link, an alias unlinked), naming the
organization and who acted: a key by its prefix, a token's subject (the surfaces set `acting`: server/http's
key check, server/mcp/org.py), a stdio client, or the command that ran.

A line never names a contact or an identifier: a forgotten contact's phone number would outlive its erasure
in the logs. A message by its id (a UUID chatdock made), a contact's erasure and a merge by their counts.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

logger = logging.getLogger("chatdock.audit")

acting: ContextVar[str] = ContextVar("chatdock_acting", default="this process")


def took(org: str, what: str) -> None:
    """Say that `what` was done in `org`, by whoever is `acting`."""
    logger.info("%s in organization %s by %s", what, org, acting.get())


def refused(org: str, who: str, what: str) -> None:
    """Say that `who`, a key that may only read, was refused the write `what` (a tool's or a route's name) in
    `org`: staff who tried to delete or forget are on record too (found by a security review)."""
    logger.info("refused %s in organization %s to %s, a read-only key", what, org, who)
