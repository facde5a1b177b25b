"""chatdock as an OAuth 2.1 protected resource (docs/oauth.md), beside its API keys.

With `serve --http --oauth-issuer URL`, a bearer that is not a `cdk_` key is an access token: a JWT the
issuer signed for chatdock (its audience is `--public-url`), unexpired, carrying the organization in a claim
(`--oauth-org-claim`, `org_id` by default) and the scopes `chatdock:read` (the reading tools, resources and
routes) and `chatdock:write` (the rest). The MCP SDK's seams are used where they fit: `JwtVerifier` is its
`TokenVerifier`, and the metadata routes are its RFC 9728 ones; the JWT checks are PyJWT's. No cryptography
is written here.

The issuer's keys are found through its discovery document (RFC 8414's, or OpenID Connect's, since
providers publish one or the other), kept, and fetched again when a token names a key id not seen yet (a
rotation) or once they are five minutes old, at most once a second; every fetch is bounded in time, so a
hanging issuer costs a request with a token at most `REFETCH_SECONDS + FETCH_SECONDS` and never touches
requests with keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httpx2
import jwt
from mcp.server.auth.handlers.metadata import ProtectedResourceMetadataHandler
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.routes import build_resource_metadata_url, cors_middleware
from mcp.shared.auth import ProtectedResourceMetadata
from pydantic import AnyHttpUrl
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chatdock.storage import validation as check
from chatdock.storage.errors import InvalidInput

logger = logging.getLogger("chatdock.oauth")

READ_SCOPE = "chatdock:read"
WRITE_SCOPE = "chatdock:write"
SCOPES = (READ_SCOPE, WRITE_SCOPE)
READ, WRITE = frozenset({READ_SCOPE}), frozenset({WRITE_SCOPE})
READ_AND_WRITE = READ | WRITE
# The writes whose answer hands out stored data need chatdock:read too: a link's or an unlink's answer names the
# contact's identifiers, channels and counts; a write that asks for the contact's context back (context_limit)
# hands out its messages. By name: a tool's, or a REST route's (each is named for its tool).
READING_WRITES = frozenset({"link_contacts", "unlink_contact"})


def write_needs(name: str | None, arguments: object) -> frozenset[str]:
    """The scopes a write needs, by its tool's (or route's) name and its arguments (a tool's, a REST body)."""
    asks_context = isinstance(arguments, dict) and arguments.get("context_limit") is not None
    return READ_AND_WRITE if name in READING_WRITES or asks_context else WRITE


ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
MAX_CLOCK_SKEW = 60.0  # seconds a token's exp / nbf may be off by, at most
FETCH_SECONDS = 3.0  # a fetch of the keys (the discovery documents and the key set), at most
REFETCH_SECONDS = 1.0  # the keys are fetched at most this often
SPELLING_WAIT = 1.0  # the metadata waits this long at most for the issuer's own spelling of its name
KEYS_MAX_AGE = 300.0  # keys older than this are fetched again before they verify a token
STALE_RETRY_SECONDS = 30.0  # keys past their age whose fetch failed are kept, and fetched again after this
MAX_UNNAMED_TRIES = 8  # the keys a token that names none is checked against, at most
KEY_PREFIX = "cdk_"  # what an API key starts with; anything else is a token
METADATA_PATH = "/.well-known/oauth-protected-resource"


@dataclass(frozen=True)
class OAuthSettings:
    issuer: str
    public_url: str  # chatdock's own URL as clients reach it: the tokens' audience, the metadata's `resource`
    org_claim: str = "org_id"
    clock_skew: float = MAX_CLOCK_SKEW

    def __post_init__(self) -> None:
        if not 0 <= self.clock_skew <= MAX_CLOCK_SKEW:
            raise ValueError(f"--oauth-clock-skew must be 0 to {MAX_CLOCK_SKEW:g} seconds, got {self.clock_skew:g}")
        for name, url in (("--oauth-issuer", self.issuer), ("--public-url", self.public_url)):
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"{name} must be an http(s) URL, got {url!r}")
            parts = urllib.parse.urlsplit(url)
            if parts.query or parts.fragment or "@" in parts.netloc or url.endswith(("?", "#")):
                raise ValueError(f"{name} must be a URL without a ?query, #fragment or user@, got {url!r}")
        if self.resource.endswith("/mcp"):  # what a connector form asks for: chatdock's would then be .../mcp/mcp
            raise ValueError(
                f"--public-url is chatdock's own URL, without /mcp (clients connect to its /mcp): give "
                f"{self.resource.removesuffix('/mcp') or self.resource}, got {self.public_url!r}"
            )
        if not self.org_claim.strip():
            raise ValueError(
                f"--oauth-org-claim must name the tokens' claim that holds the organization, got {self.org_claim!r}"
            )

    @property
    def resource(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def audiences(self) -> list[str]:
        """What a token's audience may be: chatdock's URL, or its MCP endpoint's (the resource the `/mcp`
        metadata names, which clients such as VS Code ask tokens for), each also with a final "/" (the same
        URL, RFC 3986 §6.2.3, as some clients spell it)."""
        named = [self.resource, self.resource + "/mcp"]
        return [*named, *(url + "/" for url in named)]

    def metadata_url(self, path: str = "") -> str:
        """Where the protected-resource metadata is: for `/mcp`, the path-suffixed form (RFC 9728 §3.1)."""
        return str(build_resource_metadata_url(AnyHttpUrl(self.resource + path)))

    def metadata_routes(self, issuer: Callable[[], Awaitable[str]]) -> list[Route]:
        """RFC 9728's document for chatdock's URL at `/.well-known/oauth-protected-resource`, and for its MCP
        endpoint at the `/mcp` form: the issuer (`issuer()`: as its own discovery document spells it, which
        clients compare letter for letter: the MCP SDK's Python client refused `http://as/` for `http://as`),
        the scopes, and as the resource the URL whose metadata it is (§3.3: a client such as VS Code refuses a
        document that names another). The MCP SDK's model, handler and CORS."""
        # where metadata_url points (RFC 9728 §3.1: the resource's path after the well-known one; a --public-url
        # with a path, behind a proxy, adds it), and the same without that path
        base = urllib.parse.urlsplit(self.resource).path.rstrip("/")
        routes: list[Route] = []
        for suffix in ("", "/mcp"):
            resource = self.resource + suffix

            async def document(request: Request, resource: str = resource) -> Response:
                # as strings: the model keeps them as written (url_preserve_empty_path), where AnyHttpUrl(...)
                # would add a "/" to a bare origin
                metadata = ProtectedResourceMetadata(
                    resource=cast(AnyHttpUrl, resource),
                    authorization_servers=[cast(AnyHttpUrl, await issuer())],
                    scopes_supported=list(SCOPES),
                    resource_name="chatdock",
                )
                return await ProtectedResourceMetadataHandler(metadata).handle(request)

            endpoint = cors_middleware(document, ["GET", "OPTIONS"])
            paths = dict.fromkeys(METADATA_PATH + prefix + suffix for prefix in ("", base))
            routes += [Route(path, endpoint, methods=["GET", "OPTIONS"]) for path in paths]
        return routes


class TokenRefused(Exception):
    """A token chatdock does not accept; the message says why, for `WWW-Authenticate`'s error_description."""


class IssuerUnavailable(Exception):
    """The issuer's keys could not be fetched: the token may be fine, the service cannot check it now."""


RSA_ALGORITHMS = frozenset(name for name in ALGORITHMS if name[:2] in ("RS", "PS"))


@dataclass(frozen=True)
class Published:
    """One of the issuer's keys, and the JWK it was read from."""

    key: jwt.PyJWK
    jwk: dict[str, Any]
    # the key read for another algorithm (see as_for), once for all the tokens that name it
    other_algorithms: dict[str, jwt.PyJWK] = field(default_factory=dict, compare=False)

    def as_for(self, alg: str) -> jwt.PyJWK:
        """The key for a token signed with `alg`. A JWK's `alg` is optional (RFC 7517 §4.4) and PyJWT reads an RSA
        key without one as RS256's: a PS256 token was refused as signed with another algorithm than its key's.
        Such a key verifies any RSA algorithm chatdock accepts; a key that names its algorithm, only that one."""
        bare_rsa = "alg" not in self.jwk and self.jwk.get("kty") == "RSA"
        if bare_rsa and alg != self.key.algorithm_name and alg in RSA_ALGORITHMS:
            if alg not in self.other_algorithms:
                self.other_algorithms[alg] = jwt.PyJWK(self.jwk, alg)
            return self.other_algorithms[alg]
        return self.key


def published(document: object) -> list[Published]:
    """The usable keys of a JWK Set (those PyJWT cannot use are passed over, as its PyJWKSet does); PyJWKSetError
    when there is none."""
    listed = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(listed, list):
        raise jwt.PyJWKSetError("the issuer's key set (jwks_uri) is not a JWK Set: it has no list of keys")
    found: list[Published] = []
    for jwk in listed:
        if isinstance(jwk, dict):
            try:
                found.append(Published(jwt.PyJWK(jwk), jwk))
            except jwt.PyJWTError:
                continue
    if not found:
        raise jwt.PyJWKSetError("the issuer's key set (jwks_uri) has no key chatdock can use")
    return found


class Misconfigured(Exception):
    """The issuer's keys cannot be found as configured: no retry mends it (the message says what to check)."""


class IssuerKeys:
    """The issuer's signing keys by key id, from its discovery document's `jwks_uri`: fetched again when a token
    names a key not seen yet (a rotation) and once they are `KEYS_MAX_AGE` old (a key the issuer withdrew stops
    being trusted), at most once every `REFETCH_SECONDS`; the requests waiting meanwhile take that fetch's
    outcome (a failed fetch is their 503, not a refusal of their token)."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer  # as the discovery document spells it once read (Auth0's ends in "/", most don't)
        self._keys: dict[str, Published] = {}  # by key id
        self._unnamed: list[Published] = []  # the keys published without one
        self._jwks_uri: str | None = None
        self._tried_at = -math.inf  # when the last fetch began
        self._ended_at = -math.inf  # when it ended
        self._fetched_at = -math.inf  # when the keys were last fetched
        self._failed = False  # whether the last fetch failed
        self._problem = ""  # why, when it is chatdock's configuration (no discovery document), not a passing failure
        self._lock = asyncio.Lock()
        self._discovery: asyncio.Future[None] | None = None  # the metadata's look at the issuer's spelling

    def _kept(self, kid: str | None) -> list[Published]:
        """The kept keys that may have signed a token: the one its key id names; for a token that names none,
        each key the issuer publishes (at most MAX_UNNAMED_TRIES: each is a signature to check)."""
        if kid is None:
            return [*self._unnamed, *self._keys.values()][:MAX_UNNAMED_TRIES]
        found = self._keys.get(kid)
        return [] if found is None else [found]

    def _current(self, kid: str | None) -> list[Published]:
        """The kept key `kid` names while the kept keys are young enough, or could not be fetched again lately
        (an issuer that is down does not stop the tokens its kept keys verify)."""
        now = time.monotonic()
        fresh = now - self._fetched_at < KEYS_MAX_AGE or (self._failed and now - self._tried_at < STALE_RETRY_SECONDS)
        return self._kept(kid) if fresh else []

    async def candidates(self, kid: str | None, alg: str) -> list[jwt.PyJWK]:
        """The keys that may verify a token of `kid` signed with `alg` (one, for a token that names its key);
        TokenRefused when the issuer has none, IssuerUnavailable when its keys cannot be fetched."""
        current = self._current(kid)
        if current:
            return [key.as_for(alg) for key in current]
        asked = time.monotonic()
        async with self._lock:  # one fetch for the many tokens that name the same new key
            # a fetch that ended since this request came is its answer, unless it began before the request and
            # succeeded without the key (the issuer may have published it meanwhile: a rotation)
            answered = self._ended_at >= asked and (self._failed or self._tried_at >= asked)
            if not answered and not self._current(kid):
                await asyncio.sleep(max(0.0, self._tried_at + REFETCH_SECONDS - time.monotonic()))
                await self._fetch()
            failed = self._failed
        kept = self._kept(kid)  # kept keys, if the fetch again failed
        if kept:
            return [key.as_for(alg) for key in kept]
        if failed:
            raise IssuerUnavailable(self._problem or "the issuer's keys could not be fetched; try again")
        if kid is None:
            raise TokenRefused("the token names no key id (kid) and the issuer publishes no key")
        raise TokenRefused(f"the token is signed by a key the issuer does not publish (kid {kid!a})")

    async def _fetch(self) -> None:
        self._tried_at = time.monotonic()
        try:
            async with asyncio.timeout(FETCH_SECONDS), httpx2.AsyncClient(timeout=FETCH_SECONDS) as http:
                if self._jwks_uri is None:
                    self._jwks_uri = await self._discover(http)
                answer = await http.get(self._jwks_uri)
                answer.raise_for_status()
                found = published(answer.json())
        except (httpx2.HTTPError, TimeoutError, ValueError, jwt.PyJWKSetError, Misconfigured) as exc:
            self._failed, self._ended_at = True, time.monotonic()
            self._problem = str(exc) if isinstance(exc, Misconfigured) else ""
            where = "" if isinstance(exc, Misconfigured) else f" ({self._jwks_uri or 'discovery'})"
            why = exc or type(exc).__name__
            logger.warning("could not fetch the signing keys of %s%s: %s", self.issuer, where, why)
            return
        self._keys = {key.key.key_id: key for key in found if key.key.key_id}
        self._unnamed = [key for key in found if not key.key.key_id]
        self._problem = ""
        self._fetched_at = self._ended_at = time.monotonic()
        self._failed = False
        logger.info("fetched %d signing keys of %s", len(found), self.issuer)

    async def _discover(self, http: httpx2.AsyncClient) -> str:
        """`jwks_uri` from RFC 8414's document, or else OpenID Connect's; the document must name this issuer. A
        URL whose answer is not such a document (a website's page for any path, another issuer's) is passed
        over for the next; when neither is, ValueError says what each URL answered."""
        issuer = self.issuer.rstrip("/")
        parts = urllib.parse.urlsplit(issuer)
        answered: list[str] = []
        for url in (  # RFC 8414 §3.1: before the issuer's path; OpenID Connect: after it
            f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path}",
            issuer + "/.well-known/openid-configuration",
        ):
            answer = await http.get(url)
            if answer.status_code != 200:
                answered.append(f"{url} answered {answer.status_code}")
                continue
            try:
                document = answer.json()
            except ValueError:
                answered.append(f"{url} answered something that is not JSON")
                continue
            named = str(document.get("issuer", "")) if isinstance(document, dict) else ""
            if named.rstrip("/") != issuer:
                answered.append(f"{url} names issuer {named!r}, not {self.issuer!r}")
                continue
            if not isinstance(document.get("jwks_uri"), str):
                answered.append(f"{url} names no jwks_uri")
                continue
            self.issuer = named
            return str(document["jwks_uri"])
        raise Misconfigured(
            f"no discovery document of the issuer {self.issuer} was found ({'; '.join(answered)}); check "
            "--oauth-issuer: it must be the issuer's URL exactly as its tokens' `iss` claim spells it"
        )

    async def discovered(self) -> str:
        """The issuer as its discovery document spells it (Auth0's ends in "/", most don't), which clients compare
        letter for letter with the metadata's. Read once, by one discovery at a time that every caller shares
        (tried at most once every `REFETCH_SECONDS`) and waits for at most `SPELLING_WAIT`: --oauth-issuer's
        spelling while it cannot be read. (Each caller once ran a discovery of its own behind the one before:
        an issuer that hangs held the fifth request 15 s, and the tokens waiting for the same lock past their
        bound.)"""
        if self._jwks_uri is None:
            running = self._discovery
            if (running is None or running.done()) and time.monotonic() - self._tried_at >= REFETCH_SECONDS:
                running = self._discovery = asyncio.ensure_future(self._discover_once())
            if running is not None and not running.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(running), SPELLING_WAIT)
        return self.issuer

    async def _discover_once(self) -> None:
        async with self._lock:
            if self._jwks_uri is None:
                await self._fetch()


class JwtVerifier:
    """The MCP SDK's `TokenVerifier` for the issuer's JWT access tokens; `verify` says why it refuses one."""

    def __init__(self, settings: OAuthSettings) -> None:
        self.settings = settings
        self.keys = IssuerKeys(settings.issuer)

    def _decoded(self, token: str, candidates: list[jwt.PyJWK]) -> dict[str, Any]:
        """The token's claims, verified with the first of `candidates` whose signature it carries (a token that
        names no key id may be any published key's); PyJWT's error when none verifies it, or its claims fail."""
        for index, key in enumerate(candidates):
            try:
                return dict(
                    jwt.decode(
                        token,
                        key=key,
                        algorithms=ALGORITHMS,
                        audience=self.settings.audiences,
                        issuer=self.keys.issuer,
                        leeway=self.settings.clock_skew,
                        options={"require": ["exp", "iss", "aud"]},
                    )
                )
            except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
                if index == len(candidates) - 1:  # another key's (or another kind of key): the next may be its
                    raise
        raise jwt.InvalidSignatureError("no key to verify it with")

    def metadata_routes(self) -> list[Route]:
        """The protected-resource metadata, naming the issuer as its discovery document spells it."""
        return self.settings.metadata_routes(self.keys.discovered)

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            return await self.verify(token)
        except (TokenRefused, IssuerUnavailable):
            return None

    async def verify(self, token: str) -> AccessToken:
        """The token's access, or TokenRefused (IssuerUnavailable when the keys cannot be fetched)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:  # not a JWT, or one whose header is malformed (a kid that is not text)
            raise TokenRefused(_unreadable(token, exc)) from exc
        if str(header.get("alg", "")) not in ALGORITHMS:
            raise TokenRefused(f"the token's algorithm {header.get('alg')!a} is not accepted")
        candidates = await self.keys.candidates(header.get("kid"), str(header["alg"]))
        try:
            claims = self._decoded(token, candidates)
        except jwt.ExpiredSignatureError as exc:
            raise TokenRefused("the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenRefused("the token is not valid yet (its nbf or iat is in the future)") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRefused(
                f"the token was issued for another audience, not {self.settings.resource} (or its /mcp)"
            ) from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRefused(f"the token was issued by another issuer, not {self.keys.issuer}") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenRefused("the token's signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"the token is not accepted: {exc}") from exc
        org = claims.get(self.settings.org_claim)
        if org is None or org == "":
            raise TokenRefused(
                f"the token carries no organization: its claim {self.settings.org_claim!r} is missing "
                "(the issuer must add it; --oauth-org-claim names another)"
            )
        try:  # the rules of --org: one name typed two ways (NFC, NFD) is one organization, no invisible ones
            org = check.identifier(org, f"the token's claim {self.settings.org_claim!r}")
        except InvalidInput as exc:
            raise TokenRefused(f"the token's organization is not a valid name: {exc.message}") from exc
        granted = granted_scopes(claims)
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id") or claims.get("azp") or ""),
            scopes=granted,
            expires_at=int(claims["exp"]),
            resource=self.settings.resource,
            subject=None if claims.get("sub") is None else str(claims["sub"]),
            claims={"iss": claims["iss"], "org": org},
        )


def _unreadable(token: str, exc: jwt.PyJWTError) -> str:
    """Why a token whose header cannot be read is refused, and what the issuer must be told."""
    dots = token.count(".")
    if dots == 4:  # five parts: JWE's compact form (Auth0's default for a token without an API audience)
        return (
            "the token is encrypted (a JWE), which chatdock cannot read: set the issuer to issue signed JWT access "
            "tokens for chatdock's URL (docs/oauth.md)"
        )
    if dots == 2:
        return f"the token's header is not accepted: {exc}"
    return (
        "the token is neither a chatdock key (cdk_...) nor a JWT; an issuer that hands out opaque tokens must be "
        "set to issue JWT access tokens for chatdock's URL (docs/oauth.md)"
    )


def granted_scopes(claims: dict[str, Any]) -> list[str]:
    """The scopes a token grants: its `scope` claim, a space-separated string (RFC 9068); a token without one,
    its `scp` claim, a list of strings (Okta) or a space-separated string (Microsoft Entra ID). Anything else
    grants nothing."""
    found = claims.get("scope", claims.get("scp"))
    if isinstance(found, str):
        return found.split()
    if isinstance(found, list) and all(isinstance(scope, str) for scope in found):
        return list(found)
    return []


def is_api_key(bearer: str) -> bool:
    return bearer.startswith(KEY_PREFIX)
