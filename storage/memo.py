"""What this process keeps of the messages it read, to find instead of doing again: the messages built from
their rows (rows.py), and what is worked out from a message once: its transcript entry and size bound
(transcript.py), its JSON in an answer (server/http/bodies.py). Every turn of a conversation reads the same
recent messages again, so finding the work done costs less than doing it again (a message built: 0.3 us
against 4; a transcript entry: 0.2 us against 1.3; a message's JSON: 0.3 us against 1).

`Kept` is how each keeps what it keeps: the entry asked about longest ago goes first (an OrderedDict: a plain
dict emptied from its front slows down as it does, 2.3 us an entry against 0.3), to keep at most `most`
entries and `most_weight` of what they hold (the newest always); any thread may look up and file (one lock,
held only to look up and to file). `let_go_of_all` empties every one of them.

`PerMessage` files work by the message object's identity, the object kept beside it (so the identity is not
another's while filed): messages are frozen, and a changed copy is another object."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .models import Message

T = TypeVar("T")

MOST = 8192  # entries each keeps
MOST_WEIGHT = 8 * 1024 * 1024  # and the weight of what each keeps (its work and the messages it keeps)

K = TypeVar("K")
V = TypeVar("V")


class Kept(Generic[K, V]):
    """Values by key, the least recently asked about let go first (see the module). `get` and `file` are
    called with `lock` held, so that a caller looks up and files many under one taking of it."""

    def __init__(self, most: int = MOST, most_weight: int = MOST_WEIGHT) -> None:
        self.most = most
        self.most_weight = most_weight
        self.lock = threading.Lock()
        self._filed: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._weight = 0
        _all.append(self)

    def get(self, key: K) -> V | None:
        filed = self._filed.get(key)
        if filed is None:
            return None
        self._filed.move_to_end(key)
        return filed[0]

    def peek(self, key: K) -> V | None:
        """`get` that leaves the order as it is."""
        filed = self._filed.get(key)
        return None if filed is None else filed[0]

    def file(self, key: K, value: V, weight: int) -> None:
        """File `value` under `key` (in place of what was there), then let go of the oldest past the bounds."""
        replaced = self._filed.pop(key, None)
        if replaced is not None:
            self._weight -= replaced[1]
        self._filed[key] = (value, weight)
        self._weight += weight
        while len(self._filed) > self.most or (self._weight > self.most_weight and len(self._filed) > 1):
            self._weight -= self._filed.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._filed)

    def clear(self) -> None:
        with self.lock:
            self._filed.clear()
            self._weight = 0


_all: list[Kept[Any, Any]] = []


def let_go_of_all() -> None:
    """Keep nothing of any message read (a contact was forgotten: its text leaves this process's memory now; a
    request reading at that moment may still file what it read, which goes as newer messages come)."""
    for kept in _all:
        kept.clear()


class PerMessage(Generic[T]):
    """`work(message)`, remembered for the last messages asked about; `weigh(message, work)` is about what
    remembering it keeps in memory (characters or bytes)."""

    def __init__(
        self,
        work: Callable[[Message], T],
        weigh: Callable[[Message, T], int],
        most: int = MOST,
        most_weight: int = MOST_WEIGHT,
    ) -> None:
        self.work = work
        self.weigh = weigh
        self._kept: Kept[int, tuple[Message, T]] = Kept(most, most_weight)

    def of(self, message: Message) -> T:
        key = id(message)
        with self._kept.lock:
            filed = self._kept.get(key)  # the very object: it is kept while filed, so no other has its identity
        if filed is not None:
            return filed[1]
        done = self.work(message)
        with self._kept.lock:
            self._kept.file(key, (message, done), self.weigh(message, done))
        return done

    def holds(self, message: Message) -> bool:
        with self._kept.lock:
            filed = self._kept.peek(id(message))
        return filed is not None and filed[0] is message
