"""How `ChatdockClient` puts its arguments on the wire and reads what comes back: the base URL, bodies, URL
parts checked by the store's own rules, the server's refusals as `ChatdockApiError`, and the waits between
tries."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx2

from chatdock.storage import InvalidInput, Part
from chatdock.storage import validation as check
from chatdock.storage.errors import NO_ROUTE
from chatdock.storage.search import parse_query

from .errors import UNAVAILABLE, ChatdockApiError

LONGEST_WAIT = 2.0  # seconds between two tries at most, whatever a Retry-After asks
# Encoded, no id or query chatdock accepts is longer (1,000 characters of a query at 12 each, as %F0%9F%98%80); a
# longer one is checked by the store's own rule before it is sent (httpx2 cannot send a URL part over 64 KiB)
URL_ROOM = 16_384
INVALID = "Invalid arguments"


def refusal(response: httpx2.Response) -> ChatdockApiError:
    """The server's `{"error", "message"}` as the client's exception. An answer that is not chatdock's (a
    proxy's page, another service at the address) keeps its status when the call may work later (429, 502, 503,
    504), and is otherwise a 502 that says so, not to be retried (the address is wrong): another service's 404
    is no unknown contact, its 401 no wrong key."""
    try:
        body = response.json()
        error, message = str(body["error"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        pass
    else:
        if response.status_code == 404 and message == NO_ROUTE:  # chatdock, at a path it has no route at
            return ChatdockApiError(502, "Bad Gateway", no_route(response), retryable=False)
        return ChatdockApiError(response.status_code, error, message)
    if response.status_code in (429, 502, 503, 504):
        return ChatdockApiError(response.status_code, response.reason_phrase, not_chatdocks(response, "error"))
    return ChatdockApiError(502, "Bad Gateway", not_chatdocks(response, "error"), retryable=False)


def _asked(response: httpx2.Response) -> tuple[str, str]:
    """The address (scheme, host and port) and the path (without its query) a response answered."""
    url = response.request.url
    return f"{url.scheme}://{url.netloc.decode('ascii')}", url.raw_path.decode("ascii").partition("?")[0]


def no_route(response: httpx2.Response) -> str:
    """chatdock's 404 for a path it has no route at: the client's address has a path it should not have."""
    address, path = _asked(response)
    return (
        f"chatdock at {address} has no route {response.request.method} {path}: the client's url must be "
        f"chatdock's base address ({address}), with no path after it unless a proxy serves chatdock under that path"
    )


def not_chatdocks(response: httpx2.Response, expected: str) -> str:
    """What came back instead of chatdock's `expected` answer, and at which address."""
    address, path = _asked(response)
    kind = response.headers.get("content-type", "no content type")
    return (
        f"{address} answered {response.request.method} {path} with {response.status_code} but not with "
        f"chatdock's {expected} ({kind}: {response.text[:120]!r}): check that {address} is chatdock's address"
    )


def checked(rule: Callable[[Any], object], value: Any) -> None:
    """`value` by the store's `rule` (storage/validation.py): its refusal as the client's one exception."""
    try:
        rule(value)
    except InvalidInput as exc:
        raise ChatdockApiError(422, INVALID, exc.message) from None


def base_url(url: str) -> str:
    """chatdock's address as given, without a trailing slash (its scheme in lower case); ValueError when no
    request could be made to it."""
    scheme, colon, rest = url.partition(":")
    if not colon or scheme.lower() not in ("http", "https") or not rest.startswith("//"):
        raise ValueError(f"url must be chatdock's address starting with http:// or https://, got {url!r}")
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL as exc:
        raise ValueError(f"url must be chatdock's address, like http://127.0.0.1:8765; {url!r} is not: {exc}") from None
    if not parsed.host:
        raise ValueError(f"url must name chatdock's host, like http://127.0.0.1:8765, got {url!r}")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ValueError(f"url's port must be 1 to 65535, got {parsed.port} in {url!r}")
    if "?" in url or "#" in url:
        raise ValueError(f"url must be chatdock's base address, without a ?query or #fragment, got {url!r}")
    return f"{scheme.lower()}:{rest}".rstrip("/")


def json_body(body: dict[str, Any]) -> bytes:
    """A request's body. What JSON cannot carry (a NaN, a datetime in a part) is refused, never sent; half a
    character (a lone surrogate, which UTF-8 cannot carry) is sent as JSON's escape of it, so that chatdock
    refuses it in its own words (for which field, at which position)."""
    try:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ChatdockApiError(422, INVALID, f"the arguments must be plain JSON values: {exc}") from None
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def parts(message: object) -> object:
    """`post_as_contact`'s parts as JSON; what is not a list of parts is sent as it is, for chatdock to refuse
    in its words (`message: input should be a valid list`)."""
    if isinstance(message, str | bytes) or not isinstance(message, Sequence):
        return message
    return [
        part.model_dump(mode="json") if isinstance(part, Part) else dict(part) if isinstance(part, Mapping) else part
        for part in message
    ]


# The store's rule for each argument a URL carries (the server applies the same to what it receives)
URL_RULES: dict[str, Callable[[str], object]] = {
    "contact_id": check.contact_id,
    "identifier": lambda value: check.identifier(value, "identifier"),
    "agent_id": lambda value: check.identifier(value, "agent_id"),
    "chat_id": lambda value: check.uuid_text(value, "chat_id"),
    "message_id": lambda value: check.uuid_text(value, "message_id"),
    "q": parse_query,
    "channel": check.channel,
    "role": check.role,
    "roles": lambda value: check.roles(value.split(",")),
    "channels": lambda value: check.channels(value.split(",")),
}


def url_part(name: str, value: str) -> str:
    """`value`, percent-encoded for a URL. One a URL cannot carry is refused as chatdock would refuse it: half a
    character (a lone surrogate, which has no UTF-8 form) in the store's words, one too long by the store's rule
    for it (an id longer than 256 characters...)."""
    try:
        encoded = quote(value, safe="")
    except UnicodeEncodeError:
        checked(lambda text: check.whole_characters(text, "query" if name == "q" else name), value)
        raise
    if len(encoded) > URL_ROOM:
        checked(URL_RULES.get(name, refuse_long(name)), value)
    return encoded


def refuse_long(name: str) -> Callable[[str], object]:
    def rule(value: str) -> object:
        raise InvalidInput(f"{name} is not valid ({len(value)} characters); pass it exactly as chatdock returned it")

    return rule


def query(params: dict[str, Any] | None) -> str:
    """A request's query string (`?a=1&b=2`), each argument encoded by `url_part`."""
    if not params:
        return ""
    return "?" + "&".join(f"{name}={url_part(name, str(value))}" for name, value in params.items())


def closed_under(http: httpx2.AsyncClient, exc: RuntimeError) -> ChatdockApiError:
    """httpx2's RuntimeError for a closed client (an `http_client` given, closed by its owner) as the client's
    one exception; any other RuntimeError is a bug, raised as it is."""
    if not http.is_closed:
        raise exc
    return ChatdockApiError(503, UNAVAILABLE, f"the http_client given to the client is closed ({exc})")


def detail(exc: BaseException) -> str:
    """An exception in a message: its kind and its words, if it has any (a ReadTimeout has none)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def made_key(key: str) -> str:
    return f"the client made this write's key: pass idempotency_key={key!r}, or pass a key of your own to each write"


def present(**fields: Any) -> dict[str, Any]:
    """The arguments that were given (None is "not given", as for the tools)."""
    return {name: value for name, value in fields.items() if value is not None}


def listed(values: str | Sequence[str] | None) -> str | None:
    """A list argument as the query carries it, comma-separated; a string is one item (or the list as the
    server reads it, "user,assistant"), never its letters."""
    if values is None or isinstance(values, str):
        return values
    return ",".join(values)


def segment(value: str, name: str = "contact_id") -> str:
    """A path segment: every reserved character percent-encoded (`+31...` -> `%2B31...`, `a/b` -> `a%2Fb`), and
    '.' and '..' too (a URL's dot segments, which the HTTP client would resolve away); an empty one, which no
    path can carry, refused as the tool refuses it."""
    if not value:
        raise ChatdockApiError(422, INVALID, f"{name} must not be empty")
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return url_part(name, value)


def backoff(attempt: int) -> float:
    return min(LONGEST_WAIT, 0.1 * 2.0**attempt) * random.uniform(0.5, 1.0)


def retry_after(response: httpx2.Response, attempt: int) -> float:
    try:
        return min(LONGEST_WAIT, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return backoff(attempt)
