"""The service's one error hierarchy: every failure a client can see carries an HTTP status and a stable code.

Handlers and helpers raise these; one middleware renders them with `error_body`, so clients always get
`{"error": {"code": ..., "message": ...}}`. Codes are part of the API: never rename one, add a new one.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ApiError(Exception):
    """A failure to report to the API client as `status` with a machine-readable `code`."""

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"

    def to_body(self) -> dict[str, Any]:
        return error_body(self.code, self.message)


class BadRequest(ApiError):
    status = 400
    default_code = "bad_request"


class AddressRefused(ApiError):
    """The URL points (literally or through DNS) at an address this server must not connect to."""

    status = 403
    default_code = "address_refused"


class NotFound(ApiError):
    """The upstream answered 404 or 410 (or a local record does not exist)."""

    status = 404
    default_code = "not_found"


class PayloadTooLarge(ApiError):
    status = 413
    default_code = "too_large"


class UnsupportedType(ApiError):
    status = 415
    default_code = "unsupported_type"


class Undecodable(ApiError):
    status = 422
    default_code = "undecodable_image"


class TooManyRequests(ApiError):
    status = 429
    default_code = "rate_limited"


class UpstreamError(ApiError):
    """The upstream misbehaved: an error status, a reset connection, a bad redirect, a TLS failure."""

    status = 502
    default_code = "upstream_error"


class UpstreamTimeout(ApiError):
    status = 504
    default_code = "upstream_timeout"


def error_body(code: str, message: str) -> dict[str, Any]:
    """The single JSON shape of every error response."""
    return {"error": {"code": code, "message": message}}
