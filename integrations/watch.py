"""The watch on a call's contact, as both voice integrations (pipecat.py, livekit.py) keep it: entered again
while chatdock is unavailable, and a change told each time it goes live."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from chatdock.client import ChatdockClient
from chatdock.storage import Message

from .writes import describe, retryable

__all__ = ["LATE_SLACK", "follow_changes", "news"]

# How much earlier than the call's start a message first seen during the call may say it was sent and still be
# news: a webhook stores a message with the time its provider gives (queued SMS, a WhatsApp retry), minutes
# before it arrives. An older one was merged in with another identifier's history (link_contacts), not written.
LATE_SLACK = timedelta(hours=1)


def news(message: Message, started: datetime | None) -> bool:
    """Whether a message first seen during a call that `started` then is what the caller just wrote (see
    LATE_SLACK), not older history that a merge brought in."""
    return started is None or message.created_at >= started - LATE_SLACK


async def follow_changes(
    client: ChatdockClient,
    contact_id: str,
    changed: Callable[[], None],
    *,
    logger: logging.Logger,
    first_delay: float,
    max_delay: float,
    without: str,
    live: Callable[[bool], None] | None = None,
) -> None:
    """Calls `changed()` at each of the contact's change events, for as long as it runs, and each time the watch
    goes live (what changed before sent no event). The client comes back after a dropped stream by itself (and
    tells a change then); this comes back when chatdock could not be reached to begin with: the watch is entered
    again after `first_delay` seconds, the wait doubling up to `max_delay`, while chatdock is unavailable or
    busy (`retryable`, its listeners for the organization all taken among it: 429; a warning the first time,
    quietly after that). A refusal ends it, logged as an error that says what the call goes on `without`.
    `live(True)` is called each time the watch goes live, `live(False)` each time it is down."""
    delay, attempts = first_delay, 0
    while True:
        attempts += 1
        try:
            async with client.watch(contact_id) as changes:
                delay, attempts = first_delay, 0
                if live is not None:
                    live(True)
                changed()
                async for _ in changes:
                    changed()
        except Exception as error:
            if live is not None:
                live(False)
            if not retryable(error):
                logger.error(
                    "chatdock refused the change events of %s; the call goes on without %s: %s",
                    contact_id,
                    without,
                    describe(error),
                )
                return
            logger.log(
                logging.WARNING if attempts == 1 else logging.DEBUG,
                "could not watch the changes of %s (%s); will try again",
                contact_id,
                describe(error),
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
