"""The one private part of the MCP SDK chatdock uses (server/mcp/sdk.py): this fails loudly if the SDK changes it."""

from __future__ import annotations

import inspect
import warnings

from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPDeprecationWarning

from chatdock.server.mcp.app import Settings, build_server
from chatdock.server.mcp.sdk import lowlevel


def test_mcpserver_still_keeps_its_lowlevel_server_where_chatdock_reaches_for_it() -> None:
    found = lowlevel(MCPServer(name="probe"))
    assert isinstance(found, Server)
    # what the stdio loop calls on it, with the arguments it passes
    assert list(inspect.signature(found.run).parameters)[:3] == [
        "read_stream",
        "write_stream",
        "initialization_options",
    ]
    assert callable(found.create_initialization_options)


def test_chatdock_server_runs_on_that_lowlevel_server() -> None:
    server = build_server(Settings())
    assert lowlevel(server).name == "chatdock"


async def test_the_sdk_still_keeps_a_requests_connection_where_chatdock_reaches_for_it() -> None:
    """`connection_of` (legacy resource subscriptions) needs the connection behind a handler's session."""
    from mcp.client import Client
    from mcp.server.connection import Connection
    from mcp.server.context import ServerRequestContext
    from mcp_types import EmptyResult, SubscribeRequestParams

    from chatdock.server.mcp.sdk import connection_of

    server = MCPServer(name="probe")
    found: list[object] = []

    async def subscribe(ctx: ServerRequestContext[object, object], params: SubscribeRequestParams) -> EmptyResult:
        found.append(connection_of(ctx.session))
        return EmptyResult()

    lowlevel(server).add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    async with Client(server, mode="legacy") as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await client.subscribe_resource("probe://x")
            await client.subscribe_resource("probe://y")
    assert len(found) == 2 and isinstance(found[0], Connection) and found[0] is found[1]  # one per client


def test_chatdock_serves_both_eras_events_through_the_lowlevel_server() -> None:
    low = lowlevel(build_server(Settings()))
    for method in ("resources/subscribe", "resources/unsubscribe", "subscriptions/listen"):
        assert low.get_request_handler(method) is not None, method
    capabilities = low.create_initialization_options().capabilities.resources
    assert capabilities is not None and capabilities.subscribe is True and capabilities.list_changed is True
