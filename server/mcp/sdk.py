"""The one reach into the MCP SDK's private parts, and why.

`MCPServer` keeps its low-level `Server` in `_lowlevel_server` and offers no
public accessor. chatdock needs it for what the public API does not cover:
running the low-level server on its own stdio loop (stdio.py), which answers
request lines the SDK's transport would drop, and serving change events to
both protocol eras (`serve_events`), which also needs a request's long-lived
connection (`connection_of`). `tests/mcp/test_sdk.py` fails loudly if the SDK
renames or reshapes any of it.

The SDK writes its 2026-07-28 HTTP answers (`mcp.server._streamable_http_modern`,
a private module with no serializer option) with `json.dumps` and its default
`ensure_ascii=True`: every `é` leaves as `\\u00e9` (six bytes for two), every
emoji as a twelve-byte surrogate pair, so a result that is 3.75 MiB on stdio
and in the `initialize` era (pydantic writes UTF-8) was 11.25 MiB there, past
the 4 MiB bound on one result (docs/reference.md). `answer_in_utf8` gives that module a
`json` whose `dumps` writes text as itself, as every other path does; it checks
the module's shape first and refuses to start if it changed
(`tests/mcp/test_result_size.py` measures the bytes sent).
"""

from __future__ import annotations

import json
import re
from types import ModuleType
from typing import Any

from mcp.server.connection import Connection
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.mcpserver import MCPServer
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import ListenHandler
from mcp_types import (
    JSONRPCNotification,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    UnsubscribeRequestParams,
)


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
    listen = ListenHandler(events, max_subscriptions=max_streams)
    low.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, listen)
    events.when_closing(listen.close)  # at shut-down each stream ends with its result: a graceful close
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


# a lone surrogate (half of an emoji, which Python's json.loads lets into a string) has no UTF-8 form
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escaped(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


class _Utf8Json:
    """The `json` module as `_streamable_http_modern` uses it, with `dumps` writing non-ASCII text as itself
    (UTF-8 on the wire, as pydantic writes the other paths); a lone surrogate, which UTF-8 cannot carry, is
    still written as its `\\u` escape, as `ensure_ascii` would."""

    def __init__(self, inner: ModuleType) -> None:
        self.inner = inner

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("ensure_ascii", False)
        written: str = self.inner.dumps(obj, **kwargs)
        try:
            written.encode("utf-8")
        except UnicodeEncodeError:  # only inside a string literal: escaping it keeps the JSON what it was
            written = _SURROGATE.sub(_escaped, written)
        return written

    def __getattr__(self, name: str) -> Any:  # loads, JSONDecodeError, ...: the module's own
        return getattr(self.inner, name)


def _modern_http() -> ModuleType:
    try:
        from mcp.server import _streamable_http_modern as modern
    except ImportError as exc:
        raise RuntimeError("this version of the MCP SDK has no mcp.server._streamable_http_modern") from exc
    return modern


def answer_in_utf8() -> None:
    """Make the SDK's 2026-07-28 HTTP answers (`_write`'s JSON bodies and `_sse_event`'s frames, both through
    the module's global `json.dumps`) carry non-ASCII text as itself. Idempotent; process-wide, which is
    harmless: the JSON means exactly what it meant, only shorter. Raises RuntimeError, at start-up, when the
    module no longer writes that way, rather than let results grow past the bound unseen."""
    modern = _modern_http()
    for name in ("_write", "_sse_event"):
        code = getattr(getattr(modern, name, None), "__code__", None)
        if code is None or not {"json", "dumps"} <= set(code.co_names):
            raise RuntimeError(f"mcp.server._streamable_http_modern.{name} no longer writes with json.dumps")
    found = getattr(modern, "json", None)
    if not isinstance(found, _Utf8Json):
        if found is not json:
            raise RuntimeError("mcp.server._streamable_http_modern no longer writes its answers with the json module")
        modern.json = _Utf8Json(json)  # type: ignore[attr-defined]
    probe = modern._sse_event(JSONRPCNotification(jsonrpc="2.0", method="probe", params={"text": "\u00e9\U0001f600"}))
    if not isinstance(probe, bytes) or "\u00e9\U0001f600".encode() not in probe or b"\\u" in probe:
        raise RuntimeError("mcp.server._streamable_http_modern still escapes non-ASCII text in its answers")
