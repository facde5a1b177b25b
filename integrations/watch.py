"""The watch on a call's contact, as both voice integrations (pipecat.py, livekit.py) keep it: entered again
while chatdock is unavailable, and a change told each time it goes live."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from chatdock.client import ChatdockClient

from .writes import describe, retryable

__all__ = ["follow_changes"]


async def follow_changes(
    client: ChatdockClient,
    contact_id: str,
    changed: Callable[[], None],
    *,
    logger: logging.Logger,
    first_delay: float,
    max_delay: float,
    without: str,
) -> None:
    """Calls `changed()` at each of the contact's change events, for as long as it runs, and each time the watch
    goes live (what changed before sent no event). The client comes back after a dropped stream by itself (and
    tells a change then); this comes back when chatdock could not be reached to begin with: the watch is entered
    again after `first_delay` seconds, the wait doubling up to `max_delay`, while chatdock is unavailable
    (`retryable`; a warning the first time, quietly after that). A refusal ends it, logged as an error that says
    what the call goes on `without`."""
    delay, attempts = first_delay, 0
    while True:
        attempts += 1
        try:
            async with client.watch(contact_id) as changes:
                delay, attempts = first_delay, 0
                changed()
                async for _ in changes:
                    changed()
        except Exception as error:
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
                "chatdock unavailable, will watch the changes of %s again: %s",
                contact_id,
                describe(error),
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
