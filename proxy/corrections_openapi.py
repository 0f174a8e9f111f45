"""OpenAPI path items of the corrections, review, labelling and reload routes, merged by `proxy.openapi`."""

from __future__ import annotations

from typing import Any

from proxy.corrections_routes import MAX_LISTED, MAX_NOTE_CHARS
from proxy.labelling import MAX_LABELS, MAX_PAGE, QUEUES
from proxy.settings import Settings

_JSON = "application/json"
_SHA256 = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]

SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token from --api-token / INVERTORNOT_API_TOKENS.",
    }
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/E{status}"} for status in (*statuses, 429, 500)}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": list(properties) if required is None else required, "properties": properties}


_CORRECTION = _object(
    {
        "id": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "sha256": {"type": "string"},
        "invert": {"type": "boolean", "description": "The answer the correction asks for."},
        "url": _NULLABLE_STRING,
        "note": {"type": "string"},
        "submitted_by": {"type": "string", "description": "The API token's name, or 'anonymous'."},
        "trusted": {"type": "boolean"},
        "origin": {"type": "string", "enum": ["api", "compat"]},
        "answered_model": {**_NULLABLE_STRING, "description": "The model version that answered when reported."},
        "answered_p_invert": {"type": ["number", "null"]},
        "status": {"type": "string", "enum": ["pending", "accepted", "rejected"]},
        "decided_by": _NULLABLE_STRING,
        "decided_at": {"type": ["string", "null"], "format": "date-time"},
    }
)

_QUEUE_ITEM = _object(
    {
        "sha256": {"type": "string"},
        "image": {"type": "string", "description": "Path of the stored image (needs the token)."},
        "url": _NULLABLE_STRING,
        "p_invert": {"type": "number"},
        "model_invert": {"type": "boolean"},
        "suggested_invert": {"type": "boolean", "description": "Review queue: what the newest report asks for."},
        "correction_ids": {"type": "array", "items": {"type": "integer"}},
        "label": {"type": ["boolean", "null"], "description": "The image's current label, if any."},
    },
    required=["sha256", "image"],
)


def openapi_paths(settings: Settings) -> dict[str, Any]:
    limited = (
        f" Anonymous clients may send {settings.correction_rate_limit_per_minute} per minute "
        f"(burst {settings.correction_rate_limit_burst})."
        if settings.correction_rate_limit_per_minute
        else ""
    )
    correction_body = {
        "type": "object",
        "required": ["invert"],
        "properties": {
            "url": {"type": "string", "description": "The image's URL; it is fetched and kept."},
            "sha256": {**_SHA256, "description": "The image's SHA-256 (anonymous: only images this server keeps)."},
            "invert": {"type": "boolean", "description": "The right answer for this image."},
            "note": {"type": "string", "maxLength": MAX_NOTE_CHARS},
        },
        "anyOf": [{"required": ["url"]}, {"required": ["sha256"]}],
    }
    return {
        "/api/v1/corrections": {
            "post": {
                "operationId": "submitCorrection",
                "summary": "Report the right answer for an image. With an API token it applies at once; "
                "anonymous reports wait for review." + limited,
                "security": [{}, *_BEARER],
                "requestBody": {"required": True, "content": {_JSON: {"schema": correction_body}}},
                "responses": {
                    "202": _json(
                        _object(
                            {
                                "id": {"type": "integer"},
                                "status": {"type": "string", "enum": ["pending", "accepted"]},
                                "sha256": {"type": "string"},
                            }
                        ),
                        "Stored durably: accepted (token) or pending review (anonymous).",
                    ),
                    **_errors(400, 401, 403, 404, 413, 415, 422, 502, 503, 504),
                },
            },
            "get": {
                "operationId": "listCorrections",
                "summary": "Corrections in id order (the review queue by default); page with `after`.",
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["pending", "accepted", "rejected", "all"]},
                    },
                    {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LISTED},
                    },
                ],
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "corrections": {"type": "array", "items": _CORRECTION},
                                "next_after": {"type": ["integer", "null"]},
                            }
                        ),
                        "A page of corrections; `next_after` continues it (null: no more).",
                    ),
                    **_errors(400, 401),
                },
            },
        },
        "/api/v1/corrections/{id}/review": {
            "post": {
                "operationId": "reviewCorrection",
                "summary": "Accept (it becomes a label at once) or reject a pending correction.",
                "security": _BEARER,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {"schema": _object({"decision": {"type": "string", "enum": ["accept", "reject"]}})}
                    },
                },
                "responses": {"200": _json(_CORRECTION, "The decided correction."), **_errors(400, 401, 404, 409, 413)},
            }
        },
        "/api/v1/admin/reload": {
            "post": {
                "operationId": "reloadModel",
                "summary": "Load the configured model again (e.g. after `invertornot train`) without dropping "
                "requests; answers of the old model are never served again. SIGHUP does the same.",
                "security": _BEARER,
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "model": {"type": "string"},
                                "previous": {"type": "string"},
                                "changed": {"type": "boolean"},
                            }
                        ),
                        "The model now answering.",
                    ),
                    **_errors(401, 503),
                },
            }
        },
        "/label": {
            "get": {
                "operationId": "labellingPage",
                "summary": "The labelling page (it asks for an API token).",
                "responses": {
                    "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
                    **_errors(404),
                },
            }
        },
        "/api/v1/label/queue": {
            "get": {
                "operationId": "labelQueue",
                "summary": "Images to label: the review queue, the most uncertain recent answers, or a random audit.",
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "queue",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": list(QUEUES)},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                    },
                ],
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "queue": {"type": "string", "enum": list(QUEUES)},
                                "model": {"type": "string"},
                                "threshold": {"type": "number"},
                                "pending": {"type": "integer"},
                                "items": {"type": "array", "items": _QUEUE_ITEM},
                            }
                        ),
                        "One page of the queue.",
                    ),
                    **_errors(400, 401),
                },
            }
        },
        "/api/v1/label/images/{sha256}": {
            "get": {
                "operationId": "labelImage",
                "summary": "A stored image of a correction or label.",
                "security": _BEARER,
                "parameters": [{"name": "sha256", "in": "path", "required": True, "schema": _SHA256}],
                "responses": {
                    "200": {
                        "description": "The image bytes.",
                        "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **_errors(400, 401, 404),
                },
            }
        },
        "/api/v1/labels": {
            "post": {
                "operationId": "postLabels",
                "summary": "Store decisions (who/when recorded); they apply at once and settle pending corrections.",
                "security": _BEARER,
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["labels"],
                                "properties": {
                                    "queue": {"type": "string", "enum": list(QUEUES)},
                                    "labels": {
                                        "type": "array",
                                        "maxItems": MAX_LABELS,
                                        "items": _object({"sha256": _SHA256, "invert": {"type": "boolean"}}),
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "stored": {"type": "integer"},
                                "accepted": {"type": "array", "items": {"type": "integer"}},
                                "rejected": {"type": "array", "items": {"type": "integer"}},
                            }
                        ),
                        "Stored; the corrections these labels accepted and rejected.",
                    ),
                    **_errors(400, 401, 413),
                },
            }
        },
    }
