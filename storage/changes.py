"""What changed: the store's change feed, the seam that change events ride on.

Every write records which contacts it changed, in the same transaction as the write itself. The process
that committed it is told at once (`Backend.announce_to`); every other process sharing the database (another
`chatdock serve`, the HTTP server, `chatdock import`, another replica) learns of it by following the feed
(`Backend.follow`). A follower that may have missed changes (it fell too far behind, it lost its connection)
delivers `EVERYTHING` instead: its listeners should read again whatever they follow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
    # the aliases did not travel with the change (too many for the feed): every listener of `org` reads again
    aliases_unknown: bool = False


class ChangeLog:
    """The changes one write makes. A contact is recorded once per write: an "updated" after an earlier
    change of the same contact adds nothing, unless it names an alias the earlier ones did not (an import that
    stores a contact's chat, then links an alias to it, tells the alias's listeners too). Each backend's
    subclass writes a recorded change into its feed inside the write's transaction; `changes` is announced to
    this process once the transaction commits."""

    __slots__ = ("_seen", "changes", "origin")

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.changes: list[Change] = []
        self._seen: dict[tuple[str, str], set[str]] = {}  # each contact recorded: the aliases its changes named

    def reset(self) -> None:
        """Forget what was recorded: the transaction is run again (after a deadlock, a busy lock), and its
        retry records each change anew."""
        self.changes.clear()
        self._seen.clear()

    def first(self, org: str, contact_id: str, kind: ChangeKind, aliases: Iterable[str] = ()) -> bool:
        """Whether this change is to be recorded (see above); the contact counts as recorded from now on."""
        named = self._seen.get((org, contact_id))
        if kind == "updated" and named is not None and named.issuperset(aliases):
            return False
        self._seen.setdefault((org, contact_id), set()).update(aliases)
        return True


class _Everything:
    def __repr__(self) -> str:
        return "EVERYTHING"


EVERYTHING: Final = _Everything()

Deliver = Callable[[Change | _Everything], None]


class Announcer:
    """Who in this process hears the changes it commits (`Backend.announce_to`), for a backend to tell."""

    def __init__(self) -> None:
        self._deliver: dict[object, Deliver] = {}

    def announce_to(self, deliver: Deliver) -> Callable[[], None]:
        token = object()
        self._deliver[token] = deliver

        def stop() -> None:
            self._deliver.pop(token, None)

        return stop

    def tell(self, changes: Iterable[Change]) -> None:
        for change in changes:
            for deliver in list(self._deliver.values()):
                deliver(change)
