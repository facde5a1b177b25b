"""chatdock's store: the typed interface (`Store`), its SQLite implementation and the shapes they share."""

from .base import Store
from .errors import ChatdockError, Conflict, InvalidInput, NotFound
from .models import (
    ApiKeyInfo,
    AppendedMessage,
    ChannelRef,
    Chat,
    ChatList,
    ChatStatus,
    Context,
    DeletedMessage,
    ForgetResult,
    Message,
    MessagePage,
    NewApiKey,
    NewMessage,
    Part,
    Role,
)
from .sqlite import Durability, SQLiteStore
from .transcript import format_transcript

__all__ = [
    "ApiKeyInfo",
    "AppendedMessage",
    "ChannelRef",
    "Chat",
    "ChatList",
    "ChatStatus",
    "ChatdockError",
    "Conflict",
    "Context",
    "DeletedMessage",
    "Durability",
    "ForgetResult",
    "InvalidInput",
    "Message",
    "MessagePage",
    "NewApiKey",
    "NewMessage",
    "NotFound",
    "Part",
    "Role",
    "SQLiteStore",
    "Store",
    "format_transcript",
]
