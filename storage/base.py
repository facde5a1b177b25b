"""The store's interface: what `server/` may ask of any backend.

Every method takes the organization first; a backend scopes every query by
it, so an id of another organization behaves exactly like an unknown id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Literal, Protocol

from .errors import ChatdockError
from .models import (
    ApiKeyInfo,
    AppendedMessage,
    Chat,
    Context,
    ForgetResult,
    Message,
    MessagePage,
    NewApiKey,
    NewChat,
    NewMessage,
    Part,
)

# How each imported record went: newly stored, or already there (same id; or channel and provider id).
Imported = Literal["stored", "existing"]


class Store(Protocol):
    async def append_message(self, org: str, message: NewMessage) -> AppendedMessage: ...

    async def post_as_contact(
        self, org: str, contact_id: str, chat_id: str, parts: Sequence[Part], channel_id: str | None = None
    ) -> Message: ...

    async def get_context(
        self,
        org: str,
        contact_id: str,
        *,
        agent_id: str | None = None,
        chat_id: str | None = None,
        limit: int = 50,
        roles: Sequence[str] | None = None,
        channels: Sequence[str] | None = None,
        max_chars: int | None = None,
    ) -> Context: ...

    async def list_messages(
        self,
        org: str,
        contact_id: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        agent_id: str | None = None,
        chat_id: str | None = None,
        channel: str | None = None,
    ) -> MessagePage: ...

    async def delete_message(self, org: str, message_id: str) -> Message: ...

    async def open_chat(self, org: str, contact_id: str, channel: str, agent_id: str | None = None) -> Chat: ...

    async def update_chat(self, org: str, chat_id: str, status: str) -> Chat: ...

    async def list_chats(self, org: str, contact_id: str, limit: int = 50) -> list[Chat]: ...

    async def forget_contact(self, org: str, contact_id: str) -> ForgetResult: ...

    async def recent_contacts(self, org: str, limit: int = 50) -> list[str]: ...

    def export_messages(
        self, org: str | None = None, contact_id: str | None = None
    ) -> AsyncIterator[tuple[str, Message]]: ...

    async def import_messages(self, org: str, messages: Sequence[NewMessage]) -> list[AppendedMessage]: ...

    def export_chats(
        self, org: str | None = None, contact_id: str | None = None
    ) -> AsyncIterator[tuple[str, Chat]]: ...

    async def count_history(self, org: str | None = None, contact_id: str | None = None) -> int: ...

    def check_record(self, record: NewChat | NewMessage) -> None: ...

    async def import_history(
        self, org: str, records: Sequence[NewChat | NewMessage], keep_going: bool = False
    ) -> list[Imported | ChatdockError]: ...

    async def import_conflicts(
        self, org: str, records: Sequence[NewChat | NewMessage], chats_in_file: dict[str, tuple[str, str]]
    ) -> dict[int, str]: ...

    async def create_api_key(self, org: str, name: str | None = None) -> NewApiKey: ...

    async def list_api_keys(self) -> list[ApiKeyInfo]: ...

    async def revoke_api_key(self, prefix_or_name: str) -> ApiKeyInfo: ...

    async def verify_api_key(self, key: str) -> str | None: ...

    async def ping(self) -> None: ...
