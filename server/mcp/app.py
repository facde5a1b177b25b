"""chatdock's MCP server: `build_server(settings)` wires the store, the tools, the resources and the prompt.

The tools live in tools.py, the resources and the prompt in resources.py; this module only puts them
together on a `ChatdockServer` and opens the store in the server's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, GetPromptResult, InputRequiredResult
from mcp_types import Resource as MCPResource
from mcp_types import Tool as MCPTool
from pydantic import BaseModel, ValidationError

from chatdock.server.mcp import resources, tools
from chatdock.server.mcp.events import Events
from chatdock.server.mcp.org import OrgMiddleware, current_org, reading_only
from chatdock.server.mcp.resources import TRANSCRIPT_URI, contact_uri
from chatdock.server.mcp.schemas import compact
from chatdock.server.mcp.sdk import answer_in_utf8, lowlevel, serve_events
from chatdock.server.mcp.stdio import serve_stdio
from chatdock.server.ops.observe import ObservedMcp
from chatdock.server.settings import Settings
from chatdock.storage import Store, audit
from chatdock.storage import validation as check
from chatdock.storage.keys import read_only_refusal

__all__ = ["ChatdockServer", "Settings", "build_server"]

logger = logging.getLogger("chatdock.server")

F = TypeVar("F", bound=Callable[..., Any])

RECENT_CONTACTS_LISTED = 50
CLOSE_SECONDS = 30  # the most a server's end waits for its store to close, even when it is cancelled
MAX_LISTEN_STREAMS = 100_000  # for the whole process; each organization has its own bound (Settings.max_listens)

INSTRUCTIONS = (
    "chatdock keeps every contact's messages across channels. Before answering a contact, call get_context "
    "(or read chatdock://contacts/{contact_id}/transcript); store each incoming and outgoing message with "
    "append_message. Contact ids are external identifiers such as +31612345678 or an email address."
)
# a --read-only server has no tool that writes: its instructions give no write advice
READ_ONLY_INSTRUCTIONS = (
    "chatdock keeps every contact's messages across channels; this server only reads them. Before answering a "
    "contact, call get_context (or read chatdock://contacts/{contact_id}/transcript). Contact ids are external "
    "identifiers such as +31612345678 or an email address."
)


@dataclass
class _State:
    store: Store | None = None


class ChatdockServer(MCPServer[_State]):
    """An `MCPServer` whose resource listing also names the recently active contacts' transcripts,
    whose tool schemas are compacted (see `schemas.py`),
    and whose argument errors read like the store's (`limit: input should be a valid integer, got 'x'`)
    instead of pydantic's multi-line report with links; an unknown argument is an error, not ignored."""

    def __init__(self, state: _State, events: Events, **kwargs: Any) -> None:
        super().__init__(subscriptions=events, **kwargs)
        self.state = state
        self.events = events  # the listeners of both eras, and of the REST event stream (http/rest.py)
        self._compacted: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {}
        self._output_models: dict[str, type[BaseModel]] = {}
        self.tool_names: set[str] = set()  # the registered tools, the only names a metric's label may hold
        self.prompt_names: set[str] = set()  # and prompts, the only ones a span's name may hold (ops/observe.py)
        self.read_only_tools: frozenset[str] = frozenset()  # those an OAuth token with chatdock:read may call
        self.removed_tools: set[str] = set()  # the writing tools a --read-only server leaves out

    def add_tool(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().add_tool(fn, *args, **kwargs)
        name = (args[0] if args else kwargs.get("name")) or fn.__name__
        self.tool_names.add(name)
        annotations = kwargs.get("annotations")
        if annotations is not None and annotations.read_only_hint:
            self.read_only_tools |= {name}

    def add_prompt(self, prompt: Any) -> None:
        super().add_prompt(prompt)
        self.prompt_names.add(prompt.name)

    def remove_tool(self, name: str) -> None:
        super().remove_tool(name)
        self.tool_names.discard(name)
        self.read_only_tools -= {name}
        self.removed_tools.add(name)

    def structured_tool(self, output: type[BaseModel], **kwargs: Any) -> Callable[[F], F]:
        """`tool()` for a function that builds its own `CallToolResult` from an `output` model (results.py):
        the tool declares `output`'s schema, and the SDK does not validate the result again, since it was
        dumped from a model that was validated when it was built."""

        def decorator(fn: F) -> F:
            self._output_models[fn.__name__] = output
            return self.tool(**kwargs)(fn)

        return decorator

    def output_model(self, tool: str) -> type[BaseModel] | None:
        """The model a `structured_tool`'s result is dumped from."""
        return self._output_models.get(tool)

    async def run_stdio_async(self) -> None:
        await serve_stdio(lowlevel(self))

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[_State, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        if name not in self.tool_names:  # the SDK said only "Unknown tool: X": what there is, and why not
            tools = ", ".join(sorted(self.read_only_tools if reading_only.get() else self.tool_names))
            if name in self.removed_tools:
                raise ToolError(
                    f"Error executing tool {name}: this chatdock serves reading only (started with --read-only), "
                    f"so {name} is not served; the tools here are {tools}"
                )
            raise ToolError(f"Error executing tool {name}: there is no tool named {name!r}; the tools are {tools}")
        if reading_only.get() and name not in self.read_only_tools:
            audit.refused(current_org.get(), audit.acting.get(), name)
            raise ToolError(
                f"Error executing tool {name}: {read_only_refusal('this key', name)}; the tools it may call are "
                f"{', '.join(sorted(self.read_only_tools))}"
            )
        if name not in self._compacted:
            await self.list_tools()
        schemas = self._compacted.get(name)
        if schemas is not None and isinstance(arguments, dict):
            # an unknown argument is most often a misspelled one ("chatId"): say so rather than drop it
            known = list(schemas[0].get("properties", {}))
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

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Context[_State, Any] | None = None
    ) -> GetPromptResult | InputRequiredResult:
        """The SDK's, with a bad call refused as invalid params saying what to fix (the SDK's own refusals of
        a missing or unknown argument were internal errors, with no word of which)."""
        declared = {prompt.name: prompt.arguments or [] for prompt in await self.list_prompts()}
        if name not in declared:
            raise MCPError(INVALID_PARAMS, f"no prompt named {name!r}; prompts/list names them: {', '.join(declared)}")
        names = [argument.name for argument in declared[name]]
        given = arguments or {}
        missing = [argument.name for argument in declared[name] if argument.required and argument.name not in given]
        unknown = sorted(set(given) - set(names))
        if missing or unknown:
            wrong = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown argument {', '.join(map(repr, unknown))}"] if unknown else []
            )
            raise MCPError(INVALID_PARAMS, f"{name}: {'; '.join(wrong)}; it takes {', '.join(names)}")
        return await super().get_prompt(name, arguments, context)

    async def list_tools(self) -> list[MCPTool]:
        listed = await super().list_tools()
        for tool in listed:
            if tool.name not in self._compacted:
                model = self._output_models.get(tool.name)
                declared = model.model_json_schema() if model is not None else tool.output_schema
                output = None if declared is None else compact(declared)
                self._compacted[tool.name] = (compact(tool.input_schema), output)
            tool.input_schema, tool.output_schema = self._compacted[tool.name]
        if reading_only.get():  # a key that may only read is offered the tools it may call
            return [tool for tool in listed if tool.name in self.read_only_tools]
        return listed

    async def list_resources(self) -> list[MCPResource]:
        listed = await super().list_resources()
        store = self.state.store
        if store is None:
            return listed
        for contact_id in (await store.recent_contacts(current_org.get(), RECENT_CONTACTS_LISTED)).contact_ids:
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
    metrics = settings.metrics
    events = Events(settings.max_listens, None if metrics is None else metrics.told)
    # In-memory clients each enter the lifespan. The first opens the store (unless one was given) and wires it
    # to the events; the others share it, so one server object is one store; the last one out closes it.
    opening = asyncio.Lock()
    users = 0
    running: contextlib.AsyncExitStack | None = None

    @asynccontextmanager
    async def lifespan(_: MCPServer[_State]) -> AsyncIterator[_State]:
        nonlocal users, running
        async with opening:
            if users == 0:
                stack = contextlib.AsyncExitStack()
                try:
                    opened = store if store is not None else await stack.enter_async_context(settings.open_store())
                    await stack.enter_async_context(changes_to(events, opened))
                except BaseException:
                    with anyio.move_on_after(CLOSE_SECONDS, shield=True):
                        await stack.aclose()
                    raise
                state.store, running = opened, stack
            users += 1
        try:
            yield state
        finally:
            # a cancelled client still closes what it was the last to use; a client entering meanwhile waits
            with anyio.move_on_after(CLOSE_SECONDS, shield=True):
                async with opening:
                    users -= 1
                    if users == 0 and running is not None:
                        closing, running = running, None
                        if store is None:
                            state.store = None
                        await closing.aclose()

    @asynccontextmanager
    async def changes_to(events: Events, opened: Store) -> AsyncIterator[None]:
        """The store's changes to the events while the server runs: its own at commit, other processes' by
        following the store's change feed (only while someone listens)."""
        stop = opened.announce_to(events.deliver)
        try:
            async with opened.following(events.deliver, events.wanted):
                yield
        finally:
            stop()

    server = ChatdockServer(
        state,
        events,
        name="chatdock",
        title="chatdock",
        instructions=READ_ONLY_INSTRUCTIONS if settings.read_only else INSTRUCTIONS,
        version="0.1.0",
        lifespan=lifespan,
    )
    server.middleware.append(OrgMiddleware(settings.org, events.attend))
    # after OrgMiddleware: the org is known
    server.middleware.append(ObservedMcp(metrics, server.tool_names, server.prompt_names))
    if metrics is not None:
        metrics.watch_listeners(events.listening)
    answer_in_utf8()  # every server built answers in UTF-8, on every transport and era (sdk.py)
    serve_events(server, events, max_streams=MAX_LISTEN_STREAMS)

    def the_store() -> Store:
        if state.store is None:
            raise ToolError("the store is not open; restart chatdock")
        return state.store

    tools.register(server, the_store, settings.read_only)
    resources.register(server, the_store)
    return server
