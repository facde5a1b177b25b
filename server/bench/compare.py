"""`chatdock bench --compare`: the chat-history stores a user would pick instead, on the same data, disk and run.

The rivals are LangChain's `SQLChatMessageHistory` (langchain-community) and LlamaIndex's `SQLiteChatStore`
(llama-index-storage-chat-store-sqlite), the optional extra `chatdock[compare]`; a rival that is not
installed is left out. Each gets a SQLite file of its own beside chatdock's, as the library creates it (its
defaults: SQLAlchemy's engine, a rollback journal), holding the messages chatdock's bench file holds: the rows
its own serialiser makes (LangChain's `message_to_dict`, LlamaIndex's `ChatMessage.model_dump`), written in
bulk since the fill is not what is measured.

Each store is then measured with the same loops, called as a user calls it (the rivals through their
synchronous API, chatdock through its Store): one caller appending to contacts that exist, the last 50
messages of a 10,000-message history, and the last 50 of an ordinary contact (10 messages). The rivals have
no "last n" call: a user reads the whole history and keeps its end.
"""

from __future__ import annotations

import inspect
import json
import random
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from chatdock.server.bench.rows import Row
from chatdock.storage import NewMessage, Store

INSTALL = "pip install 'chatdock[compare]'"


@dataclass
class Rival:
    """One store as its user calls it: append (contact, text), and the whole history of a contact."""

    name: str
    append: Callable[[str, str], object]
    history: Callable[[str], list[Any]]


def _bench_messages(path: str) -> Iterator[list[tuple[str, str, str]]]:
    """chatdock's bench file, oldest first, 5,000 at a time: (contact, role, text)."""
    with sqlite3.connect(path) as conn:
        cursor = conn.execute(
            "SELECT c.external_id, m.role, m.content FROM messages m JOIN contacts c ON c.id = m.contact_pk "
            "ORDER BY m.created_us, m.seq"
        )
        while batch := cursor.fetchmany(5000):
            yield batch


def _langchain(path: str, source: str) -> Rival:
    from langchain_community.chat_message_histories import SQLChatMessageHistory
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, message_to_dict
    from sqlalchemy import create_engine

    def message(role: str, text: str) -> BaseMessage:
        if role == "user":
            return HumanMessage(content=text)
        return AIMessage(content=text) if role == "assistant" else SystemMessage(content=text)

    engine = create_engine(f"sqlite:///{path}")
    SQLChatMessageHistory(session_id="-", connection=engine)  # creates its table, as its first use does
    with sqlite3.connect(path) as conn:
        for batch in _bench_messages(source):
            conn.executemany(
                "INSERT INTO message_store (session_id, message) VALUES (?, ?)",
                [(contact, json.dumps(message_to_dict(message(role, text)))) for contact, role, text in batch],
            )
    histories: dict[str, SQLChatMessageHistory] = {}

    def history_of(contact: str) -> SQLChatMessageHistory:
        if contact not in histories:
            histories[contact] = SQLChatMessageHistory(session_id=contact, connection=engine)
        return histories[contact]

    for index in range(1000):  # the contacts the appends go to: their history objects made before the clock
        history_of(_append_contact(index))

    return Rival(
        "LangChain SQLChatMessageHistory",
        lambda contact, text: history_of(contact).add_message(HumanMessage(content=text)),
        lambda contact: history_of(contact).messages,
    )


def _llamaindex(path: str, source: str) -> Rival:
    from llama_index.core.llms import ChatMessage
    from llama_index.storage.chat_store.sqlite import SQLiteChatStore  # type: ignore[import-untyped]

    store = SQLiteChatStore.from_uri(f"sqlite:///{path}")  # creates its table data_chatstore
    with sqlite3.connect(path) as conn:
        for batch in _bench_messages(source):
            conn.executemany(
                "INSERT INTO data_chatstore (key, value) VALUES (?, ?)",
                [
                    (contact, json.dumps(ChatMessage(role=role, content=text).model_dump(mode="json")))
                    for contact, role, text in batch
                ],
            )
    return Rival(
        "LlamaIndex SQLiteChatStore",
        lambda contact, text: store.add_message(contact, ChatMessage(role="user", content=text)),
        store.get_messages,
    )


RIVALS: dict[str, tuple[str, str, Callable[[str, str], Rival]]] = {
    # name: (the distribution that brings it, its SQLite file beside chatdock's, how to open and fill it)
    "LangChain SQLChatMessageHistory": ("langchain-community", "langchain.db", _langchain),
    "LlamaIndex SQLiteChatStore": ("llama-index-storage-chat-store-sqlite", "llamaindex.db", _llamaindex),
}


def installed() -> list[str]:
    """The rivals whose distribution is installed here (asked of the package metadata: nothing is imported)."""
    found = []
    for name, (distribution, _, _) in RIVALS.items():
        try:
            metadata.distribution(distribution)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def open_rivals(folder: str, source: str) -> list[Rival]:
    """The installed rivals, each filled with what chatdock's bench file `source` holds."""
    return [RIVALS[name][2](str(Path(folder) / RIVALS[name][1]), source) for name in installed()]


def _append_contact(index: int) -> str:
    return f"+3199{index % 1000:07d}"


async def _median_ms(call: Callable[[], object], count: int) -> float:
    """Median ms of `count` calls; a call that returns an awaitable (chatdock's) is awaited."""
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        result = call()
        if inspect.isawaitable(result):
            await result
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


async def measure_rival(rival: Rival, appends: int, reads: int, long: str, contacts: int) -> dict[str, float]:
    """Appends/s (one caller), and median ms of the last 50 of the long history and of an ordinary contact."""
    began = time.perf_counter()
    for index in range(appends):
        rival.append(_append_contact(index), f"compare {index}")
    rate = appends / (time.perf_counter() - began)
    return {
        "append": rate,
        "long": await _median_ms(lambda: rival.history(long)[-50:], reads),
        "ordinary": await _median_ms(lambda: rival.history(f"+3160{random.randrange(contacts):07d}")[-50:], reads),
    }


async def measure_chatdock(store: Store, appends: int, reads: int, long: str, contacts: int) -> dict[str, float]:
    """The same loops as measure_rival, through chatdock's Store."""
    began = time.perf_counter()
    for index in range(appends):
        message = NewMessage(contact_id=_append_contact(index), channel="sms", role="user", content=f"compare {index}")
        await store.append_message("bench", message)
    rate = appends / (time.perf_counter() - began)
    return {
        "append": rate,
        "long": await _median_ms(lambda: store.get_context("bench", long), reads),
        "ordinary": await _median_ms(
            lambda: store.get_context("bench", f"+3160{random.randrange(contacts):07d}"), reads
        ),
    }


MEASURES = (
    ("append", "append, 1 caller", "msg/s"),
    ("long", "last 50 of {long:,} messages p50", "ms"),
    ("ordinary", "last 50 of {ordinary} messages p50", "ms"),
)


async def figures(store: Store, rivals: list[Rival], scale: int, long: str, contacts: int) -> dict[str, float]:
    """One round: every store's figures, named `compare <store> <measure>`."""
    reads = max(10, scale // 100)  # a rival reads a whole history; at full size 20 reads of each kind
    found = {
        f"compare chatdock {name}": value
        for name, value in (await measure_chatdock(store, scale, reads, long, contacts)).items()
    }
    for rival in rivals:
        for name, value in (await measure_rival(rival, scale, reads, long, contacts)).items():
            found[f"compare {rival.name} {name}"] = value
    return found


def rows(m: dict[str, float], rivals: list[str], long: int, ordinary: int) -> list[Row]:
    """chatdock's row for each measure, then each rival's with its ratio to chatdock's; `long` and `ordinary`
    are the sizes of the histories read."""

    section = "compared on the same data (ratio: theirs over chatdock's)"
    found = []
    for key, template, unit in MEASURES:
        label = template.format(long=long, ordinary=ordinary)
        ours = m[f"compare chatdock {key}"]
        found.append(Row(f"chatdock: {label}", ours, unit, section=section))
        for rival in rivals:
            theirs = m[f"compare {rival} {key}"]
            found.append(Row(f"{rival}: {label}", theirs, unit, ours, theirs / ours, section=section))
    return found
