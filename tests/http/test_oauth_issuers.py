"""Issuers as they are in the wild, each a stub on 127.0.0.1 that serves the pages it is given: one whose name
ends in "/" (or does not, as --oauth-issuer was typed), one on a host that answers any path with a web page,
one whose RSA key names no algorithm; and what a refused bearer leaves in the log (found by a review from a
hosted MCP client's seat)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.transports import chatdock_command, end, free_port, run_cli, send_body, wait_healthy

pytestmark = pytest.mark.process

CALLER = "+31612345678"
PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(PRIVATE.public_key()))


class StubIssuer:
    """A web server on 127.0.0.1 answering `pages` (path -> JSON, or text for a web page), 404 elsewhere."""

    def __init__(self) -> None:
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.pages: dict[str, Any] = {}
        pages = self.pages

        class Pages(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                page = pages.get(self.path)
                if isinstance(page, str):  # a website's page, for any path it is asked
                    send_body(self, 200, page.encode(), "text/html")
                else:
                    send_body(self, 200 if page else 404, json.dumps(page).encode(), "application/json")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Pages)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def sign(self, issuer: str, audience: str, algorithm: str = "RS256", kid: str = "k1") -> str:
        claims = {"iss": issuer, "aud": audience, "exp": int(time.time()) + 300, "org_id": "acme", "sub": "ann",
                  "scope": "chatdock:read chatdock:write"}  # fmt: skip
        return jwt.encode(claims, PRIVATE, algorithm=algorithm, headers={"kid": kid})


@contextmanager
def stub_issuer() -> Iterator[StubIssuer]:
    issuer = StubIssuer()
    issuer.thread.start()
    try:
        yield issuer
    finally:
        issuer.server.shutdown()
        issuer.server.server_close()
        issuer.thread.join()


@contextmanager
def chatdock(tmp_path: Path, issuer: str) -> Iterator[tuple[str, Path]]:
    """`chatdock serve --http --oauth-issuer ISSUER`; yields its URL and its log's file."""
    port, log = free_port(), tmp_path / "chatdock.log"
    with log.open("w") as written:
        command = [*chatdock_command(), "serve", "--http", "--db", str(tmp_path / "c.db"), "--port", str(port)]
        process = subprocess.Popen(
            [*command, "--oauth-issuer", issuer], stdout=subprocess.DEVNULL, stderr=written, text=True
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(process, base)
            yield base, log
        finally:
            end(process)


def context(base: str, token: str) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx2.get(base + "/chats/context", params={"contact_id": CALLER}, headers=headers, timeout=30)


@pytest.mark.parametrize(("names_itself", "typed"), [("", "/"), ("/", "")])
def test_the_metadata_names_the_issuer_as_the_issuer_spells_itself(
    tmp_path: Path, names_itself: str, typed: str
) -> None:
    """--oauth-issuer typed with a final "/" the issuer does not write (or without the one Auth0 writes): chatdock
    accepted the tokens, but its metadata named the issuer as typed, and the MCP SDK's Python client, which
    compares the two letter for letter, stopped at sign-in ("issuer mismatch")."""
    with stub_issuer() as stub:
        named = stub.origin + names_itself
        stub.pages["/.well-known/oauth-authorization-server"] = {"issuer": named, "jwks_uri": stub.origin + "/keys"}
        stub.pages["/keys"] = {"keys": [{**PUBLIC, "kid": "k1", "alg": "RS256"}]}
        with chatdock(tmp_path, stub.origin + typed) as (base, _):
            for path in ("", "/mcp"):
                metadata = httpx2.get(f"{base}/.well-known/oauth-protected-resource{path}").json()
                assert metadata["authorization_servers"] == [named], metadata
            assert context(base, stub.sign(named, base)).status_code == 200


def test_discovery_passes_over_a_web_page_for_the_next_document(tmp_path: Path) -> None:
    """An issuer with a path on a host whose website answers every path with a page (200, HTML): RFC 8414's
    URL gave that page, discovery stopped there, and every token was a 503 "try again" for ever, though the
    issuer publishes OpenID Connect's document. With neither document, the 503 says what to check."""
    with stub_issuer() as stub:
        issuer = stub.origin + "/auth/realms/acme"
        stub.pages["/.well-known/oauth-authorization-server/auth/realms/acme"] = "<html>Welcome to ACME</html>"
        with chatdock(tmp_path, issuer) as (base, log):
            refused = context(base, stub.sign(issuer, base))
            assert refused.status_code == 503
            message = refused.json()["message"]
            assert message.startswith(f"no discovery document of the issuer {issuer} was found (")
            assert "oauth-authorization-server/auth/realms/acme answered something that is not JSON" in message
            assert "openid-configuration answered 404" in message and "check --oauth-issuer" in message
            stub.pages["/auth/realms/acme/.well-known/openid-configuration"] = {
                "issuer": issuer,
                "jwks_uri": issuer + "/certs",
            }
            stub.pages["/auth/realms/acme/certs"] = {"keys": [{**PUBLIC, "kid": "k1", "alg": "RS256"}]}
            time.sleep(1.1)  # the keys are fetched again at most once a second
            assert context(base, stub.sign(issuer, base)).status_code == 200
        assert "no discovery document of the issuer" in log.read_text()


def test_an_rsa_key_that_names_no_algorithm_verifies_every_rsa_algorithm(tmp_path: Path) -> None:
    """A JWK's `alg` is optional (RFC 7517 §4.4): a PS256 or RS512 token signed with an RSA key published without
    one was refused as "Token algorithm 'PS256' does not match the key's algorithm 'RS256'". A key that names
    its algorithm still verifies only that one."""
    with stub_issuer() as stub:
        stub.pages["/.well-known/oauth-authorization-server"] = {"issuer": stub.origin, "jwks_uri": stub.origin + "/k"}
        stub.pages["/k"] = {"keys": [{**PUBLIC, "kid": "k1", "use": "sig"}, {**PUBLIC, "kid": "k2", "alg": "RS256"}]}
        with chatdock(tmp_path, stub.origin) as (base, _):
            for algorithm in ("RS256", "PS256", "RS512", "PS384"):
                assert context(base, stub.sign(stub.origin, base, algorithm)).status_code == 200, algorithm
            refused = context(base, stub.sign(stub.origin, base, "PS256", kid="k2"))
            assert refused.status_code == 401 and "does not match the key's algorithm" in refused.json()["message"]


def test_tokens_that_name_no_key_are_verified_by_whichever_published_key_signed_them(tmp_path: Path) -> None:
    """An issuer publishing several keys without key ids: only the first was kept, and the others' tokens were
    refused as "the token's signature does not verify"."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(other.public_key()))
    with stub_issuer() as stub:
        stub.pages["/.well-known/oauth-authorization-server"] = {"issuer": stub.origin, "jwks_uri": stub.origin + "/k"}
        stub.pages["/k"] = {"keys": [{**PUBLIC, "alg": "RS256"}, {**other_public, "alg": "RS256"}]}
        with chatdock(tmp_path, stub.origin) as (base, _):
            claims = jwt.decode(stub.sign(stub.origin, base), options={"verify_signature": False})
            for signer in (PRIVATE, other):
                assert context(base, jwt.encode(claims, signer, algorithm="RS256")).status_code == 200
            stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            refused = context(base, jwt.encode(claims, stranger, algorithm="RS256"))
            assert refused.status_code == 401 and "signature does not verify" in refused.json()["message"]


def test_a_refused_bearer_leaves_nothing_of_its_secret_in_the_log(tmp_path: Path) -> None:
    """A bearer with two underscores was logged as a key by its first 20 characters: an opaque token's are its
    secret's. Only a chatdock key's prefix is logged; an encrypted token (a JWE, five parts) is told apart."""
    with stub_issuer() as stub:
        stub.pages["/.well-known/oauth-authorization-server"] = {"issuer": stub.origin, "jwks_uri": stub.origin + "/k"}
        stub.pages["/k"] = {"keys": [{**PUBLIC, "kid": "k1", "alg": "RS256"}]}
        with chatdock(tmp_path, stub.origin) as (base, log):
            opaque = context(base, "Zq8vN3xLpR7tW2kY9mB4cH6jD1fG5sA0_opaque_token_tail")
            assert opaque.status_code == 401 and "opaque tokens" in opaque.json()["message"]
            encrypted = context(base, "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..iv.ciphertext.tag")
            assert encrypted.status_code == 401 and "encrypted (a JWE)" in encrypted.json()["message"]
            assert context(base, "cdk_0123abcd_notthesecret").status_code == 401
            time.sleep(0.2)
        logged = log.read_text()
        assert "Zq8vN3" not in logged and "(a bearer not of chatdock's form)" in logged
        assert "(cdk_0123abcd)" in logged and "notthesecret" not in logged


def test_urls_and_claims_no_client_could_use_stop_the_command(tmp_path: Path) -> None:
    """--public-url is what a connector form asks for (chatdock's /mcp) one level too deep: every client then
    found metadata for .../mcp/mcp and refused it."""
    db = str(tmp_path / "chatdock.db")
    issuer = ["--http", "--oauth-issuer", "https://sso.example.com"]
    cases = [
        (["--public-url", "https://chatdock.example.com/mcp"], "give https://chatdock.example.com, got"),
        (["--public-url", "https://chatdock.example.com/?x=1"], "without a ?query, #fragment or user@"),
        (["--public-url", "https://ann:pw@chatdock.example.com"], "without a ?query, #fragment or user@"),
        (["--oauth-org-claim", " "], "--oauth-org-claim must name the tokens' claim"),
    ]
    for flags, said in cases:
        result = run_cli("serve", "--db", db, "--port", str(free_port()), *issuer, *flags)
        assert result.returncode != 0, flags
        assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1, (flags, result.stderr)
