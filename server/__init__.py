"""chatdock's protocol surfaces and the `chatdock` command, a subpackage each (docs/development.md):

    mcp/          build_server(settings): the MCP server, its tools, resources, prompt and events; stdio
    http/         serve --http: keys and tokens, the REST routes, the inspector, beside the MCP app
    ops/          logs, metrics, request observation, tracing
    cli/          the `chatdock` command (imports the MCP stack only to serve)
    history/      export and import as JSON Lines
    bench/        chatdock bench
    settings.py   Settings, and the one door to an open store

Nothing is imported here, so `chatdock --help`, `keys`, `export` and `import` start without the MCP SDK.
"""
