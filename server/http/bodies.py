"""An answer's JSON body: the model as pydantic's serializer writes it (`model_dump_json(by_alias=True)`), but
each message of a context or a message page written once and remembered (storage/memo.py). A context of 50
messages is most of an append's or a context read's answer, and a conversation's next turn answers with
nearly the same messages again: writing them from memory takes such an answer from 55 us to 16.

The model is written with a hole where each list of messages goes (a random token, never sent), and the
messages' JSON, joined, fills it."""

from __future__ import annotations

import secrets
from functools import cache

from pydantic import BaseModel, TypeAdapter

from chatdock.storage.memo import PerMessage
from chatdock.storage.models import Message

_MESSAGE = TypeAdapter(Message)
# weighed as its JSON and the message kept with it
_written = PerMessage(lambda message: _MESSAGE.dump_json(message, by_alias=True), lambda _, json: 2 * len(json))
_HOLE = f"chatdock-hole-{secrets.token_hex(16)}-"  # this process's own: no text sent to it can hold it


def json_body(model: BaseModel) -> bytes:
    """`model.model_dump_json(by_alias=True)` as bytes, its lists of messages written from memory."""
    lists: list[list[Message]] = []
    shell = _hollowed(model, lists)
    if not lists:
        return model.__pydantic_serializer__.to_json(model, by_alias=True)
    # the shell holds a token string where each list of messages goes: pydantic writes it as it is, unwarned
    written = shell.__pydantic_serializer__.to_json(shell, by_alias=True, warnings=False)
    pieces = []
    for index, messages in enumerate(lists):
        hole = f'["{_HOLE}{index}"]'.encode()
        at = written.find(hole)
        if at < 0:  # a field that writes its messages otherwise (excluded, or by a serializer of its own)
            return model.__pydantic_serializer__.to_json(model, by_alias=True)
        pieces += [written[:at], b"[", b",".join([_written.of(message) for message in messages]), b"]"]
        written = written[at + len(hole) :]
    return b"".join([*pieces, written])


def _hollowed(model: BaseModel, lists: list[list[Message]]) -> BaseModel:
    """`model` with each of its lists of messages (its own, or its fields' own) a hole, the lists added to
    `lists` in the holes' order."""
    update: dict[str, object] = {}
    for name, holds_messages in _fields(type(model)):
        value = getattr(model, name)
        if holds_messages:
            update[name] = [f"{_HOLE}{len(lists)}"]
            lists.append(value)
        elif isinstance(value, BaseModel):
            inner = _hollowed(value, lists)
            if inner is not value:
                update[name] = inner
    return model.model_copy(update=update) if update else model


@cache
def _fields(kind: type[BaseModel]) -> tuple[tuple[str, bool], ...]:
    """The fields of `kind` that hold messages (True) or may hold a model that does (False)."""
    found = []
    for name, field in kind.model_fields.items():
        if field.annotation == list[Message]:
            found.append((name, True))
        elif _may_hold_a_model(field.annotation):
            found.append((name, False))
    return tuple(found)


def _may_hold_a_model(annotation: object) -> bool:
    if isinstance(annotation, type):
        return issubclass(annotation, BaseModel)
    return any(_may_hold_a_model(inner) for inner in getattr(annotation, "__args__", ()))
