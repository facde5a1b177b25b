"""History as JSON Lines: one chat, alias or message per line, every field, the organization on each line.

An export writes the chats first, then the aliases, then the messages, each
in the order they were stored, so an import meets a chat before the messages
that name it, and a contact's aliases before messages sent under them.

    {"kind": "chat", "org": "default", "id": "...", "contact_id": "+3161...", "status": "COMPLETED",
     "channels": [{"id": "...", "name": "voice", "kind": "custom"}], "created_at": "...", ...}
    {"kind": "alias", "org": "default", "contact_id": "+3161...", "identifier": "ann@example.com", "created_at": "..."}
    {"kind": "message", "org": "default", "id": "...", "contact_id": "+3161...", "channel": "voice",
     "role": "user", "content": "...", "parts": [...], "metadata": {}, "created_at": "...", ...}

A hand-written line needs less: `kind` defaults to "message", `org` to the
importing organization, and a message without `id` gets one derived from its
content, so importing the same file twice still stores it once. `created_at`
is required: history keeps its own time.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

from pydantic import ValidationError

from . import validation as check
from .errors import InvalidInput, chat_id_taken, message_id_taken
from .models import Alias, Chat, Message, NewAlias, NewChat, NewMessage
from .store import Store, prepare

# Ids of messages imported without one: uuid5 of the line's content in this namespace.
HISTORY_NAMESPACE = uuid.UUID("6f0c2a4e-2b1d-5c8e-9a47-3d5e1f0b7c21")

Record = NewChat | NewAlias | NewMessage

# A record that no database could take is refused by its own checks, the same ones an import applies.
check_record = prepare


def dump_line(org: str, item: Chat | Alias | Message) -> str:
    """One exported line (no trailing newline)."""
    kind = "chat" if isinstance(item, Chat) else "alias" if isinstance(item, Alias) else "message"
    body = {"kind": kind, "org": org, **item.model_dump(mode="json")}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _message(fields: dict[str, Any], org: str) -> NewMessage:
    if "created_at" not in fields:
        raise InvalidInput(
            "created_at is missing; a history line keeps its original time, like '2026-11-21T09:30:00.000000Z'"
        )
    if fields.get("parts") is not None and fields.get("content") is not None:
        # an exported message carries both; the parts are the source, the content must agree with them
        content = fields.pop("content")
        parts = fields["parts"]
        if isinstance(parts, list) and all(isinstance(p, dict) for p in parts):
            joined = " ".join(str(p.get("text", "")) for p in parts)
            if content != joined:
                raise InvalidInput("content differs from its parts' texts joined by a space; give one of them")
    if fields.get("id") is None:
        fields.pop("id", None)
        canonical = json.dumps([org, fields], sort_keys=True, ensure_ascii=False)
        check.whole_characters(canonical, "the line")  # the id is made of its UTF-8 (and so would the message)
        fields["id"] = str(uuid.uuid5(HISTORY_NAMESPACE, canonical))
    return NewMessage.model_validate(fields)


def parse_line(text: str, default_org: str) -> tuple[str, Record]:
    """The organization and record of one line; InvalidInput says what is wrong with it. A message without an
    id gets one derived from the line and the organization it names."""
    try:
        return _record(text, default_org)
    except RecursionError:  # arrays in arrays, thousands deep: more than reading (or the id's text) can nest
        raise InvalidInput("nested too deeply to read; a record's values nest a few levels, not hundreds") from None


def _record(text: str, default_org: str) -> tuple[str, Record]:
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        said = exc.msg.removesuffix(" at")  # "Unterminated string starting at": at the column that follows
        raise InvalidInput(f"not valid JSON: {said} at column {exc.colno}") from None
    except ValueError:  # the only other one json raises: an integer longer than Python converts
        raise InvalidInput(
            f"a number has more than {sys.get_int_max_str_digits():,} digits; no field takes one that long"
        ) from None
    if not isinstance(fields, dict):
        raise InvalidInput(f"a line must be a JSON object, got {type(fields).__name__}")
    kind = fields.pop("kind", "message")
    org = fields.pop("org", None)
    org = default_org if org is None else check.identifier(org, "org")
    fields.pop("deduplicated", None)
    try:
        if kind == "message":
            return org, _message(fields, org)
        if kind == "chat":
            return org, NewChat.model_validate(fields)
        if kind == "alias":
            return org, NewAlias.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInput(check.explain(exc)) from None
    raise InvalidInput(f"kind must be 'message', 'chat' or 'alias', got {kind!r}")


async def conflicts(
    store: Store,
    org: str,
    records: list[Record],
    chats_in_file: dict[str, tuple[str, str]],
    aliases_in_file: dict[tuple[str, str], str],
) -> dict[int, str]:
    """What the database would refuse in these (checked) records, by index: ids taken elsewhere, unknown chats.

    `chats_in_file` maps the chat ids the same import brings in (earlier records) to their
    (organization, contact), `aliases_in_file` those of its aliases on earlier lines ((organization, identifier))
    to their contact (those of these records are added as they are met). A
    record may name its contact by any identifier, in any spelling, as the store takes it: by an alias in the
    database or earlier in the file, or as an identifier merged into another contact since an export.
    """

    async def contact(identifier: str) -> str:
        named = check.contact_id(identifier)
        return await store.contact_id_of(org, aliases_in_file.get((org, named), named))

    async def same_contact(owner: tuple[str, str], identifier: str) -> bool:
        return owner[0] == org and (owner[1] == identifier or await contact(owner[1]) == await contact(identifier))

    message_ids = sorted({check.uuid_text(r.id, "id") for r in records if isinstance(r, NewMessage) and r.id})
    chat_ids = {check.uuid_text(r.id, "id") for r in records if isinstance(r, NewChat)}
    chat_ids |= {check.uuid_text(r.chat_id, "chat_id") for r in records if isinstance(r, NewMessage) and r.chat_id}
    taken = await store.message_orgs(message_ids)
    owners = await store.chat_owners(sorted(chat_ids))
    problems: dict[int, str] = {}
    for index, record in enumerate(records):
        if isinstance(record, NewAlias):  # linking an alias merges what it names: nothing to refuse; the lines
            named = check.contact_id(record.contact_id)  # after it may name its contact by it
            aliases_in_file[(org, check.identifier(record.identifier, "identifier"))] = named
            continue
        if isinstance(record, NewChat):
            chat_id = check.uuid_text(record.id, "id")
            owner = owners.get(chat_id)
            if owner is not None and not await same_contact(owner, record.contact_id):
                problems[index] = str(chat_id_taken(chat_id))
            continue
        if record.id is not None and taken.get(check.uuid_text(record.id, "id"), org) != org:
            problems[index] = str(message_id_taken(record.id))
        elif record.chat_id is not None:
            chat_id = check.uuid_text(record.chat_id, "chat_id")
            owner = owners.get(chat_id)
            known = chats_in_file.get(chat_id) or owner
            if known is None:
                problems[index] = (
                    f"chat {chat_id} is neither in the database nor on an earlier line; "
                    "put the chat's line before its messages"
                )
            elif not await same_contact(known, record.contact_id):
                problems[index] = f"chat {chat_id} is not a chat of contact {record.contact_id}"
    return problems
