"""The one reach into the MCP SDK's private parts, and why.

`MCPServer` keeps its low-level `Server` in `_lowlevel_server` and offers no
public accessor. chatdock needs it for one thing the public API does not
cover: running the low-level server on its own stdio loop (stdio.py), which
answers request lines the SDK's transport would drop. `tests/test_sdk.py`
fails loudly if the SDK renames or reshapes it.
"""

from __future__ import annotations

from typing import Any

from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer


def lowlevel(server: MCPServer[Any]) -> Server[Any]:
    """The low-level server behind an `MCPServer`."""
    found = getattr(server, "_lowlevel_server", None)
    if not isinstance(found, Server):
        raise RuntimeError("this version of the MCP SDK keeps no low-level Server in MCPServer._lowlevel_server")
    return found
