"""MCP: the server, its tools, resources and prompt, change events, the SDK seam, stdio."""
