"""The pages of `serve --http` for people (docs/inspector.md): the inspector at /ui and the OpenAPI viewer at /docs.

Both are static files shipped in the package (static/ui, static/docs): no template, no build step, nothing
from another host. The inspector is one HTML page, one ES module and one style sheet; it signs in with a key
it keeps in the page's memory and calls the REST routes like any other client. /docs is Swagger UI, vendored
from npm's swagger-ui-dist (static/docs/LICENSE), started by a small local script.

Every answer here carries a Content-Security-Policy that allows scripts, styles and requests from this
origin only, and no inline script: stored text that reached the DOM as markup still could not run. The
pages need no key (the key is typed into them); /ui/config.json tells the inspector whether the server is
read-only, so that it offers no write the server would not take.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

_BASE_POLICY = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# the inspector's own style sheet and nothing else; Swagger UI's style sheet draws its icons from data: URLs
UI_POLICY = f"{_BASE_POLICY}; style-src 'self'; img-src 'self'"
DOCS_POLICY = f"{_BASE_POLICY}; style-src 'self'; img-src 'self' data:"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    "": "text/plain; charset=utf-8",  # LICENSE, NOTICE
}

# What each page serves, by the name in its URL: the files are listed, never looked up from the path.
UI_FILES = (
    "index.html",
    "inspector.css",
    "favicon.svg",
    # the page's ES modules: inspector.js wires the page and names what each of the others holds
    "inspector.js",
    "state.js",
    "text.js",
    "feedback.js",
    "api.js",
    "session.js",
    "contacts.js",
    "search.js",
    "contact.js",
    "channels.js",
    "live.js",
    "writes.js",
)
DOCS_FILES = (
    "index.html",
    "docs.js",
    "docs.css",
    "swagger-ui-bundle.js",
    "swagger-ui.css",
    "LICENSE",
    "NOTICE",
    "swagger-ui-bundle.js.LICENSE.txt",
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes  # sent to a browser that takes gzip: Swagger UI's 1.7 MB script is 0.5 MB so
    media_type: str
    etag: str


@cache
def asset(folder: str, name: str) -> Asset:
    """A shipped file, read (and compressed) once, on its first request rather than at import."""
    body = resources.files("chatdock.server.http").joinpath("static", folder, name).read_bytes()
    suffix = name[name.rfind(".") :] if "." in name else ""
    return Asset(body, gzip.compress(body, mtime=0), _TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def _headers(policy: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }


def _served(request: Request, folder: str, name: str, policy: str) -> Response:
    """The file with its security headers; a browser that holds this version gets 304 (it asks each time, so
    an upgraded chatdock's files are used at once)."""
    found = asset(folder, name)
    headers = {**_headers(policy), "ETag": found.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") == found.etag:
        return Response(status_code=304, headers=headers)
    if takes_gzip(request.headers.get("accept-encoding", "")):
        headers["Content-Encoding"] = "gzip"
        return Response(found.gzipped, media_type=found.media_type, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)


def takes_gzip(accepted: str) -> bool:
    """Whether an Accept-Encoding header takes gzip (RFC 9110 §12.5.3): named, or `*`, with a weight above 0;
    `gzip;q=0` refuses it."""
    weights: dict[str, float] = {}
    for item in accepted.lower().split(","):
        coding, *parameters = (part.strip() for part in item.split(";"))
        weight = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0  # a weight that cannot be read takes nothing
        if coding:
            weights[coding] = weight
    named = weights.get("gzip", weights.get("x-gzip"))
    return (named if named is not None else weights.get("*", 0.0)) > 0


def _missing(policy: str) -> JSONResponse:
    return JSONResponse(
        {"error": "Not found", "message": "no such file; the inspector is at /ui and the API's docs at /docs"},
        status_code=404,
        headers=_headers(policy),
    )


def add_pages(app: FastAPI, read_only: bool) -> None:
    """/ui, /ui/config.json and /ui/{asset}; /docs and /docs/{asset}: outside the OpenAPI document."""

    @app.get("/ui", include_in_schema=False)
    async def inspector(request: Request) -> Response:
        return _served(request, "ui", "index.html", UI_POLICY)

    @app.get("/ui/config.json", include_in_schema=False)
    async def inspector_config() -> JSONResponse:
        """What the page cannot learn from the routes it may call: whether this server takes writes."""
        return JSONResponse({"read_only": read_only}, headers={**_headers(UI_POLICY), "Cache-Control": "no-store"})

    @app.get("/ui/{name}", include_in_schema=False)
    async def inspector_file(request: Request, name: str) -> Response:
        if name not in UI_FILES:
            return _missing(UI_POLICY)
        return _served(request, "ui", name, UI_POLICY)

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        return _served(request, "docs", "index.html", DOCS_POLICY)

    @app.get("/docs/{name}", include_in_schema=False)
    async def docs_file(request: Request, name: str) -> Response:
        if name not in DOCS_FILES:
            return _missing(DOCS_POLICY)
        return _served(request, "docs", name, DOCS_POLICY)
