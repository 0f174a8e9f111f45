"""Reading request bodies under limits: JSON documents, raw images and multipart uploads.

aiohttp's `client_max_size` only guards `request.read()`/`post()`; multipart parts are streamed, so the
caps are applied here while reading, before anything large is held in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from proxy.errors import BadRequest, PayloadTooLarge, UnsupportedType

# A JSON request holds at most a batch of URLs: 100 URLs of 4 KiB is 400 KiB. Anything bigger is abuse.
MAX_JSON_BYTES = 1 * 2**20
_CHUNK = 64 * 1024
# What aiohttp's multipart reader raises on a malformed body (bad part headers, a missing boundary, ...).
_MALFORMED = (ValueError, AssertionError, HttpProcessingError)


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


async def read_capped(request: web.Request, limit: int, what: str = "request body") -> bytes:
    """The whole body, refusing (413) as soon as it passes `limit` bytes, declared or not."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"{what} is {request.content_length} bytes, over the {limit} byte limit")
    body = bytearray()
    async for chunk in request.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"{what} exceeds the {limit} byte limit")
    return bytes(body)


async def read_json(request: web.Request, *, limit: int = MAX_JSON_BYTES) -> Any:
    """The body parsed as JSON (whatever the declared type, as invertornot.com's FastAPI does); 400 if not."""
    raw = await read_capped(request, min(limit, MAX_JSON_BYTES), "JSON body")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"request body is not valid JSON: {error}", code="invalid_json") from None


def string_list(value: Any, what: str, *, limit: int) -> list[str]:
    """A JSON array of strings with at most `limit` items; 400/413 otherwise."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadRequest(f"{what} must be a JSON array of strings")
    if len(value) > limit:
        raise PayloadTooLarge(f"{len(value)} {what} in one request; the limit is {limit}", code="too_many_items")
    return value


async def read_uploads(
    request: web.Request, *, field: str | None, max_files: int, max_file_bytes: int, max_total_bytes: int
) -> list[Upload]:
    """The files of a multipart/form-data body (only parts named `field`, unless it is None)."""
    if request.content_type != "multipart/form-data":
        raise UnsupportedType("expected a multipart/form-data body")
    if request.content_length is not None and request.content_length > max_total_bytes:
        raise PayloadTooLarge(f"upload is {request.content_length} bytes, over the {max_total_bytes} byte limit")
    try:
        return await _read_parts(request, field, max_files, max_file_bytes, max_total_bytes)
    except _MALFORMED as error:
        raise BadRequest(f"malformed multipart body: {error}") from None


async def _read_parts(
    request: web.Request, field: str | None, max_files: int, max_file_bytes: int, max_total_bytes: int
) -> list[Upload]:
    reader = await request.multipart()
    uploads: list[Upload] = []
    total = 0
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not supported")
        if field is not None and part.name != field:
            await part.release()  # other form fields are ignored, as a form-handling server would
            continue
        if len(uploads) == max_files:
            raise PayloadTooLarge(f"more than {max_files} files in one upload", code="too_many_files")
        data = bytearray()
        while chunk := await part.read_chunk(_CHUNK):
            data += chunk
            total += len(chunk)
            if len(data) > max_file_bytes:
                raise PayloadTooLarge(f"file {part.filename or len(uploads) + 1} exceeds {max_file_bytes} bytes")
            if total > max_total_bytes:
                raise PayloadTooLarge(f"upload exceeds the {max_total_bytes} byte limit")
        uploads.append(Upload(part.filename, bytes(data)))
    if not uploads:
        wanted = f"a part named {field!r}" if field else "at least one file"
        raise BadRequest(f"the multipart body has no files; expected {wanted}")
    return uploads
