"""`CutOff`: what a request gets when the server's shut-down cuts it off.

After SIGTERM uvicorn gives open requests a grace period (`HttpLimits.shutdown_seconds`), then cancels those still
running and answers each whose answer had not begun with a bare `500 Internal Server Error` in plain text: a
webhook handler read it as chatdock failing (the client as something else answering, with the wrong advice),
while the write it carried, already handed to the database, was stored. Such a request gets a JSON 503 instead
that says the outcome is unknown and how to send it again safely, and the connection is closed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from chatdock.server.ops.observe import Noted

CUT_OFF = (
    "the server is shutting down (a restart, a deploy) and cut this request off before it finished: whether a "
    "write it carried was stored is unknown; send it again (to this server once it is back, or to another "
    "replica) with the same Idempotency-Key or metadata.provider_message_id, which stores it once"
)
# ... and a read's (GET, HEAD), which carries no write
READ_CUT_OFF = (
    "the server is shutting down (a restart, a deploy) and cut this read off before it finished; send it again "
    "(to this server once it is back, or to another replica)"
)


class CutOff:
    """ASGI, outermost: a request cancelled while the server shuts down (`closing()`), before its answer began,
    is answered with a JSON 503 (`Retry-After`, `Connection: close`) instead of uvicorn's bare text 500."""

    def __init__(self, app: ASGIApp, closing: Callable[[], bool]) -> None:
        self.app = app
        self.closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        noted = Noted(send)
        try:
            await self.app(scope, receive, noted)
        except asyncio.CancelledError:
            if noted.status is not None or not self.closing():  # an answer begun is ended by uvicorn
                raise
            said = READ_CUT_OFF if scope.get("method") in ("GET", "HEAD") else CUT_OFF
            body = json.dumps({"error": "Service unavailable", "message": said}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            # the task ends here, answered: uvicorn cancelled it to close the connection, which it now does
