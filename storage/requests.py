"""What callers send: each argument declared once (its type, its description, the hints a schema gives a
client), and the request bodies built from them. The MCP tools take their parameters from these (an
`append_message` call's arguments are an `AppendRequest`'s fields: server/mcp/tools.py derives the tool's
signature from the model), the REST routes take the bodies, and the store takes what `new_message()` makes
of them. The schemas only name what a client may offer; the store still checks every value (validation.py)
and says what to fix, once, for every surface."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from . import validation as check
from .models import CHAT_STATUSES, ROLES, NewMessage, Part, _Model, written_time

_CHANNEL: dict[str, Any] = {"pattern": "^" + check.CHANNEL_PATTERN.pattern + "$"}

_ID: dict[str, Any] = {"minLength": 1, "maxLength": check.MAX_ID_CHARS}  # what every id takes (validation.identifier)
ContactId = Annotated[
    str,
    Field(
        description="The contact's external id, matched exactly: a phone number in E.164 (+31612345678, no "
        "spaces), session id or email.",
        json_schema_extra=_ID,
    ),
]
AgentId = Annotated[
    str | None,
    Field(
        description="The agent the message belongs to, if any; with context_limit, the context is then that "
        "agent's messages alone (the contact's own, stored without an agent_id, are left out).",
        json_schema_extra=_ID,
    ),
]
ChatAgentId = Annotated[str | None, Field(description="The agent handling this chat, if any.", json_schema_extra=_ID)]
AgentFilter = Annotated[
    str | None,
    Field(
        description="Only the messages stored with this agent_id (the contact's own, stored with none, are left out).",
        json_schema_extra=_ID,
    ),
]
ChatId = Annotated[str | None, Field(description="A chat (UUID) of this contact, from open_chat or list_chats.")]
Channel = Annotated[
    str, Field(description="Where it travelled: whatsapp, sms, voice, widget, ...", json_schema_extra=_CHANNEL)
]
StartChannel = Annotated[
    str,
    Field(description="The channel the chat starts on: voice, widget, whatsapp, ...", json_schema_extra=_CHANNEL),
]
Channels = Annotated[
    list[str] | None,
    Field(
        description="Only these channels (sms, voice, ...).",
        json_schema_extra={"items": {"type": "string", **_CHANNEL}},
    ),
]
ChannelFilter = Annotated[str | None, Field(description="Only this channel.", json_schema_extra=_CHANNEL)]
RoleFilter = Annotated[str | None, Field(description="Only this role.", json_schema_extra={"enum": list(ROLES)})]
Role = Annotated[
    str, Field(description="user, assistant, system, tool, event or note.", json_schema_extra={"enum": list(ROLES)})
]
Roles = Annotated[
    list[str] | None,
    Field(
        description="Only these roles (user, assistant, ...).",
        json_schema_extra={"items": {"type": "string", "enum": list(ROLES)}},
    ),
]
Status = Annotated[
    str, Field(description="RUNNING, COMPLETED, FAILED or CANCELED.", json_schema_extra={"enum": list(CHAT_STATUSES)})
]
Content = Annotated[
    str,
    Field(description="The message's text.", json_schema_extra={"minLength": 1, "maxLength": check.MAX_TEXT_CHARS}),
]
Metadata = Annotated[
    dict[str, Any] | None, Field(description="JSON object; provider_message_id makes retried webhooks store once.")
]
CreatedAt = Annotated[
    datetime | None,
    BeforeValidator(written_time),
    Field(description="When it was written or said, RFC 3339 with timezone (history, a late write); else now."),
]


def _not_a_truth_value(value: object) -> object:
    """pydantic reads true as 1 where an integer is wanted; a count is never true or false."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "input should be a whole number, not true or false")
    return value


Whole = BeforeValidator(_not_a_truth_value)  # on every integer argument
Limit = Annotated[
    int, Whole, Field(description="How many, 1 to 200.", json_schema_extra={"minimum": 1, "maximum": 200})
]
ContextLimit = Annotated[
    int | None,
    Whole,
    Field(
        description="Also return the contact's context right after the write: get_context with this limit (1 to "
        "200); append_message's with its agent_id (with one, only that agent's messages), post_as_contact's with "
        "every agent's (the contact's message has none).",
        json_schema_extra={"minimum": 1, "maximum": 200},
    ),
]
Parts = Annotated[
    list[Part],
    Field(
        description="1 to 100 text parts, with optional timestamps.",
        json_schema_extra={"minItems": 1, "maxItems": check.MAX_PARTS},
    ),
]
ChannelId = Annotated[str | None, Field(description="Which of the chat's custom channels, when it has several.")]
ContactFilter = Annotated[str | None, Field(description="Only this contact (any of its ids).", json_schema_extra=_ID)]
Alias = Annotated[str, Field(description="An alias of a contact (not its own contact_id).", json_schema_extra=_ID)]
Identifier = Annotated[
    str,
    Field(description="Another id of the same person: an email, a phone number, a session id.", json_schema_extra=_ID),
]


class AppendRequest(_Model):
    """A message to store, as `append_message` takes it (and POST /chats)."""

    contact_id: ContactId
    channel: Channel
    role: Role
    content: Content
    agent_id: AgentId = None
    chat_id: ChatId = None
    metadata: Metadata = None
    created_at: CreatedAt = None
    context_limit: ContextLimit = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"contact_id": "+31612345678", "channel": "whatsapp", "role": "user", "content": "Where is my order?"}
            ]
        },
    )

    def new_message(self) -> NewMessage:
        """The message the store is asked to keep: the fields are of their types already (the model or the
        tool's arguments were validated), and the store checks every rule once (records.py)."""
        return NewMessage.model_construct(**{name: getattr(self, name) for name in _MESSAGE_FIELDS})


# what of an append request is the message (the rest, such as context_limit, says what to answer)
_MESSAGE_FIELDS = tuple(name for name in AppendRequest.model_fields if name in NewMessage.model_fields)


class AliasRequest(_Model):
    """POST /contacts/{contact_id}/aliases: link another identifier to the contact."""

    identifier: Identifier

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"identifier": "ann@example.com"}]})


class OpenChatRequest(_Model):
    channel: StartChannel
    agent_id: ChatAgentId = None

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"channel": "voice", "agent_id": "agent-7"}]}
    )


class UpdateChatRequest(_Model):
    status: Status

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"status": "COMPLETED"}]})


class PostRequest(_Model):
    """The contact's message, as parts (with timestamps for voice), and which custom channel of the chat."""

    message: Parts
    channel_id: ChannelId = None
    created_at: CreatedAt = None
    context_limit: ContextLimit = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "message": [
                        {
                            "type": "text",
                            "text": "Hi, I'd like to move my",
                            "start_timestamp": 0.4,
                            "end_timestamp": 1.9,
                        },
                        {
                            "type": "text",
                            "text": "appointment to Friday.",
                            "start_timestamp": 2.0,
                            "end_timestamp": 3.1,
                        },
                    ],
                    "channel_id": "01a1fea0-8209-7d78-b20c-66e1e7961cb7",
                }
            ]
        },
    )
