"""The exceptions of chatdock's store.

Every failure the store expects is one of these; anything else is a bug.
The message of each says what was wrong and how to fix it, in words fit to
show to the caller as they are::

    ChatdockError            the root: catch this to catch them all
    ├── InvalidInput         an argument breaks a rule (a bound, a pattern, a type)
    ├── NotFound             an id names nothing in this organization
    ├── Conflict             the request clashes with what is stored
    └── Unavailable          the database cannot do it now: the disk is full, the file is read-only
        │                    or damaged, or it cannot be opened; the text names the cause and the fix
        └── OutcomeUnknown   the connection broke after a write was sent: it may or may not be stored;
                             the text says that retrying with the same provider id or key is safe
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Message
    from .records import MessageRecord


UNREADABLE_URL = "cannot read the PostgreSQL URL in --db (or CHATDOCK_DB)"  # the start of each refusal of one


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


class Unavailable(ChatdockError):
    """The database failed the request (full disk, read-only or damaged file, cannot be opened); nothing of
    the request was written, and what was written before is kept."""


class OutcomeUnknown(Unavailable):
    """The connection to the database broke after the write was sent and before its answer came back: the
    write may or may not have been stored. Unlike the other errors, something may have been written."""


class StoredUnanswered(Unavailable):
    """The write was stored, and what its answer carries besides (the context after it, its chat) could not be
    read: said so, never "nothing was written" (found by an operator's review, PostgreSQL's connections killed
    under load: 10 of 33 posts so answered were stored, and a caller sending them again stored them twice)."""


def stored_unanswered(message_id: str, what: str, exc: ChatdockError, instead: str) -> StoredUnanswered:
    """`what` of the answer to the write that stored `message_id` could not be read, for `exc`; `instead`: how
    to read it on its own."""
    return StoredUnanswered(
        f"the message was stored (id {message_id}), but {what} could not be read for the answer: {exc}; do not "
        f"send it again ({instead}); a retry with the same Idempotency-Key header or metadata.provider_message_id "
        "stores nothing twice and answers in full"
    )


# The texts of the errors that more than one place raises, written once.

# The REST server's 404 for a path it has no route at, as chatdock's client recognizes it (a base URL with a
# path it should not have, such as /api): not an unknown contact, chat or message.
NO_ROUTE = "no such route; /docs lists them"


def chat_not_found(chat_id: str, contact_id: str | None = None) -> NotFound:
    if contact_id is None:
        return NotFound(f"chat {chat_id} not found; list_chats shows a contact's chats")
    return NotFound(
        f"chat {chat_id} not found for contact {contact_id}; list the contact's chats with list_chats, or start "
        "one with open_chat"
    )


def message_not_found(message_id: str) -> NotFound:
    return NotFound(f"message {message_id} not found; list_messages shows the ids of a contact's messages")


def message_id_taken(message_id: str) -> Conflict:
    return Conflict(f"message id {message_id} is already used in another organization; leave id out to get a new one")


def provider_id_taken(record: MessageRecord, stored: Message) -> Conflict:
    """An imported message whose channel and provider id another message (another text, or another contact's)
    already has."""
    return Conflict(
        f"metadata.provider_message_id {record.provider_message_id!r} on channel {stored.channel!r} is already "
        f"another message's (id {stored.id}, of contact {stored.contact_id}): a message is stored once "
        "per channel and provider id; give this one its own provider_message_id (or leave it out) to import it"
    )


def chat_id_taken(chat_id: str) -> Conflict:
    return Conflict(f"chat id {chat_id} is already used by another contact or organization")


def key_name_taken(org: str, name: str | None) -> Conflict:
    return Conflict(
        f"organization {org!r} already has a live key named {name!r}; choose another name or revoke that key"
    )


def key_name_ambiguous(name: str, orgs: list[str]) -> InvalidInput:
    named = ", ".join(repr(org) for org in orgs)
    return InvalidInput(
        f"live keys of {len(orgs)} organizations ({named}) are named {name!r}; say which with the organization "
        f"(chatdock keys revoke --org ORG {name})"
    )


def no_live_key(prefix_or_name: str, org: str | None = None) -> NotFound:
    of = "" if org is None else f" of organization {org!r}"
    return NotFound(f"no live key{of} has the prefix or name {prefix_or_name!r}; `chatdock keys list` shows them")


def contact_not_found(contact_id: str) -> NotFound:
    return NotFound(
        f"contact {contact_id} not found; a contact exists once it has a message, a chat or a linked identifier"
    )


def identifier_not_found(identifier: str, of: str | None = None) -> NotFound:
    """An unlink of an identifier that names no contact, or (`of`) not that contact (the identifier itself, as
    the Python client names the contact: its own contact)."""
    where = "any contact" if of in (None, identifier) else f"the contact {of}"
    return NotFound(f"identifier {identifier} is not linked to {where}; get_contact lists a contact's aliases")


def own_identifier(identifier: str) -> InvalidInput:
    return InvalidInput(
        f"{identifier} is the contact's own contact_id and cannot be unlinked; unlink one of its aliases, or "
        "forget the contact"
    )


def outcome_unknown(place: str, reason: str, waited: float | None = None) -> OutcomeUnknown:
    """`waited`: the write was sent and its answer did not come within that many seconds (the connection may
    be sound: a lock held elsewhere, a busy server); else the connection broke, for `reason`."""
    what = (
        f"the connection to {place} broke after the write was sent ({reason})"
        if waited is None
        else f"{place} did not answer the write within {waited:g} s (--db-timeout; a lock held elsewhere, or a "
        "busy server)"
    )
    return OutcomeUnknown(
        f"{what}, so whether it was stored is unknown; retrying is safe with the same "
        "metadata.provider_message_id (or, over REST, the same Idempotency-Key header): a copy already stored "
        "comes back instead of a second one"
    )


def key_used_elsewhere(key: str) -> Conflict:
    return Conflict(
        f"Idempotency-Key {key!r} was first sent with another request; a retry must repeat the request exactly, "
        "and a new request needs a new key"
    )
