"""The tools: each translates its arguments and calls the store (which tells listeners what changed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from chatdock.server.mcp.org import current_org
from chatdock.server.mcp.results import as_json, context_result, page_result, search_result, stored_result
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
    NewMessage,
    Part,
    Store,
    StoredMessage,
)
from chatdock.storage import validation as check
from chatdock.storage.models import CHAT_STATUSES, ROLES, SearchPage

if TYPE_CHECKING:
    from chatdock.server.mcp.app import ChatdockServer

T = TypeVar("T")


def _org() -> str:
    return current_org.get()


async def _tool(call: Awaitable[T]) -> T:
    """Run a store call; every expected failure becomes a tool error whose text says what to fix."""
    try:
        return await call
    except ChatdockError as exc:
        raise ToolError(str(exc)) from None


def _hints(read_only: bool, destructive: bool = False, idempotent: bool = False) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent or read_only,
        open_world_hint=False,
    )


# The schemas name the allowed values so clients can offer them; the store still checks every value,
# so a wrong one gets the store's message (what was wrong and what to send), not a schema report.
_ROLE: dict[str, Any] = {"enum": list(ROLES)}
_ROLES: dict[str, Any] = {"items": {"type": "string", "enum": list(ROLES)}}
_STATUS: dict[str, Any] = {"enum": list(CHAT_STATUSES)}
_CHANNEL: dict[str, Any] = {"pattern": "^" + check.CHANNEL_PATTERN.pattern + "$"}
_CHANNELS: dict[str, Any] = {"items": {"type": "string", **_CHANNEL}}

ContactId = Annotated[
    str,
    Field(
        description="The contact's external id: a phone number (+31612345678), session id or email.",
        json_schema_extra={"minLength": 1, "maxLength": check.MAX_ID_CHARS},
    ),
]
AgentId = Annotated[str | None, Field(description="The agent the message belongs to, if any.")]
ChatId = Annotated[str | None, Field(description="A chat (UUID) of this contact, from open_chat or list_chats.")]
Limit = Annotated[
    int,
    Field(description="How many, 1 to 200.", json_schema_extra={"minimum": 1, "maximum": 200}),
]
ContextLimit = Annotated[
    int | None,
    Field(
        description="Also return the contact's context (as get_context with this limit, 1 to 200) after the write.",
        json_schema_extra={"minimum": 1, "maximum": 200},
    ),
]


def register(server: ChatdockServer, the_store: Callable[[], Store], read_only: bool) -> None:
    """Add the tools to `server`: the read-only ones always, the writing ones unless `read_only`."""

    # --- read-only tools ---

    # no output schema: a declared one obliges structured content in every result, and a client that hands its
    # model the whole result (text and structured content) would read the transcript twice (results.py)
    @server.tool(title="Get conversation context", annotations=_hints(read_only=True))
    async def get_context(
        contact_id: ContactId,
        agent_id: AgentId = None,
        chat_id: ChatId = None,
        limit: Limit = 50,
        roles: Annotated[
            list[str] | None, Field(description="Only these roles (user, assistant, ...).", json_schema_extra=_ROLES)
        ] = None,
        channels: Annotated[
            list[str] | None, Field(description="Only these channels (sms, voice, ...).", json_schema_extra=_CHANNELS)
        ] = None,
        max_chars: Annotated[
            int | None,
            Field(description="Drop the oldest messages until `formatted` fits.", json_schema_extra={"minimum": 1}),
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
            )
        )
        return context_result(found, include_messages)

    @server.structured_tool(MessagePage, title="List messages", annotations=_hints(read_only=True))
    async def list_messages(
        contact_id: ContactId,
        limit: Limit = 50,
        cursor: Annotated[str | None, Field(description="next_cursor of the previous page.")] = None,
        agent_id: AgentId = None,
        chat_id: ChatId = None,
        channel: Annotated[str | None, Field(description="Only this channel.", json_schema_extra=_CHANNEL)] = None,
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
            Field(description='Words (any case, accents ignored), prefix*, "exact phrase", -excluded.'),
        ],
        contact_id: Annotated[str | None, Field(description="Only this contact (any of its ids).")] = None,
        channel: Annotated[str | None, Field(description="Only this channel.", json_schema_extra=_CHANNEL)] = None,
        role: Annotated[str | None, Field(description="Only this role.", json_schema_extra=_ROLE)] = None,
        limit: Annotated[
            int, Field(description="How many, 1 to 200.", json_schema_extra={"minimum": 1, "maximum": 200})
        ] = 20,
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

    if not read_only:

        @server.structured_tool(AppendedMessage, title="Append message", annotations=_hints(read_only=False))
        async def append_message(
            contact_id: ContactId,
            channel: Annotated[
                str,
                Field(description="Where it travelled: whatsapp, sms, voice, widget, ...", json_schema_extra=_CHANNEL),
            ],
            role: Annotated[
                str, Field(description="user, assistant, system, tool, event or note.", json_schema_extra=_ROLE)
            ],
            content: Annotated[str, Field(description="The message's text.")],
            agent_id: AgentId = None,
            chat_id: ChatId = None,
            metadata: Annotated[
                dict[str, Any] | None,
                Field(description="JSON object; provider_message_id makes retried webhooks store once."),
            ] = None,
            created_at: Annotated[
                datetime | None, Field(description="RFC 3339 with timezone, for importing history.")
            ] = None,
            context_limit: ContextLimit = None,
        ) -> CallToolResult:
            """Store one message for a contact; a repeated metadata.provider_message_id returns the first copy."""
            stored = await _tool(
                the_store().append_message(
                    _org(),
                    NewMessage(
                        contact_id=contact_id,
                        channel=channel,
                        role=role,
                        content=content,
                        agent_id=agent_id,
                        chat_id=chat_id,
                        metadata=metadata,
                        created_at=created_at,
                    ),
                    context_limit=context_limit,
                )
            )
            return stored_result(stored)

        @server.structured_tool(StoredMessage, title="Post as contact", annotations=_hints(read_only=False))
        async def post_as_contact(
            contact_id: ContactId,
            chat_id: Annotated[str, Field(description="An existing chat of this contact.")],
            message: Annotated[list[Part], Field(description="1 to 100 text parts, with optional timestamps.")],
            channel_id: Annotated[
                str | None, Field(description="Which of the chat's custom channels, when it has several.")
            ] = None,
            context_limit: ContextLimit = None,
        ) -> CallToolResult:
            """Post into an existing chat as the contact (role user), on one of the chat's custom channels."""
            stored = await _tool(
                the_store().post_as_contact(
                    _org(), contact_id, chat_id, message, channel_id, context_limit=context_limit
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
            channel: Annotated[
                str,
                Field(
                    description="The channel the chat starts on: voice, widget, whatsapp, ...",
                    json_schema_extra=_CHANNEL,
                ),
            ],
            agent_id: AgentId = None,
        ) -> CallToolResult:
            """Start a chat (a conversation thread) for a contact on a channel; it starts RUNNING."""
            return as_json(await _tool(the_store().open_chat(_org(), contact_id, channel, agent_id)))

        @server.structured_tool(Chat, title="Update chat", annotations=_hints(read_only=False, idempotent=True))
        async def update_chat(
            chat_id: Annotated[str, Field(description="The chat's id (UUID).")],
            status: Annotated[
                str, Field(description="RUNNING, COMPLETED, FAILED or CANCELED.", json_schema_extra=_STATUS)
            ],
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
            identifier: Annotated[
                str, Field(description="Another id of the same person: an email, a phone number, a session id.")
            ],
        ) -> CallToolResult:
            """Make identifier name this contact; a contact it named before is merged in, history and all."""
            return as_json(await _tool(the_store().link_contacts(_org(), contact_id, identifier)))

        @server.structured_tool(ContactInfo, title="Unlink contact", annotations=_hints(read_only=False))
        async def unlink_contact(
            identifier: Annotated[str, Field(description="An alias of a contact (not its own contact_id).")],
        ) -> CallToolResult:
            """Detach an alias from its contact; the history stays with the contact."""
            return as_json(await _tool(the_store().unlink_contact(_org(), identifier)))
