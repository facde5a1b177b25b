"""The one private part of the MCP SDK chatdock uses (server/sdk.py): this fails loudly if the SDK changes it."""

from __future__ import annotations

import inspect

from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer

from chatdock.server.app import Settings, build_server
from chatdock.server.sdk import lowlevel


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
