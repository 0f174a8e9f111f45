"""The app's edge: one JSON error shape for every failure, request metrics, and CORS for browser clients.

`edge_middleware` turns everything a handler can raise into `{"error": {"code", "message"}}`: our
`ApiError`s, the classifier's `ImageError`s (422, or 415/413 for format and size), aiohttp's own HTTP
exceptions (unknown route 404, wrong method 405, body over `client_max_size` 413), and anything unexpected
(500 with a generic message; the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from classifier.decode import ImageError
from proxy.errors import ApiError, PayloadTooLarge, Undecodable, UnsupportedType, error_body
from proxy.metrics import Metrics

log = logging.getLogger(__name__)

# Codes for aiohttp's own HTTP exceptions (the ones raised outside our handlers).
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_type",
    431: "headers_too_large",
}
# The API is public and cookie-free, so any page may call it (gwern.net's popups call invertornot.com
# from the reader's browser); no credentials are ever honoured, so "*" exposes nothing.
CORS_HEADERS = {"Access-Control-Allow-Origin": "*"}
_PREFLIGHT_MAX_AGE = "86400"
# Metric labels must stay few: a client can send any method token.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def api_error_for_image(error: ImageError) -> ApiError:
    """The HTTP form of an image the classifier cannot judge; the classifier's code is kept."""
    if error.code == "unsupported_format":
        return UnsupportedType(error.message, code=error.code)
    if error.code == "too_many_pixels":
        return PayloadTooLarge(error.message, code=error.code)
    return Undecodable(error.message, code=error.code)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        error_body(code, message), status=status, headers={"Cache-Control": "no-store", **(headers or {})}
    )


def _render_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(exc.status, "bad_request" if exc.status < 500 else "internal_error")
    if exc.status == 404:
        message = f"no such endpoint: {request.path}"
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        message = f"{request.method} is not allowed here; use {', '.join(sorted(exc.allowed_methods))}"
    else:
        message = exc.reason
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return error_response(exc.status, code, message, headers)


def error_to_response(request: web.Request, error: Exception) -> web.Response:
    """The JSON error response for anything a handler raised."""
    if isinstance(error, ApiError):
        return error_response(error.status, error.code, error.message, getattr(error, "headers", None))
    if isinstance(error, ImageError):
        mapped = api_error_for_image(error)
        return error_response(mapped.status, mapped.code, mapped.message)
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error  # redirects and 304s are answers, not errors
        return _render_http_exception(request, error)
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=error)
    return error_response(500, "internal_error", "internal server error; it has been logged")


def _preflight(allowed_methods: set[str]) -> web.Response:
    return web.Response(
        status=204,
        headers={
            **CORS_HEADERS,
            "Access-Control-Allow-Methods": ", ".join(sorted(allowed_methods)),
            # Authorization: trusted clients send their corrections token from other origins.
            "Access-Control-Allow-Headers": "Content-Type, Authorization",
            "Access-Control-Max-Age": _PREFLIGHT_MAX_AGE,
        },
    )


def edge_middleware(metrics: Metrics) -> Middleware:
    """Outermost, and one layer on purpose (it runs on every cached lookup): errors rendered as JSON, CORS
    preflights and headers, request counts and latency by route."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        match_info = request.match_info
        response: web.StreamResponse
        if request.method == "OPTIONS" and isinstance(match_info.http_exception, web.HTTPMethodNotAllowed):
            response = _preflight(match_info.http_exception.allowed_methods)
        else:
            try:
                response = await handler(request)
            except Exception as error:
                response = error_to_response(request, error)
            response.headers.update(CORS_HEADERS)
        resource = match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in _KNOWN_METHODS else "other"
        metrics.requests.inc(method, route, str(response.status))
        metrics.latency.observe(time.perf_counter() - started, route)
        return response

    return middleware
