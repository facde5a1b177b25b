"""chatdock as an OAuth 2.1 protected resource, against a real authorization server (node-oidc-provider, started
on 127.0.0.1 from tests/http/oidc/): the MCP SDK's own OAuth client given only chatdock's URL, tokens the server
issued (for another audience, expired, without the organization, read-only), key rotation, an issuer that is
down or hangs, and API keys beside tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlparse

import httpx2
import pytest
from mcp.client import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from chatdock.server.http.oauth import granted_scopes
from tests import npm
from tests.transports import (
    chatdock_command,
    create_key,
    end,
    free_port,
    http_server,
    run_cli,
    send_body,
    wait_healthy,
)

pytestmark = pytest.mark.process

OIDC = Path(__file__).parent / "oidc"
CALLER = "+31612345678"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The authorization server's packages (oidc-provider), installed once from the npm registry."""
    return npm.installed(OIDC, "oidc-provider")


class AuthorizationServer:
    """node-oidc-provider on a loopback port; each start signs with a new key (a restart is a rotation)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [npm.node(), "provider.mjs"],
            cwd=OIDC,
            env={"PORT": str(self.port), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("listening"), line + (self.process.stderr.read() if self.process.stderr else "")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            process.wait(10)
            for stream in (process.stdout, process.stderr):
                if stream:
                    stream.close()

    def token(self, client: str, audience: str, scope: str = "chatdock:read chatdock:write") -> str:
        """An access token the server issues to a pre-registered client (client credentials)."""
        answer = httpx2.post(
            self.issuer + "/token",
            auth=(client, "secret"),
            data={"grant_type": "client_credentials", "scope": scope, "resource": audience},
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])


@pytest.fixture
def issuer(node_modules: Path) -> Iterator[AuthorizationServer]:
    server = AuthorizationServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def serving(issuer: AuthorizationServer, db: str) -> Iterator[dict[str, str]]:
    """chatdock with --oauth-issuer (its public URL the default, http://127.0.0.1:PORT), and an acme API key."""
    key = create_key(db, "acme", "beside-tokens")
    with http_server(db, "--oauth-issuer", issuer.issuer, "--oauth-clock-skew", "0") as base:
        yield {"base": base, "key": key, "db": db}


@pytest.fixture
def served(issuer: AuthorizationServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    """On SQLite: for what a token is allowed, which the store does not take part in."""
    with serving(issuer, str(tmp_path / "chatdock.db")) as found:
        yield found


@pytest.fixture
def served_on(issuer: AuthorizationServer, db: str) -> Iterator[dict[str, str]]:
    """On each engine: for what a token's organization reads and writes."""
    with serving(issuer, db) as found:
        yield found


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def append(base: str, token: str, content: str) -> httpx2.Response:
    body = {"contact_id": CALLER, "channel": "sms", "role": "user", "content": content}
    return httpx2.post(base + "/chats", json=body, headers=bearer(token))


def context(base: str, token: str) -> httpx2.Response:
    return httpx2.get(base + "/chats/context", params={"contact_id": CALLER}, headers=bearer(token))


def challenge(answer: httpx2.Response) -> str:
    return answer.headers.get("WWW-Authenticate", "")


def test_the_metadata_names_the_issuer_and_a_401_points_at_it(served: dict[str, str], issuer: Any) -> None:
    base = served["base"]
    for path in ("", "/mcp"):
        metadata = httpx2.get(f"{base}/.well-known/oauth-protected-resource{path}").json()
        assert metadata["resource"] == base + path  # RFC 9728 §3.3 (VS Code refuses a document naming another)
        assert [url.rstrip("/") for url in metadata["authorization_servers"]] == [issuer.issuer]
        assert metadata["scopes_supported"] == ["chatdock:read", "chatdock:write"]
    rest = httpx2.get(base + "/chats/context", params={"contact_id": CALLER})
    assert rest.status_code == 401
    assert f'resource_metadata="{base}/.well-known/oauth-protected-resource"' in challenge(rest)
    mcp = httpx2.post(base + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert mcp.status_code == 401
    assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"' in challenge(mcp)
    assert 'scope="chatdock:read chatdock:write"' in challenge(mcp)  # what to ask for (MCP authorization)
    assert "an access token from " + issuer.issuer in mcp.json()["message"]  # not "create a key"
    # a token for the MCP endpoint, as the /mcp document leads clients to ask, or spelled with a final "/"
    for audience in (base + "/mcp", base + "/"):
        assert context(base, issuer.token("acme-reader", audience, scope="chatdock:read")).status_code == 200
    for path, status in (("/elsewhere", 404), ("", 405)):  # answered in the one error shape, as every route
        odd = httpx2.request("POST" if status == 405 else "GET", f"{base}/.well-known/oauth-protected-resource{path}")
        assert odd.status_code == status and set(odd.json()) == {"error", "message"}, odd.text


def test_tokens_and_keys_serve_side_by_side_each_in_its_organization(
    served_on: dict[str, str], issuer: AuthorizationServer
) -> None:
    served = served_on
    base = served["base"]
    acme = issuer.token("acme-writer", base)
    assert append(base, acme, "by an acme token").status_code == 201
    assert append(base, served["key"], "by an acme key").status_code == 201  # a cdk_ key is still a key
    seen = context(base, served["key"]).json()["formatted"]
    assert seen == "USER: by an acme token\nUSER: by an acme key"
    globex = issuer.token("globex-writer", base)
    assert context(base, globex).json()["messages"] == []  # another organization's token sees nothing of acme

    reader = issuer.token("acme-reader", base, scope="chatdock:read")
    assert context(base, reader).json()["formatted"] == seen
    refused = append(base, reader, "not allowed")
    assert refused.status_code == 403
    assert refused.json() == {
        "error": "Insufficient scope",
        "message": "this token may not write: it lacks the scope chatdock:write",
    }
    # the scopes it has and the one it lacks: a client that asks for the challenge's scopes alone (the TypeScript
    # SDK 1.x) would lose its read for the write, and its write for the next read
    assert 'error="insufficient_scope"' in challenge(refused)
    assert 'scope="chatdock:read chatdock:write"' in challenge(refused)
    assert context(base, served["key"]).json()["formatted"] == seen  # nothing was written
    for token, writes in ((reader, False), (globex, True)):  # the inspector offers writes as /whoami says
        answer = httpx2.get(f"{base}/whoami", headers=bearer(token), timeout=10)
        assert (answer.status_code, answer.json()["can_write"]) == (200, writes)


def payload_of(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def test_tokens_that_carry_their_scopes_in_scp_are_allowed_what_it_grants(
    served: dict[str, str], issuer: AuthorizationServer
) -> None:
    """Okta's tokens list their scopes in `scp`, Microsoft Entra ID's spell them there as one string; neither
    has `scope`."""
    base = served["base"]
    listed = issuer.token("acme-scplist", base)
    assert payload_of(listed)["scp"] == ["chatdock:read", "chatdock:write"] and "scope" not in payload_of(listed)
    assert append(base, listed, "by a token with scp as a list").status_code == 201
    spelled = issuer.token("acme-scpstring", base, scope="chatdock:read")
    assert payload_of(spelled)["scp"] == "chatdock:read" and "scope" not in payload_of(spelled)
    assert context(base, spelled).json()["formatted"] == "USER: by a token with scp as a list"
    refused = append(base, spelled, "not allowed")
    assert refused.status_code == 403 and refused.json()["message"].endswith("it lacks the scope chatdock:write")


@pytest.mark.parametrize(
    ("claims", "granted"),
    [
        ({"scope": "chatdock:read chatdock:write"}, ["chatdock:read", "chatdock:write"]),
        ({"scope": "chatdock:read", "scp": ["chatdock:write"]}, ["chatdock:read"]),  # scope, when there is one
        ({"scp": ["chatdock:read"]}, ["chatdock:read"]),
        ({"scp": "chatdock:read  chatdock:write"}, ["chatdock:read", "chatdock:write"]),
        ({}, []),
        ({"scope": None}, []),
        ({"scp": 7}, []),
        ({"scp": ["chatdock:write", 7]}, []),  # a list with anything but strings grants nothing
        ({"scp": {"chatdock:write": True}}, []),
    ],
)
def test_the_scopes_a_token_grants_come_from_scope_or_else_scp(claims: dict[str, Any], granted: list[str]) -> None:
    assert granted_scopes(claims) == granted


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_read_only_token_over_mcp_reads_and_is_refused_a_write(
    served: dict[str, str], issuer: AuthorizationServer, mode: str
) -> None:
    base = served["base"]
    reader = issuer.token("acme-reader", base, scope="chatdock:read")
    answers: list[httpx2.Response] = []

    async def seen(response: httpx2.Response) -> None:
        answers.append(response)

    async with httpx2.AsyncClient(headers=bearer(reader), event_hooks={"response": [seen]}) as http:
        async with Client(streamable_http_client(base + "/mcp", http_client=http), mode=mode) as client:
            read = await client.call_tool("get_context", {"contact_id": CALLER})
            assert not read.is_error
        assert all(answer.status_code < 300 for answer in answers)
        # the SDK's client turns the 403 into an error of its own ("Server returned an error response")
        with pytest.raises(Exception):  # noqa: B017
            async with Client(streamable_http_client(base + "/mcp", http_client=http), mode=mode) as client:
                await client.call_tool(
                    "append_message", {"contact_id": CALLER, "channel": "sms", "role": "user", "content": "x"}
                )
        [refused] = [answer for answer in answers if answer.status_code >= 400]
        assert refused.status_code == 403 and 'error="insufficient_scope"' in challenge(refused)
        assert 'scope="chatdock:read chatdock:write"' in challenge(refused)
        direct = await http.post(
            base + "/mcp",
            json={"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "forget_contact"}},
            headers={"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"},
        )
    assert direct.status_code == 403 and 'scope="chatdock:read chatdock:write"' in challenge(direct)
    assert context(base, served["key"]).json()["messages"] == []


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_write_only_token_writes_and_reads_nothing_back(
    served: dict[str, str], issuer: AuthorizationServer, mode: str
) -> None:
    """An ingest bot's token of `chatdock:write` alone stores messages; a write that asks for the contact's context
    back (`context_limit`) is a read too: it handed the bot the contact's whole transcript (found by a review
    from a hosted client's seat), over REST and over MCP."""
    base = served["base"]
    assert append(base, served["key"], "my PIN is 4321").status_code == 201
    writer = issuer.token("acme-writer", base, scope="chatdock:write")
    assert append(base, writer, "stored by the bot").status_code == 201
    assert context(base, writer).status_code == 403
    body = {"contact_id": CALLER, "channel": "sms", "role": "user", "content": "and tell me", "context_limit": 50}
    for path in ("/chats", f"/contacts/{CALLER.replace('+', '%2B')}/chats/CHAT/messages"):
        asked = httpx2.post(base + path, json=body, headers=bearer(writer))
        assert asked.status_code == 403 and "PIN" not in asked.text, asked.text
        assert asked.json()["message"] == (
            "this token may not read what this write answers (a contact's identifiers, or with context_limit its "
            "messages): it lacks the scope chatdock:read; use a token with both scopes (or leave context_limit out)"
        )
        assert 'scope="chatdock:read chatdock:write"' in challenge(asked)
    # a link's or an unlink's answer names the contact's identifiers: a read too (found by the diff's review)
    contact = CALLER.replace("+", "%2B")
    linking: list[tuple[str, str, dict[str, str] | None]] = [
        ("POST", f"/contacts/{contact}/aliases", {"identifier": "ann.private@example.com"}),
        ("DELETE", f"/contacts/{contact}/aliases/ann.private%40example.com", None),
    ]
    for method, path, sent in linking:
        linked = httpx2.request(method, base + path, json=sent, headers=bearer(writer))
        assert linked.status_code == 403 and "ann.private" not in linked.text, (method, linked.text)
    answers: list[httpx2.Response] = []

    async def seen(response: httpx2.Response) -> None:
        answers.append(response)

    arguments = {"contact_id": CALLER, "channel": "sms", "role": "user", "content": "by MCP"}
    async with httpx2.AsyncClient(headers=bearer(writer), event_hooks={"response": [seen]}) as http:
        async with Client(streamable_http_client(base + "/mcp", http_client=http), mode=mode) as client:
            stored = await client.call_tool("append_message", arguments)
            assert not stored.is_error and "PIN" not in str(stored.content)
        for name, called in (
            ("append_message", {**arguments, "context_limit": 50}),
            ("link_contacts", {"contact_id": CALLER, "identifier": "ann.private@example.com"}),
            ("unlink_contact", {"identifier": "ann.private@example.com"}),
        ):
            with pytest.raises(Exception):  # noqa: B017  # the SDK's client raises its own error for the 403
                async with Client(streamable_http_client(base + "/mcp", http_client=http), mode=mode) as client:
                    await client.call_tool(name, called)
    refused = [(answer.request.method, answer.status_code) for answer in answers if answer.status_code >= 400]
    assert ("POST", 403) in refused and {status for _, status in refused} == {403}  # (its GET stream too: a read)
    formatted = context(base, served["key"]).json()["formatted"]
    assert formatted == "USER: my PIN is 4321\nUSER: stored by the bot\nUSER: by MCP"  # the refused wrote nothing


def encoded(part: dict[str, Any] | str) -> str:
    """A JWT's part: JSON (or the bytes of a string), base64url without padding."""
    raw = part.encode() if isinstance(part, str) else json.dumps(part).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged_unsigned(token: str) -> str:
    """The same claims under `alg: none`, no signature: what an attacker would send."""
    _, payload, _ = token.split(".")
    return f"{encoded({'alg': 'none', 'typ': 'JWT'})}.{payload}."


def test_tokens_chatdock_must_not_accept_are_refused_with_why(
    served: dict[str, str], issuer: AuthorizationServer
) -> None:
    base = served["base"]
    short = issuer.token("acme-short", base)
    cases = {
        "another audience": (issuer.token("acme-writer", "http://127.0.0.1:9/elsewhere"), "another audience"),
        "no organization": (issuer.token("acme-noorg", base), "claim 'org_id' is missing"),
        "alg none": (forged_unsigned(issuer.token("acme-writer", base)), "algorithm 'none' is not accepted"),
        "not a JWT": ("not-a-token", "neither a chatdock key"),
    }
    time.sleep(2.1)  # the short token lived one second; the clock skew allowed here is 0
    cases["expired"] = (short, "the token has expired")
    for name, (token, why) in cases.items():
        answer = context(base, token)
        assert answer.status_code == 401, name
        assert answer.json()["error"] == "Invalid token" and why in answer.json()["message"], (name, answer.json())
        assert 'error="invalid_token"' in challenge(answer) and "resource_metadata=" in challenge(answer), name


def test_a_rotated_key_is_followed_and_the_retired_one_refused(
    served: dict[str, str], issuer: AuthorizationServer
) -> None:
    base = served["base"]
    before = issuer.token("acme-writer", base)
    assert context(base, before).status_code == 200
    issuer.stop()
    issuer.start()  # a new signing key, the old one no longer published
    after = issuer.token("acme-writer", base)  # within the second of the last fetch: it waits for the next one
    assert context(base, after).status_code == 200  # (it was refused, as signed by a key not published)
    retired = context(base, before)
    assert retired.status_code == 401 and "a key the issuer does not publish" in retired.json()["message"]


def test_an_issuer_that_is_down_or_hangs_never_stalls_requests_with_keys(
    served: dict[str, str], issuer: AuthorizationServer
) -> None:
    base = served["base"]
    token = issuer.token("acme-writer", base)
    issuer.stop()
    began = time.monotonic()
    down = context(base, token)  # its key was never fetched: the issuer is needed, and away
    assert down.status_code == 503 and "could not be fetched" in down.json()["message"]
    assert time.monotonic() - began < 5
    assert context(base, served["key"]).status_code == 200


@asynccontextmanager
async def hanging_issuer() -> AsyncIterator[str]:
    """An issuer that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for each in [*held, listener]:
            each.close()


async def test_a_hanging_issuer_costs_a_token_its_bound_and_keys_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "chatdock.db")
    key = create_key(db, "acme", "beside-tokens")
    async with hanging_issuer() as nowhere:
        with http_server(db, "--oauth-issuer", nowhere) as base:
            async with httpx2.AsyncClient(base_url=base, timeout=30) as http:
                params = {"contact_id": CALLER}
                unchecked = ".".join(encoded(part) for part in ({"alg": "RS256", "kid": "k1"}, {"sub": "x"}, "sig"))
                waiting = asyncio.ensure_future(http.get("/chats/context", params=params, headers=bearer(unchecked)))
                queued = [  # requests behind it wait for its fetch, not for one fetch each (3 s apiece)
                    asyncio.ensure_future(http.get("/chats/context", params=params, headers=bearer(unchecked)))
                    for _ in range(4)
                ]
                await asyncio.sleep(0.3)  # the token's check is waiting on the issuer now
                began = time.monotonic()
                keyed = await http.get("/chats/context", params=params, headers=bearer(key))
                assert keyed.status_code == 200 and time.monotonic() - began < 1.0
                assert not waiting.done()
                answer = await waiting
                behind = await asyncio.wait_for(asyncio.gather(*queued), 2.0)
    assert answer.status_code == 503 and "could not be fetched" in answer.json()["message"]
    assert all(each.status_code == 503 and "could not be fetched" in each.json()["message"] for each in behind)


async def test_the_metadata_never_waits_long_for_a_hanging_issuer(tmp_path: Path) -> None:
    """The metadata names the issuer as the issuer spells itself, read from its discovery document: with an
    issuer that hangs, each request for it ran a discovery of its own behind the one before (the fifth of five
    took 15 s) and held a token's check behind them past its bound (11.5 s; found by the diff's review). They
    share one discovery, waited for a second at most; a token still gets its 503 within its bound."""
    db = str(tmp_path / "chatdock.db")
    async with hanging_issuer() as nowhere:
        with http_server(db, "--oauth-issuer", nowhere) as base:
            async with httpx2.AsyncClient(base_url=base, timeout=30) as http:

                async def timed(path: str, **headers: str) -> tuple[float, httpx2.Response]:
                    began = time.monotonic()
                    answer = await http.get(path, params={"contact_id": CALLER}, headers=headers)
                    return time.monotonic() - began, answer

                unchecked = ".".join(encoded(part) for part in ({"alg": "RS256", "kid": "k1"}, {"sub": "x"}, "sig"))
                asked = [timed("/.well-known/oauth-protected-resource/mcp") for _ in range(5)]
                asked.append(timed("/chats/context", **bearer(unchecked)))
                answers = await asyncio.gather(*asked)
    for took, answer in answers[:5]:
        assert answer.status_code == 200 and answer.json()["authorization_servers"] == [nowhere], answer.text
        assert took < 2.5, took  # a second's wait for the shared discovery (and the machine's own delays)
    took, refused = answers[5]
    assert refused.status_code == 503 and took < 5, (took, refused.text)  # one fetch's bound (3 s), and a second


class Memory:
    """The SDK client's token storage, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Browser:
    """The person at the authorization server's pages: signs in as `login` and consents (its dev forms)."""

    def __init__(self, login: str, redirect_uri: str) -> None:
        self.login = login
        self.redirect_uri = redirect_uri
        self.result: AuthorizationCodeResult | None = None

    async def visit(self, authorization_url: str) -> None:
        async with httpx2.AsyncClient(follow_redirects=False) as http:
            url = authorization_url
            form: dict[str, str] = {}
            for _ in range(12):
                answer = await (http.post(url, data=form) if form else http.get(url))
                form = {}
                if answer.status_code in (302, 303):
                    url = urljoin(url, answer.headers["location"])
                    if url.startswith(self.redirect_uri):
                        query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
                        self.result = AuthorizationCodeResult(
                            code=query["code"], state=query.get("state"), iss=query.get("iss")
                        )
                        return
                    continue
                page = answer.text
                action = page.split('action="', 1)[1].split('"', 1)[0]
                url = urljoin(url, action.replace("&amp;", "&"))
                prompt = page.split('name="prompt" value="', 1)[1].split('"', 1)[0]
                form = {"prompt": prompt}
                if prompt == "login":
                    form |= {"login": self.login, "password": "any"}
        raise AssertionError("the authorization server never redirected back")

    async def back(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_mcp_sdks_oauth_client_needs_only_chatdocks_url(
    served_on: dict[str, str], issuer: AuthorizationServer, mode: str
) -> None:
    """Discovery from the 401 and the metadata, dynamic registration, authorization code with PKCE (the
    person's login and consent done by `Browser`), then tools in either protocol era, in the token's org."""
    served = served_on
    base = served["base"]
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    person = Browser("ann@acme", redirect)
    auth = OAuthClientProvider(
        server_url=base + "/mcp",
        client_metadata=OAuthClientMetadata(
            redirect_uris=[redirect],  # type: ignore[list-item]
            client_name="chatdock tests",
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="client_secret_post",
        ),
        storage=Memory(),
        redirect_handler=person.visit,
        callback_handler=person.back,
    )
    async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
        async with Client(streamable_http_client(base + "/mcp", http_client=http), mode=mode) as client:
            stored = await client.call_tool(
                "append_message", {"contact_id": CALLER, "channel": "sms", "role": "user", "content": "via OAuth"}
            )
            assert not stored.is_error, stored.content
    assert context(base, served["key"]).json()["formatted"] == "USER: via OAuth"  # in acme, the token's org


def test_oauth_flags_that_cannot_work_stop_the_command_with_one_line(tmp_path: Path) -> None:
    db = str(tmp_path / "chatdock.db")
    cases = [
        (["--public-url", "https://chatdock.example.com", "--http"], "add --oauth-issuer"),
        (["--oauth-issuer", "https://sso.example.com"], "add --http"),
        (["--http", "--oauth-issuer", "sso.example.com"], "--oauth-issuer must be an http(s) URL"),
        (["--http", "--oauth-issuer", "https://sso.example.com", "--oauth-clock-skew", "90"], "0 to 60 seconds"),
        # the default audience would be no URL a client reaches: http://0.0.0.0:PORT, a port chosen at start
        (
            ["--http", "--oauth-issuer", "https://x.example", "--host", "0.0.0.0", "--allowed-host", "x.example"],
            "needs --public-url",
        ),
        (["--http", "--oauth-issuer", "https://sso.example.com", "--port", "0"], "needs --public-url"),
    ]
    for flags, said in cases:
        result = run_cli("serve", "--db", db, "--port", str(free_port()), *flags)
        assert result.returncode != 0, flags
        assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1, (flags, result.stderr)


@contextmanager
def path_issuer() -> Iterator[tuple[str, Any]]:
    """An issuer whose URL has a path (http://127.0.0.1:PORT/tenant), serving RFC 8414's document where §3.1
    puts it (/.well-known/oauth-authorization-server/tenant) and its keys; yields its URL and a function that
    signs a token with any header and claims."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    port = free_port()
    issuer = f"http://127.0.0.1:{port}/tenant"
    pages = {
        "/.well-known/oauth-authorization-server/tenant": {"issuer": issuer, "jwks_uri": issuer + "/jwks"},
        "/tenant/jwks": {"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]},
    }

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = pages.get(self.path)
            send_body(self, 200 if page else 404, json.dumps(page).encode(), "application/json")

        def log_message(self, *args: Any) -> None:
            pass

    def sign(claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k1", **header})

    server = ThreadingHTTPServer(("127.0.0.1", port), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer, sign
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class KeyedIssuer:
    """An issuer (RFC 8414's document and its keys on 127.0.0.1) with two signing keys, k1 and k2, that
    publishes the ones named in `published` and answers nothing while `hanging` is set."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from cryptography.hazmat.primitives.asymmetric import rsa

        self.private = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ("k1", "k2")}
        self.published = {"k1"}
        self.hanging = threading.Event()
        self.fetches = 0
        port = free_port()
        self.issuer = f"http://127.0.0.1:{port}"
        issuer = self

        class Pages(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if issuer.hanging.is_set():  # held, unanswered, until let go (or 10 s)
                    deadline = time.monotonic() + 10
                    while issuer.hanging.is_set() and time.monotonic() < deadline:
                        time.sleep(0.05)
                    return
                if self.path == "/.well-known/oauth-authorization-server":
                    page: dict[str, Any] = {"issuer": issuer.issuer, "jwks_uri": issuer.issuer + "/jwks"}
                else:
                    issuer.fetches += 1
                    page = {"keys": [issuer.jwk(kid) for kid in sorted(issuer.published)]}
                send_body(self, 200, json.dumps(page).encode(), "application/json")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Pages)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def jwk(self, kid: str) -> dict[str, Any]:
        import jwt

        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private[kid].public_key()))
        return {**public, "kid": kid, "use": "sig", "alg": "RS256"}

    def sign(self, kid: str, audience: str, *, named: bool = True, **claims: Any) -> str:
        """A token signed with key `kid`, its header naming it (or, not `named`, naming no key)."""
        import jwt

        body = {"iss": self.issuer, "aud": audience, "exp": int(time.time()) + 300, "org_id": "acme", "sub": "ann",
                "scope": "chatdock:read chatdock:write", **claims}  # fmt: skip
        return jwt.encode(body, self.private[kid], algorithm="RS256", headers={"kid": kid} if named else None)

    def __enter__(self) -> KeyedIssuer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hanging.clear()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


async def test_a_failed_fetch_is_a_503_for_all_it_kept_waiting_and_a_sign_in_is_never_throttled(
    tmp_path: Path,
) -> None:
    """The requests that queued behind a failed fetch of the keys were refused as signed by an unknown key
    (401: a client throws a good token away) once some keys were kept; and requests without a bearer, or with
    an expired token, counted as wrong keys: past 20 a minute a hosted client's shared address got 429, with no
    WWW-Authenticate to sign in by (found by a review against the MCP authorization spec)."""
    db = str(tmp_path / "chatdock.db")
    with KeyedIssuer() as issuer, http_server(db, "--oauth-issuer", issuer.issuer, "--oauth-clock-skew", "0") as base:
        assert context(base, issuer.sign("k1", base)).status_code == 200  # k1 fetched and kept
        issuer.hanging.set()
        rotated = issuer.sign("k2", base)
        async with httpx2.AsyncClient(base_url=base, timeout=30) as http:
            params = {"contact_id": CALLER}
            asked = [http.get("/chats/context", params=params, headers=bearer(rotated)) for _ in range(4)]
            began = time.monotonic()
            answers = await asyncio.gather(*asked)
            assert time.monotonic() - began < 6  # one fetch's bound (3 s) after at most a second's wait
            kept = await http.get("/chats/context", params=params, headers=bearer(issuer.sign("k1", base)))
        assert [(a.status_code, "could not be fetched" in a.json()["message"]) for a in answers] == [(503, True)] * 4
        assert kept.status_code == 200  # a key kept goes on verifying while the issuer is away
        issuer.hanging.clear()
        issuer.published = {"k1", "k2"}
        assert context(base, rotated).status_code == 200

        expired = issuer.sign("k1", base, exp=int(time.time()) - 10)
        with httpx2.Client(base_url=base) as http:
            for _ in range(25):  # each a sign-in's first request, and a token to refresh: more than 20
                unsigned = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
                late = http.get("/chats/context", params={"contact_id": CALLER}, headers=bearer(expired))
                assert (unsigned.status_code, late.status_code) == (401, 401)
                assert "resource_metadata=" in challenge(unsigned) and "expired" in late.json()["message"]
            wrong = [http.get("/chats", headers=bearer("cdk_00000000_wrong")).status_code for _ in range(21)]
        assert wrong == [401] * 20 + [429]  # wrong keys are still limited


@pytest.mark.parametrize("kind", ["tokens", "keys"])
async def test_a_session_serves_only_who_opened_it(tmp_path: Path, kind: str) -> None:
    """A session was bound to its organization only: another user's token of that organization (or another of
    its keys) could call tools in it and end it (MCP's security practices: bind a session to its user)."""
    db = str(tmp_path / "chatdock.db")
    keys = [create_key(db, "acme", name) for name in ("ann", "bob")]
    with KeyedIssuer() as issuer, http_server(db, "--oauth-issuer", issuer.issuer) as base:
        if kind == "tokens":
            ann, bob = issuer.sign("k1", base, sub="ann"), issuer.sign("k1", base, sub="bob")
            again = issuer.sign("k1", base, sub="ann", jti="refreshed")  # a refreshed token: the same user
        else:
            ann, bob = keys
            again = ann
        mcp = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
        async with httpx2.AsyncClient(base_url=base, headers=mcp, timeout=30) as http:
            opened = await http.post(
                "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}, headers=bearer(ann)
            )
            session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
            listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
            assert (await http.post("/mcp", json=listing, headers={**session, **bearer(bob)})).status_code == 404
            assert (await http.delete("/mcp", headers={**session, **bearer(bob)})).status_code == 404
            assert (await http.post("/mcp", json=listing, headers={**session, **bearer(again)})).status_code == 200
            assert (await http.delete("/mcp", headers={**session, **bearer(ann)})).status_code == 200


async def test_tokens_that_name_no_key_are_verified_with_the_one_key_kept() -> None:
    """An issuer with one key may leave `kid` out of its tokens: each such token waited a second and fetched the
    keys again (found by a review of the diff)."""
    from chatdock.server.http import oauth

    with KeyedIssuer() as issuer:
        verifier = oauth.JwtVerifier(oauth.OAuthSettings(issuer.issuer, "http://chatdock.test"))
        began = time.monotonic()
        for _ in range(5):
            assert (await verifier.verify(issuer.sign("k1", "http://chatdock.test", named=False))).subject == "ann"
        assert issuer.fetches == 1 and time.monotonic() - began < 1.0
        with pytest.raises(oauth.TokenRefused, match="signature does not verify"):  # another key's, unnamed
            await verifier.verify(issuer.sign("k2", "http://chatdock.test", named=False))


async def test_a_key_the_issuer_withdrew_stops_verifying_once_the_keys_are_old(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The keys were kept for ever: a key the issuer stopped publishing (leaked, withdrawn) verified its tokens
    until some token named an unknown key or chatdock restarted."""
    from chatdock.server.http import oauth

    monkeypatch.setattr(oauth, "KEYS_MAX_AGE", 1.0)  # five minutes in service
    with KeyedIssuer() as issuer:
        verifier = oauth.JwtVerifier(oauth.OAuthSettings(issuer.issuer, "http://chatdock.test"))
        assert (await verifier.verify(issuer.sign("k1", "http://chatdock.test"))).subject == "ann"
        issuer.published = {"k2"}
        assert (await verifier.verify(issuer.sign("k1", "http://chatdock.test"))).subject == "ann"  # still young
        await asyncio.sleep(1.1)
        with pytest.raises(oauth.TokenRefused, match="a key the issuer does not publish"):
            await verifier.verify(issuer.sign("k1", "http://chatdock.test"))
        assert issuer.fetches == 2


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_an_issuer_with_a_path_and_what_its_tokens_may_carry(tmp_path: Path, mode: str) -> None:
    """RFC 8414's document of an issuer with a path is found; a token's organization follows --org's rules (one
    name typed two ways is one organization; white space or an invisible character is refused); a forged header
    is a 401, never a 500; a write-only token's client starts its session (initialize) and writes."""
    db = str(tmp_path / "chatdock.db")
    with path_issuer() as (issuer, sign), http_server(db, "--oauth-issuer", issuer) as base:

        def token(org: Any, scope: str = "chatdock:read chatdock:write", **header: Any) -> str:
            claims = {"iss": issuer, "aud": base, "exp": int(time.time()) + 300, "org_id": org, "scope": scope}
            return str(sign(claims, **header))

        nfc, nfd = "caf\u00e9", "cafe\u0301"
        assert append(base, token(nfd), "typed on a Mac").status_code == 201
        assert [m["content"] for m in context(base, token(nfc)).json()["messages"]] == ["typed on a Mac"]
        for org in ("acme ", "acme\u200b", 7):
            refused = context(base, token(org))
            assert refused.status_code == 401 and "not a valid name" in refused.json()["message"], (org, refused.text)
        for header in ({"kid": "\u20ac"}, {"kid": ["k1"]}, {"alg": "\u20ac"}):  # what no library would sign
            _, payload, signature = token(nfc).split(".")
            forged = context(base, f"{encoded({'alg': 'RS256', 'kid': 'k1', **header})}.{payload}.{signature}")
            assert forged.status_code == 401 and forged.json()["error"] == "Invalid token", (header, forged.text)
        nested = httpx2.post(
            base + "/mcp",
            content=b"[" * 5000 + b"]" * 5000,
            headers={**bearer(token(nfc)), "Content-Type": "application/json", "Accept": "application/json"},
        )
        assert 400 <= nested.status_code < 500, nested.text
        writer = token("acme", scope="chatdock:write")
        async with httpx2.AsyncClient(headers=bearer(writer)) as http:
            async with Client(streamable_http_client(base + "/mcp", http_client=http), mode=mode) as client:
                arguments = {"contact_id": CALLER, "channel": "sms", "role": "user", "content": "write only"}
                assert not (await client.call_tool("append_message", arguments)).is_error
        mcp = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}
        started = httpx2.post(base + "/mcp", json=initialize, headers={**bearer(writer), **mcp})
        session = {"Mcp-Session-Id": started.headers["mcp-session-id"]}
        ended = httpx2.delete(base + "/mcp", headers={**bearer(writer), **mcp, **session})
        assert started.status_code == 200 and ended.status_code < 300, ended.text  # it ends its own session
        nothing = httpx2.post(base + "/mcp", json=initialize, headers={**bearer(token("acme", scope="")), **mcp})
        assert nothing.status_code == 403 and "neither" in nothing.json()["message"]  # no scope: no session
        denied = context(base, writer)  # and it reads nothing: a 403 the OpenAPI document states
        assert denied.status_code == 403 and set(denied.json()) == {"error", "message"}
        document = httpx2.get(base + "/openapi.json").json()
        assert set(document["components"]["securitySchemes"]) == {"bearer", "token"}
        assert issuer in document["components"]["securitySchemes"]["token"]["description"]
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                assert "403" in operation["responses"], (method, path)


def test_a_public_url_with_a_path_serves_the_metadata_where_a_401_points(tmp_path: Path) -> None:
    port = free_port()
    public = f"http://127.0.0.1:{port}/base"  # as a proxy that serves chatdock under /base would name it
    command = [*chatdock_command(), "serve", "--http", "--db", str(tmp_path / "c.db"), "--port", str(port)]
    with path_issuer() as (issuer, _):
        process = subprocess.Popen(
            [*command, "--oauth-issuer", issuer, "--public-url", public],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_healthy(process, f"http://127.0.0.1:{port}")
            for path in ("/mcp", "/chats/context"):
                refused = httpx2.get(f"http://127.0.0.1:{port}{path}", params={"contact_id": CALLER})
                assert refused.status_code == 401
                [pointed] = re.findall(r'resource_metadata="([^"]+)"', challenge(refused))
                assert pointed.startswith("http://127.0.0.1:") and "/base" in pointed, pointed
                metadata = httpx2.get(pointed)
                assert metadata.status_code == 200, (pointed, metadata.status_code)
                # RFC 9728 §3.3: the resource is the URL the document's address was made from (VS Code checks)
                resource = pointed.replace("/.well-known/oauth-protected-resource", "")
                assert resource == public + ("/mcp" if path == "/mcp" else "")
                assert metadata.json()["resource"] == resource and metadata.json()["authorization_servers"] == [issuer]
        finally:
            end(process)


async def test_an_event_stream_opened_with_a_token_ends_when_the_token_expires(tmp_path: Path) -> None:
    db = str(tmp_path / "chatdock.db")
    with path_issuer() as (issuer, sign), http_server(db, "--oauth-issuer", issuer, "--oauth-clock-skew", "0") as base:
        expires = int(time.time()) + 3
        claims = {"iss": issuer, "aud": base, "exp": expires, "org_id": "acme", "scope": "chatdock:read"}
        token = str(sign(claims))
        path = f"/contacts/{CALLER}/events"
        async with httpx2.AsyncClient(base_url=base, headers=bearer(token), timeout=30) as http:
            async with http.stream("GET", path) as stream:
                lines = stream.aiter_lines()
                assert await anext(lines) == "event: ready"
                # the server ends the stream, cleanly (its last chunk sent); clients reconnect
                with pytest.raises(StopAsyncIteration):
                    while True:
                        await asyncio.wait_for(anext(lines), timeout=expires + 5 - time.time())
            assert time.time() >= expires - 1  # not before the token's end
            again = await http.get(path)
        assert again.status_code == 401 and "expired" in again.json()["message"]
        # an initialize-era session's stream (GET /mcp) ends alike
        expires = int(time.time()) + 3
        token = str(sign({**claims, "exp": expires}))
        mcp = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
        async with httpx2.AsyncClient(base_url=base, headers={**bearer(token), **mcp}, timeout=30) as http:
            hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
            opened = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
            session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
            await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
            async with http.stream("GET", "/mcp", headers=session) as stream:
                assert stream.status_code == 200
                with pytest.raises(StopAsyncIteration):
                    lines = stream.aiter_lines()
                    while True:
                        await asyncio.wait_for(anext(lines), timeout=expires + 5 - time.time())
            assert time.time() >= expires - 1
