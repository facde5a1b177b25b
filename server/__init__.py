"""chatdock's protocol surfaces and the `chatdock` command.

    app.py        build_server(settings): the MCP server, wired
    tools.py      the MCP tools          resources.py  the resources and the prompt
    http.py       streamable HTTP with API keys       stdio.py  the stdio loop
    cli.py        the `chatdock` command (imports the MCP stack only to serve)

Nothing is imported here, so `chatdock --help`, `keys`, `export` and `import` start without the MCP SDK.
"""
