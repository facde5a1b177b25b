"""What is worked out from a message once and remembered: its transcript entry and size bound (transcript.py),
its JSON in an answer (server/http/bodies.py). Every turn of a conversation reads the same recent messages
again, and the messages read are shared objects (rows.messages), so finding the work done costs less than
doing it again (a transcript entry: 0.2 us against 1.3; a message's JSON: 0.3 us against 1).

Work is filed by the message object's identity, the object kept beside it (so the identity is not another's
while filed): messages are frozen, and a changed copy is another object. The message asked about longest ago
goes first (an OrderedDict: a plain dict emptied from its front slows down as it does, 2.3 us a message
against 0.3)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .models import Message

T = TypeVar("T")

MOST = 8192  # messages remembered by each memo


class PerMessage(Generic[T]):
    """`work(message)`, remembered for the last `most` messages asked about."""

    def __init__(self, work: Callable[[Message], T], most: int = MOST) -> None:
        self.work = work
        self.most = most
        self._filed: OrderedDict[int, tuple[Message, T]] = OrderedDict()
        _memos.append(self)

    def of(self, message: Message) -> T:
        key = id(message)
        filed = self._filed.get(key)
        if filed is not None:
            if filed[0] is message:
                self._filed.move_to_end(key)
                return filed[1]
            del self._filed[key]  # filed for another object, now gone, that had the same identity
        done = self.work(message)
        self._filed[key] = (message, done)
        if len(self._filed) > self.most:
            self._filed.popitem(last=False)
        return done

    def holds(self, message: Message) -> bool:
        filed = self._filed.get(id(message))
        return filed is not None and filed[0] is message

    def clear(self) -> None:
        self._filed.clear()


_memos: list[PerMessage[Any]] = []


def let_go_of_all() -> None:
    """Keep nothing worked out from any message (a contact was forgotten: its text leaves this process's memory
    now)."""
    for memo in _memos:
        memo.clear()
