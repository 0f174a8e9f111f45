"""invertornot.com-compatible endpoints, so its existing clients work by changing only the host.

Shapes follow that service (FastAPI, `api/main.py` of mattismegevand/invertornot and its docs page):

* `POST /api/url`    body: JSON array of image URLs  -> `[{"invert", "sha1", "error", "url"}, ...]`
* `POST /api/file`   multipart, repeated field `files` -> `[{"invert", "sha1", "error", "filename"}, ...]`
* `POST /api/sha1`   body: JSON array of SHA-1 hex   -> `[{"invert", "sha1", "error"}, ...]`
* `POST /api/correction` body: JSON array of URLs that were misclassified -> `null` (HTTP 200); each becomes
  a correction suggesting the opposite of our answer (anonymous ones wait for review; see corrections_routes)

`invert` is 1 (invert), 0 (don't) or -1 (no answer: `error` says why); `error` is "" on success. Results
are in input order and a failing item never fails the request. Malformed requests get our usual error
object (the original answered FastAPI's 422 validation errors, which clients cannot rely on either).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from classifier.decode import ImageError
from proxy.appkeys import SERVICE, SETTINGS
from proxy.bodies import read_json, read_uploads, string_list
from proxy.corrections_routes import report_wrong_verdict, reporter, spend_rate_budget
from proxy.errors import ApiError
from proxy.verdicts import Classified

# invertornot.com's own message for an unknown hash.
UNKNOWN_SHA1 = "No image found with the provided SHA1 hash"


def compat_result(
    *, invert: int = -1, sha1: str = "", error: str = "", url: str | None = None, filename: str | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {"invert": invert, "sha1": sha1, "error": error}
    if url is not None:
        result["url"] = url
    if filename is not None:
        result["filename"] = filename
    return result


def compat_classified(classified: Classified, *, url: str | None = None, filename: str | None = None) -> dict[str, Any]:
    if isinstance(classified.result, ImageError):
        return compat_result(sha1=classified.sha1, error=classified.result.message, url=url, filename=filename)
    return compat_result(invert=int(classified.result.invert), sha1=classified.sha1, url=url, filename=filename)


async def _string_list(request: web.Request, what: str) -> list[str]:
    """The body: a JSON array of at most `max_urls_per_batch` strings."""
    settings = request.app[SETTINGS]
    body = await read_json(request, limit=settings.max_request_bytes)
    return string_list(body, what, limit=settings.max_urls_per_batch)


async def api_url(request: web.Request) -> web.Response:
    urls = await _string_list(request, "URLs")
    service = request.app[SERVICE]

    async def one(url: str) -> dict[str, Any]:
        try:
            return compat_classified(await service.classify_url(url), url=url)
        except ApiError as error:
            return compat_result(error=error.message, url=url)

    return web.json_response(list(await asyncio.gather(*(one(url) for url in urls))))


async def api_file(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    uploads = await read_uploads(
        request,
        field="files",
        max_files=settings.max_files_per_upload,
        max_file_bytes=settings.max_image_bytes,
        max_total_bytes=settings.max_request_bytes,
    )
    service = request.app[SERVICE]

    async def one(data: bytes, filename: str | None) -> dict[str, Any]:
        if not data:
            return compat_result(error="No image provided", filename=filename)
        try:
            return compat_classified(await service.classify_bytes(data), filename=filename)
        except ApiError as error:  # overloaded: this file has no answer, the others may
            return compat_result(error=error.message, filename=filename)

    results = await asyncio.gather(*(one(upload.data, upload.filename) for upload in uploads))
    return web.json_response(list(results))


async def api_sha1(request: web.Request) -> web.Response:
    hashes = await _string_list(request, "SHA-1 hashes")
    service = request.app[SERVICE]
    results = []
    for sha1 in hashes:
        classified = service.cached_sha1(sha1)
        if classified is None:
            results.append(compat_result(sha1=sha1, error=UNKNOWN_SHA1))
        else:
            results.append(compat_classified(classified))
    return web.json_response(results)


async def api_correction(request: web.Request) -> web.Response:
    who = reporter(request)
    urls = list(dict.fromkeys(await _string_list(request, "URLs")))  # a URL reported twice is one report
    for _ in urls:
        spend_rate_budget(request, who)  # each URL is a correction: a long list is not a way around the limit
    # Every image is fetched and kept, so reports stay reviewable; one that cannot be fetched is dropped,
    # as this API has no per-URL answer to report it in.
    await asyncio.gather(*(report_wrong_verdict(request.app, who, url) for url in urls))
    return web.json_response(None)
