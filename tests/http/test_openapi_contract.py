"""/openapi.json is as strict as the server: a request that fits it is accepted (but for the rules JSON Schema
cannot state, each named in the document's descriptions), a request that does not is refused, every answer's
status and body is the documented one, and a method a path does not take gets 405 with `Allow`."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from chatdock.server.http.rest import build_rest
from chatdock.server.mcp.events import Events
from chatdock.storage import InvalidInput
from chatdock.storage import validation as check
from chatdock.storage.search import parse_query
from tests.npm import node
from tests.transports import create_key, http_server

# What a schema-valid request may still be refused for: the rules the document states only in words, since
# JSON Schema has no way to say them (a bound on the server's clock, one field against another, a token
# only the server writes).
PROSE_ONLY = (
    "more than a day ahead",
    "1970-01-01T00:00:00Z or later",
    "end_timestamp",
    "cursor is not valid",
    "own contact_id and cannot be unlinked",
    "query needs at least one word to find",  # the search query's rules (its description says them)
    "that is not closed; close the phrase",
    "words and phrases, got",
    "to find the word itself, quote it",  # OR, AND, NOT and their marks, refused (the query's description)
    "it has U+E",  # an id's invisible characters beyond the BMP, which the pattern leaves to the server
    "it has U+1",
)


@cache
def built() -> dict[str, Any]:
    """The document as the REST app writes it (no store is needed for that)."""
    return build_rest(lambda: None, read_only=False, events=Events()).openapi()  # type: ignore[arg-type,return-value]


@pytest.fixture
def document() -> dict[str, Any]:
    return built()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def parameter(operation: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any]
    [found] = [p["schema"] for p in operation.get("parameters", []) if p["name"] == name]
    return found


def resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return dict(document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]])
    return schema


def field(document: dict[str, Any], model: str, name: str) -> dict[str, Any]:
    schema = document["components"]["schemas"][model]["properties"][name]
    return next((branch for branch in schema.get("anyOf", []) if branch != {"type": "null"}), schema)


UUID_FIELDS = [
    ("Message", "id"),
    ("Message", "chat_id"),
    ("Chat", "id"),
    ("ChannelRef", "id"),
    ("AppendRequest", "chat_id"),
    ("PostRequest", "channel_id"),
    ("DeletedMessage", "id"),
]


def test_ids_are_uuids_and_times_are_date_times(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert parameter(paths["/chats/{message_id}"]["delete"], "message_id")["format"] == "uuid"
    assert parameter(paths["/contacts/{contact_id}/chats/{chat_id}"]["patch"], "chat_id")["format"] == "uuid"
    assert parameter(paths["/chats"]["get"], "chat_id")["format"] == "uuid"
    for model, name in UUID_FIELDS:
        assert field(document, model, name)["format"] == "uuid", (model, name)
    for model, name in [("Message", "created_at"), ("Chat", "created_at"), ("Chat", "updated_at"),
                        ("ContactInfo", "last_active_at"), ("AppendRequest", "created_at")]:  # fmt: skip
        assert field(document, model, name)["format"] == "date-time", (model, name)


def test_every_bound_the_store_checks_is_stated(document: dict[str, Any]) -> None:
    limits = [parameter(op, "limit") for _, _, op in operations(document) if "limit" in str(op.get("parameters"))]
    assert len(limits) == 5 and all((s["minimum"], s["maximum"]) == (1, 200) for s in limits), limits
    search = document["paths"]["/chats/search"]["get"]
    assert parameter(search, "q")["minLength"] == 1 and parameter(search, "role")["enum"] == list(check_roles())
    assert field(document, "UpdateChatRequest", "status")["enum"] == ["RUNNING", "COMPLETED", "FAILED", "CANCELED"]
    assert field(document, "AppendRequest", "channel")["pattern"] == "^[a-z0-9][a-z0-9_.:-]{0,63}$"
    assert field(document, "AppendRequest", "content")["maxLength"] == check.MAX_TEXT_CHARS
    assert document["components"]["schemas"]["PostRequest"]["properties"]["message"]["maxItems"] == check.MAX_PARTS
    for path, _, operation in operations(document):
        for p in operation.get("parameters", []):
            if p["name"] in ("contact_id", "agent_id", "identifier"):
                assert (p["schema"]["minLength"], p["schema"]["maxLength"]) == (1, 256), (path, p)


def check_roles() -> tuple[str, ...]:
    from chatdock.storage.models import ROLES

    return ROLES


def test_every_answer_is_documented_with_its_body(document: dict[str, Any]) -> None:
    error = {"$ref": "#/components/schemas/Error"}
    assert document["components"]["schemas"]["Error"]["required"] == ["error", "message"]
    for path, method, operation in operations(document):
        answers = operation["responses"]
        assert {"401", "422", "429", "503"} <= set(answers), (method, path)
        assert "Retry-After" in answers["429"]["headers"]
        for status, answer in answers.items():
            if path.endswith("/events") and status == "200":  # a stream of server-sent events, not one body
                assert answer["content"]["text/event-stream"]["schema"]["required"] == ["event", "data"]
                continue
            if path.endswith("/export") and status == "200":  # JSON Lines: one record a line
                assert answer["content"]["application/x-ndjson"]["schema"]["required"] == ["kind", "org"]
                continue
            schema = answer["content"]["application/json"]["schema"]
            assert schema == error if int(status) >= 400 else schema.get("$ref"), (method, path, status)
        if "requestBody" in operation:
            assert {"400", "413"} <= set(answers), (method, path)
    deduplicated = document["paths"]["/chats"]["post"]["responses"]["200"]
    assert deduplicated["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/AppendedMessage"}


def matches(pattern: str, value: str) -> bool:
    """Whether `value` fits a JSON Schema `pattern` as ECMA-262 reads it: its `$` is the end of the text (in
    Python's reading it also matches before a last line break)."""
    return re.search(pattern.removesuffix("$") + "\\Z" if pattern.endswith("$") else pattern, value) is not None


def _accepted(value: str) -> bool:
    try:
        check.identifier(value, "contact_id")
    except InvalidInput:
        return False
    return True


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.text(min_size=0, max_size=12) | st.sampled_from([" a", "a ", "a b", "a\u200bb", "\u3164", "Zoë", "."]))
@example("a\n")  # JSON Schema's `$` is the end of the text
def test_the_identifier_pattern_is_the_stores_rule(value: str) -> None:
    schema = field(built(), "AppendRequest", "contact_id")
    fits = matches(schema["pattern"], value) and 1 <= len(value) <= schema["maxLength"]
    # but for the few invisible characters beyond the Basic Multilingual Plane, which the pattern leaves to the
    # server (a JavaScript RegExp without the u flag cannot hold them in a class): never stricter than it
    beyond = any(ord(char) > 0xFFFF for char in value)
    assert fits == _accepted(value) or (beyond and fits), value


def test_every_pattern_compiles_as_javascript_reads_it_with_and_without_the_u_flag(tmp_path: Any) -> None:
    """A generated client (openapi-typescript's validators, zod) makes `new RegExp(pattern)`, often without the u
    flag: a code point beyond the Basic Multilingual Plane inside a class threw "Range out of order in character
    class" as the client loaded (found by a back-end developer's review)."""
    patterns: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                patterns.append(node["pattern"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(built())
    assert len(patterns) >= 5
    script = tmp_path / "patterns.mjs"
    script.write_text(
        "const patterns = JSON.parse(process.argv[2]);\n"
        "for (const p of patterns) for (const flags of ['', 'u']) new RegExp(p, flags);\n"
        "const id = new RegExp(process.argv[3]);  // without the u flag, as such a client makes it\n"
        "console.log(JSON.stringify([id.test('+31612345678'), id.test('a\\u200bb'), id.test(' a')]));\n"
    )
    identifier = field(built(), "AppendRequest", "contact_id")["pattern"]
    assert identifier in patterns
    done = subprocess.run(
        [node(), str(script), json.dumps(patterns), identifier], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [True, False, False]  # a zero-width space, a space at the start: refused


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(
    st.text(min_size=1, max_size=20)
    | st.sampled_from(['"order 1234"', "order -refund", "refund  order", 'ab"c', "a\u00a0b", "a\u200bb", " x "])
)
@example("a\n")
def test_the_query_pattern_takes_every_query_the_server_reads(query: str) -> None:
    """Never stricter than the server (a generated client that checks it must still send phrases and
    exclusions); what it lets through and the server refuses, the server refuses for a rule in its description."""
    schema = parameter(built()["paths"]["/chats/search"]["get"], "q")
    fits = matches(schema["pattern"], query) and len(query) <= schema["maxLength"]
    try:
        parse_query(query)
    except InvalidInput as refused:
        assert not fits or any(rule in refused.message for rule in PROSE_ONLY), (query, refused.message)
    else:
        assert fits, query


# --- against a real `chatdock serve --http`, on each engine ---


@pytest.fixture
def served(db: str) -> Iterator[tuple[str, str]]:
    key = create_key(db, "acme", "acme")
    with http_server(db) as base:
        yield base, key


def request(base: str, key: str, method: str, path: str) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    sent = urllib.request.Request(base + path, b"{}" if method in ("POST", "PUT", "PATCH") else None, headers)
    sent.method = method
    try:
        with urllib.request.urlopen(sent, timeout=30) as response:
            return response.status, _lower(response.headers.items()), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as failed:
        return failed.code, _lower(failed.headers.items()), json.loads(failed.read() or b"null")


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


def test_a_method_a_path_does_not_take_gets_405_with_allow(served: tuple[str, str]) -> None:
    base, key = served
    document = json.loads(urllib.request.urlopen(base + "/openapi.json", timeout=10).read())
    templates = {path: {m.upper() for m in methods} for path, methods in document["paths"].items()}
    uuid = "0192f0c4-7d3e-7b1a-9c4e-2f1d3a5b6c7d"
    for template in templates:
        path = re.sub(r"\{(message_id|chat_id)\}", uuid, template)
        path = re.sub(r"\{[a-z_]+\}", urllib.parse.quote("+31 6", safe=""), path)
        # the methods of every template that names this path; a path without parameters is its route's alone
        # (/chats/context would also fit /chats/{message_id}, whose DELETE it does not take)
        expected = templates.get(path) or set().union(*(
            methods for other, methods in templates.items()
            if re.fullmatch(re.sub(r"\{[a-z_]+\}", "[^/]+", other), urllib.parse.unquote(path))
        ))  # fmt: skip
        stream = path.endswith(("/events", "/export"))  # a stream's HEAD would run it whole: none
        expected |= {"HEAD"} if "GET" in expected and not stream else set()  # a GET's HEAD (RFC 9110 §9.3.2)
        unsupported = next(m for m in ("PUT", "PATCH", "DELETE", "POST", "GET") if m not in expected)
        status, headers, body = request(base, key, unsupported, path)
        assert status == 405, (unsupported, path, status, body)
        assert {m.strip() for m in headers["allow"].split(",")} == expected, (path, headers["allow"])
        assert set(body) == {"error", "message"} and body["error"] == "Method not allowed"
        if stream:
            assert request(base, key, "HEAD", path)[0] == 405, path  # at once: nothing listens, nothing exported
        elif "GET" in expected:  # a HEAD: the GET's status and headers, no body
            got, head = request(base, key, "GET", path), request(base, key, "HEAD", path)
            assert head[0] == got[0] and head[1]["content-type"] == got[1]["content-type"], (path, head, got)
            assert head[2] is None, (path, head)
    for path in ("/chats/context", "/chats/search"):  # refused as the reads they are, not as a message id
        status, headers, body = request(base, key, "DELETE", path)
        assert (status, headers["allow"], body["error"]) == (405, "GET, HEAD", "Method not allowed"), path
    status, _, body = request(base, key, "DELETE", f"/chats/{uuid}")
    assert (status, body["error"]) == (404, "Not found"), body  # a message id is still deleted by this route
    for probe in ("/healthz", "/livez"):  # the probes refuse in the one error shape too
        status, headers, body = request(base, key, "POST", probe)
        assert (status, headers["allow"], body["error"]) == (405, "GET, HEAD", "Method not allowed"), probe
        assert request(base, key, "HEAD", probe)[0] == 200


def test_read_only_refuses_a_write_with_405_and_allow(tmp_path: Any) -> None:
    db = str(tmp_path / "read-only.db")
    key = create_key(db, "acme", "reader")
    with http_server(db, "--read-only") as base:
        status, headers, body = request(base, key, "POST", "/chats")
        assert (status, headers["allow"], body["error"]) == (405, "GET, HEAD", "Method not allowed")
        uuid = "0192f0c4-7d3e-7b1a-9c4e-2f1d3a5b6c7d"
        for method, path, allow in (  # every write is refused as one, whether its path has a read or not
            ("DELETE", f"/chats/{uuid}", ""),
            ("PATCH", f"/chats/status/{uuid}", ""),
            ("POST", "/contacts/x/aliases", ""),
            ("DELETE", "/contacts/x/aliases/y", ""),
            ("POST", f"/contacts/x/chats/{uuid}/messages", ""),
            ("DELETE", "/contacts/x", "GET, HEAD"),
        ):
            status, headers, body = request(base, key, method, path)
            assert (status, headers["allow"], body["error"]) == (405, allow, "Method not allowed"), (method, path)
            assert "read-only" in body["message"] or allow, body
        assert request(base, key, "DELETE", "/nothing/here")[0] == 404  # no route at all is still a 404


def test_requests_drawn_from_the_document_are_answered_as_it_says(served: tuple[str, str]) -> None:
    """Fitting requests are accepted (no 422 but for the rules stated in words, no 5xx); unfitting ones are
    refused; every answer has a documented status, content type and body."""
    base, key = served
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    headers = {"Authorization": f"Bearer {key}"}
    statuses: dict[GenerationMode, list[int]] = {GenerationMode.POSITIVE: [], GenerationMode.NEGATIVE: []}
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

    def drive(operation: Any, mode: GenerationMode) -> None:
        extra = [negative_data_rejection] if mode is GenerationMode.NEGATIVE else []

        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)  # fmt: skip
        @given(operation.as_strategy(generation_mode=mode))
        def exercise(case: Any) -> None:
            response = case.call_and_validate(base_url=base, headers=headers, checks=[*checks, *extra])
            statuses[mode].append(response.status_code)
            if mode is GenerationMode.POSITIVE and response.status_code == 422:
                message = response.json()["message"]
                assert any(rule in message for rule in PROSE_ONLY), (case.method, case.path, message)

        exercise()

    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # an operation the document describes that schemathesis could not read
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.POSITIVE and operation.path.endswith("/events"):
                continue  # an event stream never ends by itself: tests/client/test_client.py listens to it
            drive(operation, mode)

    assert any(status < 300 for status in statuses[GenerationMode.POSITIVE]), statuses
    assert 422 in statuses[GenerationMode.NEGATIVE], statuses  # negative_data_rejection checked each one
