"""chatdock's MCP server: `build_server(settings)` and the `chatdock` command."""

from .app import Settings, build_server

__all__ = ["Settings", "build_server"]
