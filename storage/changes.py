"""What changed: the store's change feed, the seam that change events ride on.

Every write records which contacts it changed, in the same transaction as the write itself. The process
that committed it is told at once (`Backend.announce_to`); every other process sharing the database (another
`chatdock serve`, the HTTP server, `chatdock import`, another replica) learns of it by following the feed
(`Backend.follow`). A follower that may have missed changes (it fell too far behind, it lost its connection)
delivers `EVERYTHING` instead: its listeners should read again whatever they follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

ChangeKind = Literal["updated", "appeared", "forgotten"]


@dataclass(frozen=True, slots=True)
class Change:
    """A contact's messages or chats changed (`updated`), or the contact is new (`appeared`) or gone
    (`forgotten`): never the content, only who."""

    org: str
    contact_id: str
    kind: ChangeKind = "updated"
    aliases: tuple[str, ...] = ()  # the contact's other identifiers: their URIs read the same contact


class _Everything:
    def __repr__(self) -> str:
        return "EVERYTHING"


EVERYTHING: Final = _Everything()

Deliver = Callable[[Change | _Everything], None]
