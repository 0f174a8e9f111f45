"""The browser-facing files: the demo page at `/`, its assets under `/static/`, and the userscript, site
snippet and CSS under `/userscript/`, so users install them from their own server.

Files are read once when the routes are added and served from memory with an ETag (`no-cache`: browsers
revalidate, so an upgrade shows at once and an unchanged file costs a 304). Only names found at startup are
served, so a request can never reach another file. The userscript is handed out pointing at the server that
served it (see `personalise_userscript`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from yarl import URL

from proxy.appkeys import SETTINGS
from proxy.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The userscript is not a Python package: it sits beside `proxy/` in a source checkout and is absent from
# an installed wheel, where its routes answer 404 with a JSON error.
USERSCRIPT_DIR = Path(__file__).resolve().parent.parent / "userscript"
USERSCRIPT_FILES = ("invertornot.user.js", "invertornot.js", "invertornot.css")
USERSCRIPT_NAME = "invertornot.user.js"
# The address the userscript ships with (the server's default listen address); replaced when served.
DEFAULT_ORIGIN = "http://127.0.0.1:8080"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The demo page loads only its own files, calls only this API, and shows images from anywhere (a pasted
# URL) or from the user's disk (blob:); nothing from a CDN.
DEMO_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: http: https:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_NAME = "[A-Za-z0-9][A-Za-z0-9._-]*"  # also keeps "." and ".." out
_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_CONNECT_LINE = re.compile(r"^// @connect( +)127\.0\.0\.1$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str


def load_assets(directory: Path, names: Iterable[str] | None = None) -> dict[str, Asset]:
    """The files of `directory` with a known type (only `names`, if given); none if it does not exist."""
    if not directory.is_dir():
        return {}
    wanted = None if names is None else set(names)
    assets = {}
    for path in sorted(directory.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if (
            content_type
            and path.is_file()
            and re.fullmatch(_NAME, path.name)
            and (wanted is None or path.name in wanted)
        ):
            assets[path.name] = Asset(path.read_bytes(), content_type)
    return assets


def public_origin(request: web.Request, *, trust_forwarded: bool) -> str | None:
    """The scheme and host clients use to reach this server, or None when the headers are implausible.
    Behind a reverse proxy (trusted only when the settings say so) X-Forwarded-Proto/-Host tell."""
    scheme, host = request.scheme, request.host
    if trust_forwarded:
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip().lower()
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    if scheme not in ("http", "https") or not _HOST.fullmatch(host):
        return None
    return f"{scheme}://{host}"


def personalise_userscript(text: str, origin: str) -> str:
    """The userscript talking to (and updating from) `origin` instead of the default address, with that host
    allowed in `@connect` so userscript managers don't ask."""
    if origin == DEFAULT_ORIGIN:
        return text
    hostname = URL(origin).raw_host or ""
    text = text.replace(DEFAULT_ORIGIN, origin)
    if hostname in ("127.0.0.1", "localhost"):
        return text  # already listed
    return _CONNECT_LINE.sub(lambda match: f"{match.group(0)}\n// @connect{match.group(1)}{hostname}", text, count=1)


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _respond(
    request: web.Request, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> web.Response:
    etag = _etag(body)
    all_headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", **(headers or {})}
    wanted = request.headers.get("If-None-Match", "")
    if any(tag.strip() in (etag, "*") for tag in wanted.split(",")):
        return web.Response(status=304, headers=all_headers)
    all_headers["Content-Type"] = content_type
    return web.Response(body=body, headers=all_headers)


def _page_headers(content_type: str) -> dict[str, str]:
    return {"Content-Security-Policy": DEMO_CSP} if content_type.startswith("text/html") else {}


def add_static_routes(
    app: web.Application, *, static_dir: Path = STATIC_DIR, userscript_dir: Path = USERSCRIPT_DIR
) -> None:
    """Add `GET /`, `GET /static/{name}` and `GET /userscript/{name}` (documented by `openapi_paths`)."""
    static = load_assets(static_dir)
    userscripts = load_assets(userscript_dir, USERSCRIPT_FILES)

    async def index(request: web.Request) -> web.Response:
        page = static.get("index.html")
        if page is None:
            raise NotFound("the demo page is not part of this installation", code="not_installed")
        return _respond(request, page.body, page.content_type, _page_headers(page.content_type))

    async def static_file(request: web.Request) -> web.Response:
        asset = static.get(request.match_info["name"])
        if asset is None:
            raise NotFound(f"no static file {request.match_info['name']!r}", code="not_found")
        return _respond(request, asset.body, asset.content_type, _page_headers(asset.content_type))

    async def userscript_file(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        asset = userscripts.get(name)
        if asset is None:
            if not userscripts:
                raise NotFound(
                    "the userscript is not part of this installation (it ships in the source repository)",
                    code="not_installed",
                )
            raise NotFound(f"no userscript file {name!r}; try {', '.join(USERSCRIPT_FILES)}", code="not_found")
        if name != USERSCRIPT_NAME:
            return _respond(request, asset.body, asset.content_type)
        settings = request.app.get(SETTINGS)
        trust = bool(settings and settings.trust_forwarded_for)
        origin = public_origin(request, trust_forwarded=trust)
        body = asset.body if origin is None else personalise_userscript(asset.body.decode(), origin).encode()
        vary = {"Vary": "X-Forwarded-Host, X-Forwarded-Proto"} if trust else {}
        return _respond(request, body, asset.content_type, vary)

    router = app.router
    # No HEAD routes: every route must be documented in /openapi.json, and no client needs HEAD here.
    router.add_get("/", index, allow_head=False)
    router.add_get(f"/static/{{name:{_NAME}}}", static_file, allow_head=False)
    router.add_get(f"/userscript/{{name:{_NAME}}}", userscript_file, allow_head=False)


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI path items of these routes, merged into the service's document by `proxy.openapi`."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": f"^{_NAME}$"}}
    not_modified = {"description": "Not modified (If-None-Match matched the ETag)."}
    errors = {str(status): {"$ref": f"#/components/responses/E{status}"} for status in (404, 429, 500)}

    def text(*types: str) -> dict[str, Any]:
        return {type_: {"schema": {"type": "string"}} for type_ in types}

    return {
        "/": {
            "get": {
                "operationId": "demoPage",
                "summary": "The demo page: upload an image or paste a URL, see the verdict.",
                "responses": {
                    "200": {"description": "The page.", "content": text("text/html")},
                    "304": not_modified,
                    **errors,
                },
            }
        },
        "/static/{name}": {
            "get": {
                "operationId": "staticFile",
                "summary": "The demo page's scripts and styles.",
                "parameters": [name],
                "responses": {
                    "200": {"description": "The file.", "content": text("text/html", "text/javascript", "text/css")},
                    "304": not_modified,
                    **errors,
                },
            }
        },
        "/userscript/{name}": {
            "get": {
                "operationId": "userscriptFile",
                "summary": (
                    "The userscript (invertornot.user.js, set up for this server), the site snippet "
                    "(invertornot.js) and its CSS (invertornot.css)."
                ),
                "parameters": [name],
                "responses": {
                    "200": {"description": "The file.", "content": text("text/javascript", "text/css")},
                    "304": not_modified,
                    **errors,
                },
            }
        },
    }
