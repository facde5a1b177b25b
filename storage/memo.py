"""What is worked out from a message once and remembered: its transcript entry and size bound (transcript.py),
its JSON in an answer (server/http/bodies.py). Every turn of a conversation reads the same recent messages
again, and the messages read are shared objects (rows.messages), so finding the work done costs less than
doing it again (a transcript entry: 0.2 us against 1.3; a message's JSON: 0.3 us against 1).

Work is filed by the message object's identity, the object kept beside it (so the identity is not another's
while filed): messages are frozen, and a changed copy is another object. The message asked about longest ago
goes first (an OrderedDict: a plain dict emptied from its front slows down as it does, 2.3 us a message
against 0.3), to keep at most `most` messages and `most_weight` of what `weigh` says each holds. Any thread
may ask (one lock, held only to look up and to file)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .models import Message

T = TypeVar("T")

MOST = 8192  # messages remembered by each memo
MOST_WEIGHT = 8 * 1024 * 1024  # and the weight of what each memo keeps (its work and the messages it keeps)


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
        self.most = most
        self.most_weight = most_weight
        self._filed: OrderedDict[int, tuple[Message, T, int]] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()
        _memos.append(self)

    def of(self, message: Message) -> T:
        key = id(message)
        with self._lock:
            filed = self._filed.get(key)
            if filed is not None:  # the very object: it is kept while filed, so no other has its identity
                self._filed.move_to_end(key)
                return filed[1]
        done = self.work(message)
        weight = self.weigh(message, done)
        with self._lock:
            if key not in self._filed:  # (another thread may have filed it meanwhile)
                self._filed[key] = (message, done, weight)
                self._weight += weight
                while len(self._filed) > self.most or (self._weight > self.most_weight and len(self._filed) > 1):
                    self._weight -= self._filed.popitem(last=False)[1][2]
        return done

    def holds(self, message: Message) -> bool:
        with self._lock:
            filed = self._filed.get(id(message))
            return filed is not None and filed[0] is message

    def clear(self) -> None:
        with self._lock:
            self._filed.clear()
            self._weight = 0


_memos: list[PerMessage[Any]] = []


def let_go_of_all() -> None:
    """Keep nothing worked out from any message (a contact was forgotten: its text leaves this process's memory
    now; a request reading at that moment may still file what it read, which goes as newer messages come)."""
    for memo in _memos:
        memo.clear()
