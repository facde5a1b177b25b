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

`Newest` keeps, for the last contacts whose appends asked for their context, their newest messages at one
version for each agent they were asked for (a context's filter: `agent_id`), as many as the `limit` they were
read with (they answer a limit up to it); each write of the contact that this process makes moves them on. A
`get_context` keeps nothing: its cost would fall on every read, for one read saved at a call's first turn. It
is kept as memo.py keeps its work (`let_go_of_all`, when a contact is forgotten, empties it too).
"""

from __future__ import annotations

from dataclasses import dataclass

from .memo import MOST_WEIGHT, Kept
from .models import AppendedMessage, Message, as_message

MOST_CONTACTS = 1024  # contacts whose newest messages are kept (and at most memo.MOST_WEIGHT of their text)
MOST_AGENTS = 8  # agents whose own newest messages of a contact are kept


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
    return [as_message(stored), *newest_first][:limit]


@dataclass(frozen=True, slots=True)
class _Seen:
    version: int
    newest_first: list[Message]  # never changed in place: a newer state is another list
    limit: int
    weight: int  # what its messages hold (`_weight`)


class Newest:
    """The newest messages this process last saw of each contact, by organization and contact_id, for each agent
    they were asked for (None: every agent's)."""

    def __init__(self, most: int = MOST_CONTACTS) -> None:
        # each contact's states by agent: a dict never changed in place (a newer one is filed in its place)
        self._kept: Kept[tuple[str, str], dict[str | None, _Seen]] = Kept(most, MOST_WEIGHT)

    def knows(self, org: str, contact_id: str, agent_id: str | None, limit: int) -> bool:
        """Whether a state of the contact is kept that could answer `limit` (the contact named by its own id)."""
        with self._kept.lock:
            agents = self._kept.peek((org, contact_id))
        seen = None if agents is None else agents.get(agent_id)
        return seen is not None and seen.limit >= limit

    def after(self, org: str, stored: AppendedMessage, limit: int = 0) -> list[Message] | None:
        """The contact's newest `limit` messages for the message's agent right after the write of `stored`, when
        the state kept is the one right before it; else None. Every state of the contact kept at the version
        right before moves on with the write (a state of another agent, whose context the message is not in,
        only in its count), so an append that asks for no context (a bot's reply between two turns of the
        caller) calls it too, with no limit."""
        version = stored._contact_version
        if version is None:
            return None
        key = (org, stored.contact_id)
        answer = None
        with self._kept.lock:
            agents = self._kept.get(key)
            if agents is None:
                return None
            moved: dict[str | None, _Seen] = {}
            for agent, seen in agents.items():
                if seen.version >= version:
                    moved[agent] = seen  # read after this write (another caller's turn came first)
                elif agent is not None and agent != stored.agent_id:
                    if seen.version == version - 1:
                        moved[agent] = _Seen(version, seen.newest_first, seen.limit, seen.weight)
                else:
                    newest_first = joined(seen.newest_first, seen.version, stored, seen.limit)
                    if newest_first is None:
                        continue  # something came between, or the message is not the newest: let go
                    weight = seen.weight + _weight(newest_first[0])
                    if len(seen.newest_first) == len(newest_first):  # the oldest made room
                        weight -= _weight(seen.newest_first[-1])
                    moved[agent] = _Seen(version, newest_first, seen.limit, weight)
                    if agent == stored.agent_id and seen.limit >= limit:
                        answer = newest_first[:limit]
            self._kept.file(key, moved, sum(seen.weight for seen in moved.values()))
        return answer

    def keep(
        self,
        org: str,
        contact_id: str,
        agent_id: str | None,
        version: int | None,
        newest_first: list[Message],
        limit: int,
    ) -> None:
        """Keep the contact's newest messages for `agent_id` (at most `limit`, as a read of `limit` found them)
        at `version`."""
        if version is None or not newest_first:
            return  # a read that found no message found no version either
        key = (org, contact_id)
        with self._kept.lock:
            agents = self._kept.get(key) or {}
            seen = agents.get(agent_id)
            if seen is not None and seen.version == version and seen.limit >= limit:
                return  # kept already, as many or more (a context read again with nothing changed)
            weight = sum(_weight(message) for message in newest_first)
            kept = {agent: each for agent, each in agents.items() if agent != agent_id}
            kept[agent_id] = _Seen(version, newest_first, limit, weight)
            while len(kept) > MOST_AGENTS:  # the one told about longest ago goes
                del kept[next(iter(kept))]
            self._kept.file(key, kept, sum(each.weight for each in kept.values()))
