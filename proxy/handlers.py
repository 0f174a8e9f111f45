"""HTTP handlers of the v1 API and the service endpoints; thin: parse, ask `VerdictService`, render."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from classifier.decode import ImageError
from classifier.verdict import Verdict
from proxy.appkeys import CLASSIFIER, METRICS, OPENAPI, SERVICE, SETTINGS, STARTED
from proxy.bodies import read_capped, read_json, read_uploads, string_list
from proxy.errors import ApiError, BadRequest, NotFound, UnsupportedType, error_body
from proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.middleware import api_error_for_image
from proxy.verdicts import Classified

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_RAW_IMAGE_TYPES = ("image/", "application/octet-stream")


def verdict_json(verdict: Verdict, *, cached: bool, url: str | None = None) -> dict[str, Any]:
    """The v1 verdict object (the `url` key only for URL lookups)."""
    body: dict[str, Any] = {} if url is None else {"url": url}
    body.update(
        invert=verdict.invert,
        p_invert=verdict.p_invert,
        confidence=verdict.confidence,
        sha256=verdict.sha256,
        model=verdict.model,
        cached=cached,
        source=verdict.source,
    )
    return body


def require_verdict(classified: Classified) -> Verdict:
    if isinstance(classified.result, ImageError):
        raise classified.result  # rendered by the error middleware as 415/413/422
    return classified.result


def item_error(error: ApiError | ImageError, **ids: str | None) -> dict[str, Any]:
    """One failed item of a batch: its identifier(s) and the usual error object."""
    if isinstance(error, ImageError):
        error = api_error_for_image(error)
    return _item(ids, error.code, error.message)


def _item(ids: dict[str, str | None], code: str, message: str) -> dict[str, Any]:
    return {**{key: value for key, value in ids.items() if value is not None}, **error_body(code, message)}


async def settle(work: Awaitable[dict[str, Any]], **ids: str | None) -> dict[str, Any]:
    """Run one item of a batch; its failure becomes its own result and never fails the batch."""
    try:
        return await work
    except (ApiError, ImageError) as error:
        return item_error(error, **ids)
    except Exception:
        log.exception("unexpected error in a batch item %s", ids)
        return _item(ids, "internal_error", "internal server error; it has been logged")


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    return any(tag.strip() == "*" or tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


def cacheable_verdict(request: web.Request, body: dict[str, Any], verdict: Verdict, max_age: int) -> web.Response:
    """A verdict with validators: weak, because `cached` differs between otherwise equal answers."""
    # The answer, not just the image and model, is in the tag: an accepted correction flips the answer
    # for the same image and model, and a revalidating client must not be told "304, keep the old one".
    tag = f"{verdict.sha256}.{verdict.model}.{verdict.source}.{int(verdict.invert)}"
    headers = {"ETag": f'W/"{tag}"', "Cache-Control": f"public, max-age={max_age}"}
    if _etag_matches(request.headers.get("If-None-Match"), headers["ETag"]):
        return web.Response(status=304, headers=headers)
    return web.json_response(body, headers=headers)


# -- v1 ---------------------------------------------------------------------------------------------------


async def classify_url(request: web.Request) -> web.Response:
    """GET /api/v1/classify?url=U"""
    url = request.query.get("url")
    if not url:
        raise BadRequest("the url query parameter is required", code="missing_url")
    classified = await request.app[SERVICE].classify_url(url)
    verdict = require_verdict(classified)
    settings = request.app[SETTINGS]
    # The image behind a URL may change once the URL cache entry expires; don't let clients keep it longer.
    max_age = int(min(settings.cache_max_age, settings.url_cache_ttl))
    return cacheable_verdict(request, verdict_json(verdict, cached=classified.cached, url=url), verdict, max_age)


async def classify_urls(request: web.Request) -> web.Response:
    """POST /api/v1/classify {"urls": [...]}"""
    body = await read_json(request, limit=request.app[SETTINGS].max_request_bytes)
    if not isinstance(body, dict) or "urls" not in body:
        raise BadRequest('expected a JSON object {"urls": [...]}')
    urls = string_list(body["urls"], "urls", limit=request.app[SETTINGS].max_urls_per_batch)
    service = request.app[SERVICE]

    async def one(url: str) -> dict[str, Any]:
        classified = await service.classify_url(url)
        return verdict_json(require_verdict(classified), cached=classified.cached, url=url)

    results = await asyncio.gather(*(settle(one(url), url=url) for url in urls))
    return web.json_response({"results": results})


async def classify_image(request: web.Request) -> web.Response:
    """POST /api/v1/classify/image: a raw image body, or several files as multipart/form-data."""
    settings = request.app[SETTINGS]
    service = request.app[SERVICE]
    if request.content_type == "multipart/form-data":
        uploads = await read_uploads(
            request,
            field=None,
            max_files=settings.max_files_per_upload,
            max_file_bytes=settings.max_image_bytes,
            max_total_bytes=settings.max_request_bytes,
        )

        async def one(data: bytes, filename: str | None) -> dict[str, Any]:
            classified = await service.classify_bytes(data)
            body = verdict_json(require_verdict(classified), cached=classified.cached)
            return body if filename is None else {"filename": filename, **body}

        results = await asyncio.gather(
            *(settle(one(upload.data, upload.filename), filename=upload.filename) for upload in uploads)
        )
        return web.json_response({"results": results})
    if not request.content_type.startswith(_RAW_IMAGE_TYPES):
        raise UnsupportedType("send the image as the body with an image/* Content-Type, or as multipart/form-data")
    data = await read_capped(request, settings.max_image_bytes, "image")
    if not data:
        raise BadRequest("the request body is empty; send the image bytes", code="empty_body")
    classified = await service.classify_bytes(data)
    verdict = require_verdict(classified)
    return cacheable_verdict(request, verdict_json(verdict, cached=classified.cached), verdict, settings.cache_max_age)


async def verdict_by_hash(request: web.Request) -> web.Response:
    """GET /api/v1/verdicts/{sha256}"""
    sha256 = request.match_info["sha256"].lower()
    if not _SHA256.fullmatch(sha256):
        raise BadRequest("expected a SHA-256 as 64 hexadecimal digits", code="invalid_sha256")
    classified = await request.app[SERVICE].lookup_image(sha256)  # other instances' too (shared cache)
    if classified is None:
        raise NotFound("no image with this SHA-256 has been classified by this model", code="unknown_image")
    verdict = require_verdict(classified)
    body = verdict_json(verdict, cached=True)
    return cacheable_verdict(request, body, verdict, request.app[SETTINGS].cache_max_age)


# -- service ------------------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    caches = service.caches
    return web.json_response(
        {
            "status": "ok",
            "model": request.app[CLASSIFIER].version,
            "uptime_s": round(time.monotonic() - request.app[STARTED], 3),
            "cache_entries": {"urls": len(caches.urls), "verdicts": len(caches.verdicts)},
            "queued_images": service.queued,
        },
        headers={"Cache-Control": "no-store"},
    )


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[METRICS].render(),
        headers={"Content-Type": METRICS_CONTENT_TYPE, "Cache-Control": "no-store"},
    )


async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(request.app[OPENAPI]), content_type="application/json")
