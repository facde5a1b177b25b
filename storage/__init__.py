"""chatdock's store: `open_store(url)` gives a `Store`, the contract's rules over a storage backend.

storage/
  store.py        Store: checks, normalization, the channel choice, transcript fitting, keys
  backend.py      Backend: the narrow seam an engine implements (records in, records out)
  records.py      messages and chats checked in full, as a backend receives them
  sqlite/         the SQLite backend
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .errors import ChatdockError, Conflict, InvalidInput, NotFound, Unavailable
from .models import (
    ApiKeyInfo,
    AppendedMessage,
    ChannelRef,
    Chat,
    ChatList,
    ChatStatus,
    ContactInfo,
    Context,
    DeletedMessage,
    ForgetResult,
    LinkResult,
    Message,
    MessagePage,
    NewApiKey,
    NewMessage,
    Part,
    Role,
)
from .sqlite import Durability, SQLiteBackend
from .sqlite.backend import integrity_check
from .store import Store
from .transcript import format_transcript

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@asynccontextmanager
async def open_store(url: str, durability: Durability = "normal") -> AsyncIterator[Store]:
    """The store `url` names: a SQLite file path, or `:memory:` for a throwaway one."""
    if url.startswith(POSTGRES_SCHEMES):
        raise InvalidInput(
            "PostgreSQL URLs are not supported by this version of chatdock yet; pass a SQLite file path or :memory:"
        )
    backend = SQLiteBackend(url, durability)
    try:
        await backend.start()
    except BaseException:
        await backend.close()
        raise
    store = Store(backend)
    try:
        yield store
    finally:
        await store.close()


async def check_store(url: str) -> list[str]:
    """A full check of the database `url` names, without opening it for writing: what is damaged, if anything."""
    if url.startswith(POSTGRES_SCHEMES) or url == ":memory:":
        raise InvalidInput("chatdock check reads a SQLite file; pass its path with --db")
    return await asyncio.to_thread(integrity_check, url)


__all__ = [
    "ApiKeyInfo",
    "AppendedMessage",
    "ChannelRef",
    "Chat",
    "ChatList",
    "ChatStatus",
    "ChatdockError",
    "Conflict",
    "ContactInfo",
    "Context",
    "DeletedMessage",
    "Durability",
    "ForgetResult",
    "InvalidInput",
    "LinkResult",
    "Message",
    "MessagePage",
    "NewApiKey",
    "NewMessage",
    "NotFound",
    "Part",
    "Role",
    "Store",
    "Unavailable",
    "check_store",
    "format_transcript",
    "open_store",
]
