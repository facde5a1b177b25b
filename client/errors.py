"""The one exception a `ChatdockClient` raises: the server's `{"error", "message"}` and the HTTP status."""

from __future__ import annotations

UNAVAILABLE = "Service unavailable"
NOT_OPEN = "the embedded client is not open: use `async with ChatdockClient.embedded(db=...) as client:`"
EMBEDDED_ELSEWHERE = (
    "the embedded client's store was opened in another event loop, and is that loop's (it ends with it, as at the "
    "end of an asyncio.run): call the client in the loop its `async with` runs in; from sync code, keep one loop "
    "for the client's life (an asyncio.Runner), not an asyncio.run per call"
)
CLOSED = "the client is closed (`aclose()`, or the end of its `async with`): enter it again with `async with client:`"


class ChatdockApiError(Exception):
    """A call chatdock refused or could not answer.

    `status` is the HTTP status (422 a wrong argument, 404 an unknown contact, chat or message, 409 a
    conflict, 429 too many requests, 503 chatdock or its database unavailable); `error` and `message` are the
    server's own words (`message` says what to fix). A 503 raised because chatdock could not be reached says
    in `message` whether the request may have been carried out; retrying a write with the same
    `idempotency_key` (or `metadata.provider_message_id`) is always safe.

    `idempotency_key`: for a write whose outcome is unknown (it was sent and no answer came, or chatdock
    answered 5xx: it may have been stored), the key it was sent with, the caller's or the one the client made;
    the same call again with `idempotency_key=error.idempotency_key` stores it once. None otherwise.
    """

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        retryable: bool | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self._retryable = retryable
        self.idempotency_key = idempotency_key

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later (chatdock busy, unreachable or its database away): a 429,
        502, 503 or 504, but for a 502 that says something other than chatdock answers at the address, and a
        503 of a client not open or closed (its owner must enter it: a retry alone gets the same answer)."""
        return self.status in (429, 502, 503, 504) if self._retryable is None else self._retryable
