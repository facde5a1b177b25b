"""The tools: each translates its arguments and calls the store (which tells listeners what changed)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import BaseModel, Field

from chatdock.server.mcp.org import current_org
from chatdock.server.mcp.results import (
    LEFT_OUT,
    as_json,
    context_result,
    page_result,
    search_result,
    stored_result,
)
from chatdock.server.ops.observe import note_failure
from chatdock.storage import (
    AppendedMessage,
    Chat,
    ChatdockError,
    ChatList,
    ContactInfo,
    DeletedMessage,
    ForgetResult,
    LinkResult,
    MessagePage,
    Store,
    StoredMessage,
)
from chatdock.storage import validation as check
from chatdock.storage.models import SearchPage
from chatdock.storage.requests import (
    AgentFilter,
    Alias,
    AppendRequest,
    ChannelFilter,
    ChannelId,
    Channels,
    ChatAgentId,
    ChatId,
    ContactFilter,
    ContactId,
    ContextLimit,
    CreatedAt,
    Identifier,
    Limit,
    Parts,
    RoleFilter,
    Roles,
    StartChannel,
    Status,
    Whole,
)
from chatdock.storage.search import MAX_QUERY_CHARS

if TYPE_CHECKING:
    from chatdock.server.mcp.app import ChatdockServer

T = TypeVar("T")


def _org() -> str:
    return current_org.get()


async def _tool(call: Awaitable[T]) -> T:
    """Run a store call; every expected failure becomes a tool error whose text says what to fix (one of the
    database, which REST answers 503, is noted for the metrics: `unavailable`, not a caller's `tool_error`)."""
    try:
        return await call
    except ChatdockError as exc:
        note_failure(exc)
        raise ToolError(str(exc)) from None


def _hints(read_only: bool, destructive: bool = False, idempotent: bool = False) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent or read_only,
        open_world_hint=False,
    )


F = TypeVar("F", bound=Callable[..., Awaitable[CallToolResult]])


def arguments_of(model: type[BaseModel]) -> Callable[[F], F]:
    """Give a tool the fields of `model` as its parameters (names, types, descriptions, schema hints and
    defaults, in order): the tool and the REST body that share a shape declare it once (storage/requests.py)."""

    def give(fn: F) -> F:
        parameters = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if field.is_required() else field.default,
                annotation=Annotated[
                    (
                        field.annotation,
                        *field.metadata,
                        Field(description=field.description, json_schema_extra=field.json_schema_extra),
                    )
                ],
            )
            for name, field in model.model_fields.items()
        ]
        fn.__signature__ = inspect.Signature(parameters, return_annotation=CallToolResult)  # type: ignore[attr-defined]
        return fn

    return give


def register(server: ChatdockServer, the_store: Callable[[], Store], read_only: bool) -> None:
    """Add the tools to `server`: the read-only ones always, the writing ones unless `read_only`."""

    # --- read-only tools ---

    # no output schema: a declared one obliges structured content in every result, and a client that hands its
    # model the whole result (text and structured content) would read the transcript twice (results.py)
    @server.tool(title="Get conversation context", annotations=_hints(read_only=True))
    async def get_context(
        contact_id: ContactId,
        agent_id: AgentFilter = None,
        chat_id: ChatId = None,
        limit: Limit = 50,
        roles: Roles = None,
        channels: Channels = None,
        max_chars: Annotated[
            int | None,
            Whole,
            Field(
                description="Drop the oldest messages until the transcript (`formatted`) is at most this many "
                "characters.",
                json_schema_extra={"minimum": 1, "maximum": check.MAX_MAX_CHARS},
            ),
        ] = None,
        include_messages: Annotated[
            bool,
            Field(
                description="Also return every message's fields as structured content, for applications "
                "(the text is the transcript either way)."
            ),
        ] = False,
    ) -> CallToolResult:
        """The contact's last messages, oldest to newest, as a transcript ready for a prompt."""
        found = await _tool(
            the_store().get_context(
                _org(),
                contact_id,
                agent_id=agent_id,
                chat_id=chat_id,
                limit=limit,
                roles=roles,
                channels=channels,
                max_chars=max_chars,
                reserved=len(LEFT_OUT) + 1,  # the line that says older messages were left out, if they are
                text_only=not include_messages,
            )
        )
        asked = {"agent_id": agent_id, "chat_id": chat_id, "roles": roles, "channels": channels}
        filters = ", ".join(
            f"{name} {value if isinstance(value, str) else ','.join(value)}" for name, value in asked.items() if value
        )
        return context_result(found, include_messages, filters)

    @server.structured_tool(MessagePage, title="List messages", annotations=_hints(read_only=True))
    async def list_messages(
        contact_id: ContactId,
        limit: Limit = 50,
        cursor: Annotated[str | None, Field(description="next_cursor of the previous page.")] = None,
        agent_id: AgentFilter = None,
        chat_id: ChatId = None,
        channel: ChannelFilter = None,
    ) -> CallToolResult:
        """A contact's messages newest first, a page at a time, for inspection."""
        page = await _tool(
            the_store().list_messages(
                _org(), contact_id, limit=limit, cursor=cursor, agent_id=agent_id, chat_id=chat_id, channel=channel
            )
        )
        return page_result(page)

    @server.structured_tool(SearchPage, title="Search messages", annotations=_hints(read_only=True))
    async def search_messages(
        query: Annotated[
            str,
            Field(
                description="Words, all of which a message must hold (any case, accents ignored; no OR), prefix*, "
                '"exact phrase", -excluded.',
                json_schema_extra={"minLength": 1, "maxLength": MAX_QUERY_CHARS},
            ),
        ],
        contact_id: ContactFilter = None,
        channel: ChannelFilter = None,
        role: RoleFilter = None,
        limit: Limit = 20,
        cursor: Annotated[str | None, Field(description="next_cursor of the previous page.")] = None,
    ) -> CallToolResult:
        """Full-text search of the organization's messages (or one contact's), best match first."""
        page = await _tool(
            the_store().search_messages(
                _org(), query, contact_id=contact_id, channel=channel, role=role, limit=limit, cursor=cursor
            )
        )
        return search_result(page)

    @server.structured_tool(ContactInfo, title="Get contact", annotations=_hints(read_only=True))
    async def get_contact(contact_id: ContactId) -> CallToolResult:
        """A contact by any of its ids: its aliases, channels, message and chat counts, first and last activity."""
        return as_json(await _tool(the_store().get_contact(_org(), contact_id)))

    @server.structured_tool(ChatList, title="List chats", annotations=_hints(read_only=True))
    async def list_chats(contact_id: ContactId, limit: Limit = 50) -> CallToolResult:
        """A contact's chats, newest first, with their status and channels."""
        return as_json(ChatList(chats=await _tool(the_store().list_chats(_org(), contact_id, limit))))

    # --- writing tools ---

    reading = set(server.tool_names)

    @server.structured_tool(AppendedMessage, title="Append message", annotations=_hints(read_only=False))
    @arguments_of(AppendRequest)
    async def append_message(**arguments: Any) -> CallToolResult:
        """Store one message for a contact; a repeated metadata.provider_message_id returns the first copy."""
        request = AppendRequest.model_construct(**arguments)  # validated as its fields by the SDK
        stored = await _tool(
            the_store().append_message(_org(), request.new_message(), context_limit=request.context_limit)
        )
        return stored_result(stored)

    @server.structured_tool(StoredMessage, title="Post as contact", annotations=_hints(read_only=False))
    async def post_as_contact(
        contact_id: ContactId,
        chat_id: Annotated[str, Field(description="An existing chat of this contact.")],
        message: Parts,
        channel_id: ChannelId = None,
        created_at: CreatedAt = None,
        context_limit: ContextLimit = None,
    ) -> CallToolResult:
        """Post into an existing chat as the contact (role user), on one of the chat's custom channels."""
        stored = await _tool(
            the_store().post_as_contact(
                _org(), contact_id, chat_id, message, channel_id, context_limit=context_limit, created_at=created_at
            )
        )
        return stored_result(stored)

    @server.structured_tool(
        DeletedMessage,
        title="Delete message",
        annotations=_hints(read_only=False, destructive=True, idempotent=False),
    )
    async def delete_message(
        message_id: Annotated[str, Field(description="The message's id (UUID).")],
    ) -> CallToolResult:
        """Permanently delete one message."""
        deleted = await _tool(the_store().delete_message(_org(), message_id))
        return as_json(DeletedMessage(id=deleted.id))

    @server.structured_tool(Chat, title="Open chat", annotations=_hints(read_only=False))
    async def open_chat(
        contact_id: ContactId,
        channel: StartChannel,
        agent_id: ChatAgentId = None,
    ) -> CallToolResult:
        """Start a chat (a conversation thread) for a contact on a channel; it starts RUNNING."""
        return as_json(await _tool(the_store().open_chat(_org(), contact_id, channel, agent_id)))

    @server.structured_tool(Chat, title="Update chat", annotations=_hints(read_only=False, idempotent=True))
    async def update_chat(
        chat_id: Annotated[str, Field(description="The chat's id (UUID).")],
        status: Status,
    ) -> CallToolResult:
        """Set a chat's status."""
        return as_json(await _tool(the_store().update_chat(_org(), chat_id, status)))

    @server.structured_tool(
        ForgetResult, title="Forget contact", annotations=_hints(read_only=False, destructive=True, idempotent=True)
    )
    async def forget_contact(contact_id: ContactId) -> CallToolResult:
        """Erase every message, chat, channel and identifier of a contact (named by any of them), permanently."""
        result = await _tool(the_store().forget_contact(_org(), contact_id))
        return as_json(result)

    @server.structured_tool(LinkResult, title="Link contacts", annotations=_hints(read_only=False))
    async def link_contacts(
        contact_id: ContactId,
        identifier: Identifier,
    ) -> CallToolResult:
        """Make identifier name this contact; a contact it named before is merged in for good, history and all."""
        return as_json(await _tool(the_store().link_contacts(_org(), contact_id, identifier)))

    @server.structured_tool(ContactInfo, title="Unlink contact", annotations=_hints(read_only=False))
    async def unlink_contact(
        identifier: Alias,
    ) -> CallToolResult:
        """Detach an alias from its contact; the history stays with the contact."""
        return as_json(await _tool(the_store().unlink_contact(_org(), identifier)))

    if read_only:  # registered, then taken out: a call of one says that the server serves reading only
        for name in sorted(server.tool_names - reading):
            server.remove_tool(name)
