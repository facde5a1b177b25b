"""chatdock's MCP surface: tools, resources and a prompt, each a thin translation onto the store."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp_types import CallToolResult, InputRequiredResult, ToolAnnotations
from mcp_types import Resource as MCPResource
from mcp_types import Tool as MCPTool
from pydantic import Field, ValidationError

from storage import (
    AppendedMessage,
    Chat,
    ChatdockError,
    ChatList,
    DeletedMessage,
    Durability,
    ForgetResult,
    Message,
    MessagePage,
    NewMessage,
    Part,
    SQLiteStore,
    Store,
)
from storage import (
    Context as ContextModel,
)
from storage import validation as check
from storage.models import CHAT_STATUSES, ROLES

from .org import OrgMiddleware, OrgScopedBus, current_org
from .schemas import compact
from .stdio import serve_stdio

logger = logging.getLogger("chatdock.server")

T = TypeVar("T")

TRANSCRIPT_URI = "chatdock://contacts/{contact_id}/transcript"
CONTEXT_URI = "chatdock://contacts/{contact_id}/context"
RECENT_CONTACTS_LISTED = 50

INSTRUCTIONS = (
    "chatdock keeps every contact's messages across channels. Before answering a contact, call get_context "
    "(or read chatdock://contacts/{contact_id}/transcript); store each incoming and outgoing message with "
    "append_message. Contact ids are external identifiers such as +31612345678 or an email address."
)


@dataclass
class Settings:
    """Everything the server needs; only the CLI reads flags and environment variables."""

    db: str = ":memory:"
    org: str = "default"
    read_only: bool = False
    durability: Durability = "normal"


@dataclass
class _State:
    store: Store | None = None


def contact_uri(template: str, contact_id: str) -> str:
    """A contact's resource URI, its id percent-encoded (`+31...` becomes `%2B31...`)."""
    return template.replace("{contact_id}", quote(contact_id, safe=""))


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


class ChatdockServer(MCPServer[_State]):
    """An `MCPServer` whose resource listing also names the recently active contacts' transcripts,
    whose tool schemas are compacted (see `schemas.py`),
    and whose argument errors read like the store's (`limit: input should be a valid integer, got 'x'`)
    instead of pydantic's multi-line report with links; an unknown argument is an error, not ignored."""

    def __init__(self, state: _State, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = state
        self._compacted: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {}

    async def run_stdio_async(self) -> None:
        await serve_stdio(self._lowlevel_server)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[_State, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        tool = self._tool_manager.get_tool(name)
        if tool is not None and isinstance(arguments, dict):
            # an unknown argument is most often a misspelled one ("chatId"): say so rather than drop it
            known = list(tool.parameters.get("properties", {}))
            unknown = sorted(set(arguments) - set(known))
            if unknown:
                raise ToolError(
                    f"Error executing tool {name}: unknown argument {', '.join(map(repr, unknown))}; "
                    f"{name} takes {', '.join(known)}"
                )
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(f"Error executing tool {name}: {check.explain(exc.__cause__)}") from exc.__cause__
            raise

    async def list_tools(self) -> list[MCPTool]:
        listed = await super().list_tools()
        for tool in listed:
            if tool.name not in self._compacted:
                output = None if tool.output_schema is None else compact(tool.output_schema)
                self._compacted[tool.name] = (compact(tool.input_schema), output)
            tool.input_schema, tool.output_schema = self._compacted[tool.name]
        return listed

    async def list_resources(self) -> list[MCPResource]:
        listed = await super().list_resources()
        store = self.state.store
        if store is None:
            return listed
        for contact_id in await store.recent_contacts(current_org.get(), RECENT_CONTACTS_LISTED):
            listed.append(
                MCPResource(
                    uri=contact_uri(TRANSCRIPT_URI, contact_id),
                    name=f"transcript of {contact_id}",
                    description=f"The last 50 messages of {contact_id} as an LLM-ready transcript.",
                    mime_type="text/plain",
                )
            )
        return listed


def build_server(settings: Settings, store: Store | None = None) -> ChatdockServer:
    """The MCP server for `settings`; it opens its store in its lifespan unless one is given."""
    state = _State(store=store)

    @asynccontextmanager
    async def lifespan(_: MCPServer[_State]) -> AsyncIterator[_State]:
        if store is not None:
            yield state
            return
        async with SQLiteStore.open(settings.db, settings.durability) as opened:
            state.store = opened
            try:
                yield state
            finally:
                state.store = None

    server = ChatdockServer(
        state,
        name="chatdock",
        title="chatdock",
        instructions=INSTRUCTIONS,
        version="0.1.0",
        lifespan=lifespan,
        subscriptions=OrgScopedBus(),
    )
    server.middleware.append(OrgMiddleware(settings.org))

    def the_store() -> Store:
        if state.store is None:
            raise ToolError("the store is not open; restart chatdock")
        return state.store

    async def changed(ctx: Context, contact_id: str) -> None:
        for template in (TRANSCRIPT_URI, CONTEXT_URI):
            await ctx.notify_resource_updated(contact_uri(template, contact_id))

    # --- read-only tools ---

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
    ) -> ContextModel:
        """The contact's last messages, oldest to newest, plus `formatted`, a transcript ready for a prompt."""
        return await _tool(
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

    @server.tool(title="List messages", annotations=_hints(read_only=True))
    async def list_messages(
        contact_id: ContactId,
        limit: Limit = 50,
        cursor: Annotated[str | None, Field(description="next_cursor of the previous page.")] = None,
        agent_id: AgentId = None,
        chat_id: ChatId = None,
        channel: Annotated[str | None, Field(description="Only this channel.", json_schema_extra=_CHANNEL)] = None,
    ) -> MessagePage:
        """A contact's messages newest first, a page at a time, for inspection."""
        return await _tool(
            the_store().list_messages(
                _org(), contact_id, limit=limit, cursor=cursor, agent_id=agent_id, chat_id=chat_id, channel=channel
            )
        )

    @server.tool(title="List chats", annotations=_hints(read_only=True))
    async def list_chats(contact_id: ContactId, limit: Limit = 50) -> ChatList:
        """A contact's chats, newest first, with their status and channels."""
        return ChatList(chats=await _tool(the_store().list_chats(_org(), contact_id, limit)))

    # --- writing tools ---

    if not settings.read_only:

        @server.tool(title="Append message", annotations=_hints(read_only=False))
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
            ctx: Context,
            agent_id: AgentId = None,
            chat_id: ChatId = None,
            metadata: Annotated[
                dict[str, Any] | None,
                Field(description="JSON object; provider_message_id makes retried webhooks store once."),
            ] = None,
            created_at: Annotated[
                datetime | None, Field(description="RFC 3339 with timezone, for importing history.")
            ] = None,
        ) -> AppendedMessage:
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
                )
            )
            if not stored.deduplicated:
                await changed(ctx, stored.contact_id)
            return stored

        @server.tool(title="Post as contact", annotations=_hints(read_only=False))
        async def post_as_contact(
            contact_id: ContactId,
            chat_id: Annotated[str, Field(description="An existing chat of this contact.")],
            message: Annotated[list[Part], Field(description="1 to 100 text parts, with optional timestamps.")],
            ctx: Context,
            channel_id: Annotated[
                str | None, Field(description="Which of the chat's custom channels, when it has several.")
            ] = None,
        ) -> Message:
            """Post into an existing chat as the contact (role user), on one of the chat's custom channels."""
            stored = await _tool(the_store().post_as_contact(_org(), contact_id, chat_id, message, channel_id))
            await changed(ctx, contact_id)
            return stored

        @server.tool(title="Delete message", annotations=_hints(read_only=False, destructive=True, idempotent=False))
        async def delete_message(
            message_id: Annotated[str, Field(description="The message's id (UUID).")], ctx: Context
        ) -> DeletedMessage:
            """Permanently delete one message."""
            deleted = await _tool(the_store().delete_message(_org(), message_id))
            await changed(ctx, deleted.contact_id)
            return DeletedMessage(id=deleted.id)

        @server.tool(title="Open chat", annotations=_hints(read_only=False))
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
        ) -> Chat:
            """Start a chat (a conversation thread) for a contact on a channel; it starts RUNNING."""
            return await _tool(the_store().open_chat(_org(), contact_id, channel, agent_id))

        @server.tool(title="Update chat", annotations=_hints(read_only=False, idempotent=True))
        async def update_chat(
            chat_id: Annotated[str, Field(description="The chat's id (UUID).")],
            status: Annotated[
                str, Field(description="RUNNING, COMPLETED, FAILED or CANCELED.", json_schema_extra=_STATUS)
            ],
        ) -> Chat:
            """Set a chat's status."""
            return await _tool(the_store().update_chat(_org(), chat_id, status))

        @server.tool(title="Forget contact", annotations=_hints(read_only=False, destructive=True, idempotent=True))
        async def forget_contact(contact_id: ContactId, ctx: Context) -> ForgetResult:
            """Erase every message, chat and channel of a contact, permanently."""
            result = await _tool(the_store().forget_contact(_org(), contact_id))
            await changed(ctx, contact_id)
            return result

    # --- resources and prompt ---

    async def read_context(contact_id: str) -> ContextModel:
        try:
            return await the_store().get_context(_org(), contact_id)
        except ChatdockError as exc:
            raise ResourceError(str(exc)) from None

    @server.resource(
        TRANSCRIPT_URI,
        name="transcript",
        title="Contact transcript",
        description="The contact's last 50 messages as an LLM-ready transcript (ROLE: content per line).",
        mime_type="text/plain",
    )
    async def transcript(contact_id: str) -> str:
        return (await read_context(contact_id)).formatted

    @server.resource(
        CONTEXT_URI,
        name="context",
        title="Contact context",
        description="What get_context returns with its defaults, as JSON.",
        mime_type="application/json",
    )
    async def context(contact_id: str) -> str:
        return (await read_context(contact_id)).model_dump_json()

    @server.prompt(title="Continue conversation")
    async def continue_conversation(contact_id: str, agent_id: str | None = None) -> list[UserMessage]:
        """Hand the model a contact's conversation so far, to continue it."""
        try:
            found = await the_store().get_context(_org(), contact_id, agent_id=agent_id)
        except ChatdockError as exc:
            raise ValueError(str(exc)) from None
        history = found.formatted or "(no messages yet)"
        return [
            UserMessage(
                f"Here is the conversation so far with contact {contact_id}, oldest first:\n\n{history}\n\n"
                "Continue it: write the next reply to the contact."
            )
        ]

    return server
