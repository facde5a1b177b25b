"""The one reach into the MCP SDK's private parts, and why.

`MCPServer` keeps its low-level `Server` in `_lowlevel_server` and offers no
public accessor. chatdock needs it for what the public API does not cover:
running the low-level server on its own stdio loop (stdio.py), which answers
request lines the SDK's transport would drop, and serving change events to
both protocol eras (`serve_events`), which also needs a request's long-lived
connection (`connection_of`). `tests/test_sdk.py` fails loudly if the SDK
renames or reshapes any of it.
"""

from __future__ import annotations

from typing import Any

from mcp.server.connection import Connection
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.mcpserver import MCPServer
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import ListenHandler
from mcp_types import SubscribeRequestParams, SubscriptionsListenRequestParams, UnsubscribeRequestParams


def lowlevel(server: MCPServer[Any]) -> Server[Any]:
    """The low-level server behind an `MCPServer`."""
    found = getattr(server, "_lowlevel_server", None)
    if not isinstance(found, Server):
        raise RuntimeError("this version of the MCP SDK keeps no low-level Server in MCPServer._lowlevel_server")
    return found


def serve_events(server: MCPServer[Any], events: Any, max_streams: int) -> None:
    """Serve change events to both protocol eras on `server`'s low-level server (public `add_request_handler`):

    - `resources/subscribe` and `resources/unsubscribe` for `initialize`-era clients: `MCPServer` has no
      hook for them, and the SDK's docs point at the low-level server for it. With the handler present,
      the SDK advertises `resources.subscribe: true` to those clients;
    - `subscriptions/listen` with a process-wide stream limit of `max_streams` (the SDK's default, 1,024,
      would let one organization lock every other out; chatdock bounds streams per organization itself);
    - `resources.listChanged: true` in the capabilities the `initialize` era reads (the low-level server
      derives it from options that `MCPServer` never passes).
    """
    low = lowlevel(server)
    low.add_request_handler("resources/subscribe", SubscribeRequestParams, events.on_subscribe)
    low.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, events.on_unsubscribe)
    low.add_request_handler(
        "subscriptions/listen", SubscriptionsListenRequestParams, ListenHandler(events, max_subscriptions=max_streams)
    )
    derive = low.create_initialization_options

    def with_list_changes(
        notification_options: NotificationOptions | None = None, *args: Any, **kwargs: Any
    ) -> InitializationOptions:
        options = notification_options or NotificationOptions(resources_changed=True)
        return derive(options, *args, **kwargs)

    low.create_initialization_options = with_list_changes  # type: ignore[method-assign]


def connection_of(session: Any) -> Connection:
    """The connection behind a request's `ServerSession`: it lives as long as the client's session does, while
    the `ServerSession` handed to a handler lives only for that request, and it is what sends
    `notifications/resources/updated` later. The SDK keeps it in `ServerSession._connection` with no public
    accessor (its `Context.connection` is public, but handlers of the low-level server are not given one)."""
    found = getattr(session, "_connection", None)
    if not isinstance(found, Connection):
        raise RuntimeError("this version of the MCP SDK keeps no Connection in ServerSession._connection")
    return found
