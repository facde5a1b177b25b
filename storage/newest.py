"""Where an appended message goes among its contact's newest messages, and what this process last saw of those,
so that a voice turn's append (`context_limit`) finds its context without reading it again.

A contact's version names one state of its messages: every change of them (an append, a delete, a merge)
counts one, in its transaction (`contacts.version`), and a contact created again under the same contact_id
starts counting elsewhere (sql/writes.first_version). So the newest messages seen at version v - 1 are the
newest messages right before the write that made version v, wherever and whenever they were seen, and after
that write they are the written message followed by them, when it is the newest (`joined`). When anything
else came between (another caller's or another process's message, a delete, a merge), the versions differ;
when the message is not the newest (dated in the past, a twin of the same instant) or was not written now (found
already there, a retried key), the rule cannot place it: the store reads the context again after the write.

`Newest` keeps, for the last contacts it was told about, their newest messages for one agent (a context's
filter: `agent_id`) at one version, as many as the `limit` they were read with (they answer a limit up to it).
It is kept as memo.py keeps its work (`let_go_of_all`, when a contact is forgotten, empties it too).
"""

from __future__ import annotations

from dataclasses import dataclass

from .memo import MOST_WEIGHT, Kept
from .models import AppendedMessage, Message

MOST_CONTACTS = 1024  # contacts whose newest messages are kept (and at most memo.MOST_WEIGHT of their text)


def _weight(message: Message) -> int:
    """About the characters a kept message holds: its content, again in its parts, and its other fields (cheap
    to count for 50 messages: sizing.message_bound's 28 us would be a tenth of a context read)."""
    return 2 * len(message.content) + 256


def joined(
    newest_first: list[Message], version: int | None, stored: AppendedMessage, limit: int
) -> list[Message] | None:
    """The newest `limit` messages of the contact right after the write of `stored`, from its newest messages at
    `version` (newest first); None when that version is not the one right before the write's, or `stored` is
    not the newest (see the module)."""
    written_at = stored._contact_version
    if written_at is None or version is None or version != written_at - 1:
        return None
    if newest_first and stored.created_at <= newest_first[0].created_at:
        return None
    written = Message.model_construct(**{name: getattr(stored, name) for name in Message.model_fields})
    return [written, *newest_first][:limit]


@dataclass(frozen=True, slots=True)
class _Seen:
    version: int
    newest_first: list[Message]  # never changed in place: a newer state is another list
    limit: int
    weight: int  # what its messages hold (`_weight`)


class Newest:
    """The newest messages this process last saw of each contact, by organization, contact_id and agent."""

    def __init__(self, most: int = MOST_CONTACTS) -> None:
        self._kept: Kept[tuple[str, str, str | None], _Seen] = Kept(most, MOST_WEIGHT)

    def knows(self, org: str, contact_id: str, agent_id: str | None, limit: int) -> bool:
        """Whether a state of the contact is kept that could answer `limit` (the contact named by its own id)."""
        with self._kept.lock:
            seen = self._kept.peek((org, contact_id, agent_id))
        return seen is not None and seen.limit >= limit

    def after(self, org: str, stored: AppendedMessage, limit: int) -> list[Message] | None:
        """The contact's newest `limit` messages right after the write of `stored`, when the state kept is the
        one right before it (the new state is kept in its place); else None."""
        key = (org, stored.contact_id, stored.agent_id)
        with self._kept.lock:
            seen = self._kept.get(key)
        if seen is None or seen.limit < limit:
            return None
        newest_first = joined(seen.newest_first, seen.version, stored, seen.limit)
        if newest_first is None or stored._contact_version is None:
            return None
        weight = seen.weight + _weight(newest_first[0])
        if len(seen.newest_first) == len(newest_first):  # the oldest made room
            weight -= _weight(seen.newest_first[-1])
        with self._kept.lock:
            self._kept.file(key, _Seen(stored._contact_version, newest_first, seen.limit, weight), weight)
        return newest_first[:limit]

    def keep(
        self,
        org: str,
        contact_id: str,
        agent_id: str | None,
        version: int | None,
        newest_first: list[Message],
        limit: int,
    ) -> None:
        """Keep the contact's newest messages (at most `limit`, as a read of `limit` found them) at `version`."""
        if version is None or not newest_first:
            return  # a read that found no message found no version either
        key = (org, contact_id, agent_id)
        with self._kept.lock:
            seen = self._kept.get(key)
        if seen is not None and seen.version == version and seen.limit >= limit:
            return  # kept already, as many or more (a context read again with nothing changed)
        weight = sum(_weight(message) for message in newest_first)
        with self._kept.lock:
            self._kept.file(key, _Seen(version, newest_first, limit, weight), weight)
