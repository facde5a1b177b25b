"""Each write's shape is declared once (storage/requests.py): the MCP tool takes exactly the request model's
fields (its path parameters on REST first), and so does the Python client's method, in the same order. A
field added to a model and forgotten in the client fails here."""

from __future__ import annotations

import inspect

import pytest
from mcp.client import Client
from pydantic import BaseModel

from chatdock.client import ChatdockClient
from chatdock.server.mcp.app import Settings, build_server
from chatdock.storage.requests import AliasRequest, AppendRequest, OpenChatRequest, PostRequest, UpdateChatRequest

# tool: (the REST path's parameters, the body's model)
SHAPES: dict[str, tuple[tuple[str, ...], type[BaseModel]]] = {
    "append_message": ((), AppendRequest),
    "post_as_contact": (("contact_id", "chat_id"), PostRequest),
    "open_chat": (("contact_id",), OpenChatRequest),
    "update_chat": (("chat_id",), UpdateChatRequest),
    "link_contacts": (("contact_id",), AliasRequest),
}


def fields(tool: str) -> list[str]:
    path, model = SHAPES[tool]
    return [*path, *model.model_fields]


async def test_each_write_tool_takes_its_request_models_fields(db: str) -> None:
    async with Client(build_server(Settings(db=db))) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    for tool in SHAPES:
        assert list(tools[tool].input_schema["properties"]) == fields(tool), tool


@pytest.mark.parametrize("tool", list(SHAPES))
def test_the_clients_method_takes_the_same_fields(tool: str) -> None:
    parameters = inspect.signature(getattr(ChatdockClient, tool)).parameters
    taken = [name for name, p in parameters.items() if name != "self" and p.kind != inspect.Parameter.KEYWORD_ONLY]
    assert taken == fields(tool)
    assert set(parameters) - {"self", *taken} <= {"idempotency_key"}  # only the HTTP retry key besides


def test_a_tools_descriptions_are_its_models() -> None:
    for field in AppendRequest.model_fields.values():
        assert field.description, "every argument says what it is, once, where it is declared"
