"""The resources (a contact's transcript and context) and the `continue_conversation` prompt."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS

from chatdock.server.mcp.org import current_org
from chatdock.server.mcp.results import transcript_text
from chatdock.server.ops.observe import note_failure
from chatdock.storage import ChatdockError, InvalidInput, NotFound, Store, Unavailable
from chatdock.storage import Context as ContextModel
from chatdock.storage import validation as check
from chatdock.storage.requests import AgentFilter, ContactId

TRANSCRIPT_URI = "chatdock://contacts/{contact_id}/transcript"
CONTEXT_URI = "chatdock://contacts/{contact_id}/context"
CONTACT_URIS = (TRANSCRIPT_URI, CONTEXT_URI)
MAX_URI_CHARS = 4_096  # a contact id of 256 characters, each percent-encoded (12 for 4 UTF-8 bytes), in a URI
MAX_SPELLED_URI_CHARS = 16_384  # as a client spelled it: NFD spells a character in up to 4, each up to 12 encoded


def contact_uri(template: str, contact_id: str) -> str:
    """A contact's resource URI, its id percent-encoded (`+31...` becomes `%2B31...`)."""
    return template.replace("{contact_id}", quote(contact_id, safe=""))


def _parsed(uri: str) -> tuple[str, str] | None:
    """The template and the contact id (decoded, NFC) of a contact's resource URI, however a client spelled
    it; None for any other URI."""
    for template in CONTACT_URIS:
        head, tail = template.split("{contact_id}")
        if uri.startswith(head) and uri.endswith(tail) and len(uri) > len(head) + len(tail):
            return template, unicodedata.normalize("NFC", unquote(uri[len(head) : -len(tail)]))
    return None


def canonical_uri(uri: str) -> str:
    """The one spelling of a contact's resource URI, however a client wrote it (either case of
    percent-encoding, an unencoded `+`, any Unicode normalization form): what reading accepts, listening
    accepts too. Other URIs are left as they are."""
    found = _parsed(uri)
    return uri if found is None else contact_uri(*found)


def followed_uri(uri: str) -> str:
    """The one spelling (`canonical_uri`) of a URI a listener may follow: a contact's transcript or context, its
    id a valid contact id. Anything else is refused (an MCPError that says what to follow): a listener's URIs
    are kept while it listens, so none may be another service's, or megabytes long."""
    shown = repr(uri[:100] + ("..." if len(uri) > 100 else ""))
    found = _parsed(uri) if len(uri) <= MAX_SPELLED_URI_CHARS else None
    if found is not None and len(canonical := contact_uri(*found)) <= MAX_URI_CHARS:
        try:
            check.contact_id(found[1])
        except InvalidInput as exc:
            raise MCPError(INVALID_PARAMS, f"cannot follow {shown}: {exc.message}") from None
        return canonical
    raise MCPError(
        INVALID_PARAMS,
        f"chatdock has no resource {shown} to follow; follow {TRANSCRIPT_URI} or {CONTEXT_URI} "
        f"(the contact id percent-encoded, at most {MAX_URI_CHARS} characters in all)",
    )


def register(server: MCPServer[Any], the_store: Callable[[], Store]) -> None:
    """Add the two resource templates and the prompt to `server`."""

    async def read_context(contact_id: str) -> ContextModel:
        try:
            return await the_store().get_context(current_org.get(), contact_id)
        except (InvalidInput, NotFound) as exc:  # the caller's to fix: invalid params, as for a tool's argument
            raise MCPError(INVALID_PARAMS, str(exc)) from None
        except ChatdockError as exc:  # the server's (the database): an internal error, its words said
            note_failure(exc)  # counted `unavailable`, as a tool's (the server-error alert's)
            raise ResourceError(str(exc)) from None

    @server.resource(
        TRANSCRIPT_URI,
        name="transcript",
        title="Contact transcript",
        description="The contact's last 50 messages as an LLM-ready transcript (ROLE: content per line).",
        mime_type="text/plain",
    )
    async def transcript(contact_id: str) -> str:
        return transcript_text(await read_context(contact_id))  # as get_context's text: "(no messages yet)" too

    @server.resource(
        CONTEXT_URI,
        name="context",
        title="Contact context",
        description="What get_context returns with include_messages (the messages and the transcript), as JSON.",
        mime_type="application/json",
    )
    async def context(contact_id: str) -> str:
        return (await read_context(contact_id)).model_dump_json()

    @server.prompt(title="Continue conversation")
    async def continue_conversation(contact_id: ContactId, agent_id: AgentFilter = None) -> list[UserMessage]:
        """Hand the model a contact's conversation so far, to continue it."""
        try:
            found = await the_store().get_context(current_org.get(), contact_id, agent_id=agent_id)
        except ChatdockError as exc:  # the SDK passes an MCPError's text on; any other error becomes "internal"
            note_failure(exc)  # the database's: counted `unavailable`, as a resource's (a review)
            code = INTERNAL_ERROR if isinstance(exc, Unavailable) else INVALID_PARAMS
            raise MCPError(code=code, message=str(exc)) from None
        history = transcript_text(found)
        return [
            UserMessage(
                f"Here is the conversation so far with contact {found.contact_id}, oldest first:\n\n{history}\n\n"
                "Continue it: write the next reply to the contact."
            )
        ]
