"""What real agent frameworks hand their model from `get_context`: the transcript, whichever part of a result
they read. pydantic-ai hands a result's structured content when there is any, the OpenAI Agents SDK with
`use_structured_content=True` only the structured content, by default the text; both run here against a real
`chatdock serve` over stdio, with pydantic-ai's scripted FunctionModel standing in for a model (docs/reference.md,
"What a tool result carries", says what the other clients hand theirs)."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from chatdock.server.bench.rows import realistic
from chatdock.storage import open_store
from tests.transports import stdio_params

pytestmark = pytest.mark.process  # each test starts chatdock over stdio

CONTACT = "+31612345678"


@contextmanager
def collector_paused() -> Iterator[None]:
    """CPython before 3.11.8 (gh-106905) keeps one count of depth for every AST being built: an AST built by a
    finalizer the collector runs, or by another thread it hands the lock to, in the middle of another's breaks it
    with `SystemError: AST constructor recursion depth mismatch`. fastmcp's client imports py-key-value, which
    beartype rewrites as an AST at import: seen once in CI (Python 3.11.7). No collection, no Python code in the
    middle of an AST's building, no interleaving."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


async def transcript_of(db: str) -> str:
    async with open_store(db) as store:
        await store.import_messages("acme", realistic(CONTACT, 50))
        return (await store.get_context("acme", CONTACT)).formatted


@pytest.mark.parametrize("include_messages", [False, True])
async def test_pydantic_ai_hands_its_model_the_transcript(tmp_path: Path, include_messages: bool) -> None:
    with collector_paused():
        from fastmcp.client.transports import StdioTransport
        from pydantic_ai.mcp import MCPToolset
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    db = str(tmp_path / "chatdock.db")
    transcript = await transcript_of(db)
    arguments = {"contact_id": CONTACT, "include_messages": include_messages}

    def model(messages: list[ModelMessage], _: AgentInfo) -> ModelResponse:
        if len(messages) == 1:  # the user's prompt: the model asks for the context
            return ModelResponse(parts=[ToolCallPart("get_context", arguments)])
        return ModelResponse(parts=[TextPart("Your order ships tomorrow.")])

    params = stdio_params("--db", db, "--org", "acme")
    # the frameworks' 5 s for a start and a call were seen to run out beside a busy suite: a slow machine is not
    # what these tests are about
    toolset = MCPToolset(
        StdioTransport(command=params.command, args=params.args, env=params.env), init_timeout=60, read_timeout=60
    )
    run = await Agent(FunctionModel(model), toolsets=[toolset]).run("Where is my order?")
    [returned] = [part for message in run.all_messages() for part in message.parts if isinstance(part, ToolReturnPart)]
    handed = returned.model_response_str()
    if include_messages:  # asked for the rows: pydantic-ai hands the structured content, with the transcript in it
        assert json.loads(handed)["formatted"] == transcript
    else:
        assert handed == transcript


@pytest.mark.parametrize("use_structured_content", [False, True])
async def test_the_openai_agents_sdk_hands_its_model_the_transcript(
    tmp_path: Path, use_structured_content: bool
) -> None:
    from agents import RunContextWrapper
    from agents.mcp import MCPServerStdio
    from agents.mcp.util import MCPUtil

    db = str(tmp_path / "chatdock.db")
    transcript = await transcript_of(db)
    params = stdio_params("--db", db, "--org", "acme")
    server_params: Any = {"command": params.command, "args": params.args, "env": params.env}
    async with MCPServerStdio(
        params=server_params, use_structured_content=use_structured_content, client_session_timeout_seconds=60
    ) as server:
        [tool] = [tool for tool in await server.list_tools() if tool.name == "get_context"]
        # what the SDK puts in the function call's output for the model, from the tool's result
        output = await MCPUtil.invoke_mcp_tool(
            server, tool, RunContextWrapper(None), json.dumps({"contact_id": CONTACT})
        )
    items = output if isinstance(output, list) else [output]
    assert [item.get("text") if isinstance(item, dict) else item for item in items] == [transcript]
