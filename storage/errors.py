"""The exceptions of chatdock's store.

Every failure the store expects is one of these; anything else is a bug.
The message of each says what was wrong and how to fix it, in words fit to
show to the caller as they are::

    ChatdockError            the root: catch this to catch them all
    ├── InvalidInput         an argument breaks a rule (a bound, a pattern, a type)
    ├── NotFound             an id names nothing in this organization
    └── Conflict             the request clashes with what is stored
"""

from __future__ import annotations


class ChatdockError(Exception):
    """The root of every error the store raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(ChatdockError):
    """An argument breaks one of the contract's rules; nothing was written."""


class NotFound(ChatdockError):
    """An id names nothing in this organization (ids of other organizations included)."""


class Conflict(ChatdockError):
    """The request clashes with the stored state (for example, a key name already in use)."""
