"""`GET /api/v1/page?url=U`: the page proxy's route, its lifetime in the app, and its OpenAPI entry.

The answer is meant to be shown on its own (a popup, an iframe), so it carries a strict policy: a
`sandbox` CSP without `allow-scripts` (no script runs even if the sanitiser missed one), images from
https and data: only, inline styles allowed (Wikipedia's markup needs them), no referrer leaked to image
hosts, and no content sniffing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiohttp import web

from proxy.appkeys import FETCHER, METRICS, SERVICE, SETTINGS
from proxy.errors import ApiError, BadRequest
from proxy.pages import JSON_TYPE, ImageResult, Outcome, PageProxy, ProxiedPage
from proxy.rewrite import RewriteOptions
from proxy.settings import Settings

PAGES = web.AppKey("page_proxy", PageProxy)
PAGE_PATH = "/api/v1/page"
PAGE_CSP = "sandbox; default-src 'none'; img-src https: data:; style-src 'unsafe-inline'"
SECURITY_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
IMAGES_HEADER = "X-InvertOrNot-Images"
FORMATS = ("html", "images")
# A client asking for a longer wait than the server's default: a minute is past any use for a popup.
MAX_CLIENT_DEADLINE_MS = 60_000


def setup(app: web.Application) -> None:
    """The page proxy's context and route. Call after the context that builds the `VerdictService` is
    appended: the proxy uses it, and must stop (cancelling its background work) before it does."""
    app.cleanup_ctx.append(_pages_ctx)
    app.router.add_get(PAGE_PATH, proxy_page, allow_head=False)


async def _pages_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pages = PageProxy(
        app[SERVICE],
        app[FETCHER],
        app[METRICS],
        max_images=settings.max_images_per_page,
        concurrency=settings.page_concurrency,
        max_background=settings.max_background_images,
        rendered_bytes=settings.page_render_cache_bytes,
        options=RewriteOptions(invert_class=settings.invert_class, invert_not_class=settings.invert_not_class),
    )
    app[PAGES] = pages
    try:
        yield
    finally:
        await pages.close()


def max_deadline_ms(settings: Settings) -> int:
    """The longest deadline a client may ask for (the fetch timeouts bound the real wait anyway)."""
    return int(max(settings.page_deadline_ms, MAX_CLIENT_DEADLINE_MS))


def _deadline_ms(request: web.Request, settings: Settings) -> int:
    raw = request.query.get("deadline_ms")
    if raw is None:
        return settings.page_deadline_ms
    ceiling = max_deadline_ms(settings)
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= ceiling:
        raise BadRequest(f"deadline_ms must be an integer from 0 to {ceiling}", code="invalid_deadline")
    return value


async def proxy_page(request: web.Request) -> web.Response:
    """GET /api/v1/page?url=U[&deadline_ms=N][&format=html|images]"""
    started = asyncio.get_running_loop().time()  # the deadline counts from the request, page fetch included
    settings = request.app[SETTINGS]
    url = request.query.get("url")
    if not url:
        raise BadRequest("the url query parameter is required", code="missing_url")
    deadline = started + _deadline_ms(request, settings) / 1000
    wanted = request.query.get("format", "html")
    if wanted not in FORMATS:
        raise BadRequest(f"format must be one of {', '.join(FORMATS)}", code="invalid_format")
    page = await request.app[PAGES].proxy(url, deadline=deadline)
    headers = response_headers(page, settings)
    if wanted == "images":
        report = {
            "url": page.url,
            "complete": page.complete,
            "images": [image_report(image) for image in page.images],
        }
        return web.json_response(report, headers=headers)
    return web.Response(body=page.body, content_type=page.content_type, charset="utf-8", headers=headers)


def response_headers(page: ProxiedPage, settings: Settings) -> dict[str, str]:
    counts = summary_of_outcomes(page.images)
    headers = {**SECURITY_HEADERS, IMAGES_HEADER: ", ".join(f"{name}={n}" for name, n in counts.items())}
    if not page.complete or not settings.page_cache_max_age:
        # Pending images are classified by now or soon: the next request must come back here.
        headers["Cache-Control"] = "no-store"
    else:
        headers["Cache-Control"] = f"public, max-age={settings.page_cache_max_age}"
    return headers


def summary_of_outcomes(images: Iterable[ImageResult]) -> dict[str, int]:
    """Images per outcome, every outcome present (the X-InvertOrNot-Images header)."""
    counts = dict.fromkeys((outcome.value for outcome in Outcome), 0)
    for image in images:
        counts[image.outcome.value] += 1
    return counts


def image_report(result: ImageResult) -> dict[str, Any]:
    """The JSON description of one image's outcome (`format=images`)."""
    ref = result.ref
    body: dict[str, Any] = {"url": ref.url, "count": ref.count}
    verdict = result.verdict
    if result.outcome is Outcome.MANUAL:
        body.update(invert=bool(ref.manual), source="page-markup", markup=ref.markup)
    elif verdict is not None and result.classified is not None:
        body.update(
            invert=verdict.invert,
            p_invert=verdict.p_invert,
            confidence=verdict.confidence,
            sha256=verdict.sha256,
            model=verdict.model,
            cached=result.classified.cached,
            source=verdict.source,
        )
    elif result.outcome is Outcome.PENDING:
        body.update(invert=False, pending=True)
    else:
        error = result.error or ApiError("no verdict")
        body.update(invert=False, error={"code": error.code, "message": error.message})
    return body


def openapi_paths(settings: Settings) -> dict[str, Any]:
    """The OpenAPI path item of the page proxy, merged into the service's document by `proxy.openapi`."""
    header_docs = {
        "Content-Security-Policy": {"schema": {"type": "string", "const": PAGE_CSP}},
        "X-InvertOrNot-Images": {
            "schema": {"type": "string"},
            "description": "Images by outcome: manual, cached, classified, pending, failed.",
        },
        "Cache-Control": {"schema": {"type": "string"}, "description": "no-store while images are pending."},
    }
    image = {
        "type": "object",
        "required": ["url", "invert"],
        "properties": {
            "url": {"type": "string"},
            "count": {"type": "integer", "description": "Elements of the page showing this image."},
            "invert": {"type": "boolean"},
            "p_invert": {"type": "number"},
            "confidence": {"type": "number"},
            "sha256": {"type": "string"},
            "model": {"type": "string"},
            "cached": {"type": "boolean"},
            "source": {"type": "string", "enum": ["model", "correction", "page-markup", "heuristic"]},
            "markup": {"type": "string", "description": "The class that decided, for source page-markup."},
            "pending": {"type": "boolean", "description": "Still classifying when the deadline passed."},
            "error": {"$ref": "#/components/schemas/ErrorDetail"},
        },
    }
    report = {
        "type": "object",
        "required": ["url", "complete", "images"],
        "properties": {
            "url": {"type": "string", "description": "The page's final URL, after redirects."},
            "complete": {"type": "boolean", "description": "False while some images are pending."},
            "images": {"type": "array", "items": image},
        },
    }
    errors = {
        str(status): {"$ref": f"#/components/responses/E{status}"}
        for status in (400, 403, 404, 413, 415, 429, 500, 502, 504)
    }
    return {
        PAGE_PATH: {
            "get": {
                "operationId": "proxyPage",
                "summary": "Fetch a page (HTML or a Wikipedia REST summary), mark every image invert / invert-not.",
                "description": (
                    f"Images get the class `{settings.invert_class}` or `{settings.invert_not_class}` plus "
                    "`data-invertornot-p` and `data-invertornot-model`; manual markup on the page is kept. "
                    "Images not classified by the deadline are marked "
                    f"`{settings.invert_not_class}` with `data-invertornot-pending` and finish in the "
                    "background, so a later request is complete. Scripts and other active content are "
                    "removed and every URL is made absolute. A summary JSON gets `invert` (and `p_invert`, "
                    "`model`) on `thumbnail` and `originalimage`."
                ),
                "parameters": [
                    {
                        "name": "url",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                        "example": "https://en.wikipedia.org/api/rest_v1/page/html/Dog",
                    },
                    {
                        "name": "deadline_ms",
                        "in": "query",
                        "required": False,
                        "description": f"Answer within this many ms (default {settings.page_deadline_ms:g}).",
                        "schema": {"type": "integer", "minimum": 0, "maximum": max_deadline_ms(settings)},
                    },
                    {
                        "name": "format",
                        "in": "query",
                        "required": False,
                        "description": "html: the rewritten page (or summary JSON); images: a report per image.",
                        "schema": {"type": "string", "enum": list(FORMATS), "default": "html"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The rewritten page, the summary with verdicts, or the image report.",
                        "headers": header_docs,
                        "content": {
                            "text/html": {"schema": {"type": "string"}},
                            JSON_TYPE: {"schema": {"anyOf": [report, {"type": "object"}]}},
                        },
                    },
                    **errors,
                },
            }
        }
    }
