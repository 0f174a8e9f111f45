"""The OpenAPI 3.1 document served at /openapi.json, built from the settings so documented limits are real.

A test walks `app.router` and checks that every route is documented here and every path here is routed.
"""

from __future__ import annotations

from typing import Any

from proxy.corrections_openapi import SECURITY_SCHEMES
from proxy.corrections_openapi import openapi_paths as corrections_openapi_paths
from proxy.pages_routes import openapi_paths as pages_openapi_paths
from proxy.settings import Settings
from proxy.static_routes import openapi_paths as static_openapi_paths

_JSON = "application/json"
_SHA256 = "^[0-9a-f]{64}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


_ERROR_TEXT = {
    400: "Malformed request or URL.",
    401: "An API token is needed (Authorization: Bearer TOKEN), or the one sent is not valid.",
    403: "The URL points at an address this server refuses to contact.",
    404: "Not found (upstream 404/410, or unknown hash).",
    413: "Too large: body, image bytes or pixels, or too many items.",
    409: "Conflict: the correction was already decided.",
    415: "Unsupported content type or image format.",
    422: "The image cannot be decoded.",
    429: "Rate limited; see Retry-After.",
    500: "Internal error (logged).",
    502: "The upstream failed: error status, broken connection, bad redirect.",
    503: "Overloaded (too many images waiting for the classifier, or reports for review), or a model reload "
    "failed (the old model keeps serving); retry later.",
    504: "The upstream did not answer in time.",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/E{status}"} for status in (*statuses, 429, 500)}


_FETCH_ERRORS = (400, 403, 404, 413, 415, 422, 502, 503, 504)


def openapi_document(settings: Settings, model_version: str) -> dict[str, Any]:
    max_urls = settings.max_urls_per_batch
    url_list = {"type": "array", "items": {"type": "string"}, "maxItems": max_urls}
    binary = {"type": "string", "format": "binary"}
    verdict_props: dict[str, Any] = {
        "invert": {"type": "boolean", "description": "Invert this image in dark mode (else only dim it)."},
        "p_invert": {"type": "number", "minimum": 0, "maximum": 1, "description": "Probability of invert."},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1, "description": "Probability of the answer."},
        "sha256": {"type": "string", "pattern": _SHA256, "description": "SHA-256 of the image bytes."},
        "model": {"type": "string", "description": "Version of the model that answered."},
        "cached": {"type": "boolean", "description": "True when no classification ran for this request."},
        "source": {"type": "string", "enum": ["model", "correction", "page-markup", "heuristic"]},
    }
    verdict_required = list(verdict_props)
    schemas: dict[str, Any] = {
        "ErrorDetail": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable machine-readable code."},
                "message": {"type": "string"},
            },
        },
        "Error": {"type": "object", "required": ["error"], "properties": {"error": _ref("ErrorDetail")}},
        "Verdict": {"type": "object", "required": verdict_required, "properties": verdict_props},
        "UrlVerdict": {
            "type": "object",
            "required": ["url", *verdict_required],
            "properties": {"url": {"type": "string"}, **verdict_props},
        },
        "FileVerdict": {
            "type": "object",
            "required": verdict_required,
            "properties": {"filename": {"type": "string"}, **verdict_props},
        },
        "UrlItemError": {
            "type": "object",
            "required": ["url", "error"],
            "properties": {"url": {"type": "string"}, "error": _ref("ErrorDetail")},
        },
        "FileItemError": {
            "type": "object",
            "required": ["error"],
            "properties": {"filename": {"type": "string"}, "error": _ref("ErrorDetail")},
        },
        "CompatResult": {
            "type": "object",
            "required": ["invert", "sha1", "error"],
            "properties": {
                "invert": {"type": "integer", "enum": [-1, 0, 1], "description": "1 invert, 0 don't, -1 error."},
                "sha1": {"type": "string", "description": "SHA-1 of the image bytes; empty when never fetched."},
                "error": {"type": "string", "description": "Empty on success."},
                "url": {"type": "string"},
                "filename": {"type": "string"},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "model", "uptime_s"],
            "properties": {
                "status": {"type": "string", "enum": ["ok"]},
                "model": {"type": "string"},
                "uptime_s": {"type": "number"},
                "cache_entries": {"type": "object", "additionalProperties": {"type": "integer"}},
                "queued_images": {"type": "integer"},
            },
        },
    }
    responses = {f"E{status}": _json(_ref("Error"), text) for status, text in _ERROR_TEXT.items()}
    cache_headers = {
        "ETag": {"schema": {"type": "string"}, "description": "Weak validator: image hash and model version."},
        "Cache-Control": {"schema": {"type": "string"}},
    }
    multipart_files = {
        "type": "object",
        "properties": {"files": {"type": "array", "items": binary}},
        "required": ["files"],
    }
    paths: dict[str, Any] = {
        "/api/v1/classify": {
            "get": {
                "operationId": "classifyUrl",
                "summary": "Classify the image at a URL.",
                "parameters": [
                    {
                        "name": "url",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                        "example": "https://upload.wikimedia.org/wikipedia/commons/4/4e/Example.png",
                    },
                    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {**_json(_ref("UrlVerdict"), "The verdict."), "headers": cache_headers},
                    "304": {"description": "Not modified (If-None-Match matched).", "headers": cache_headers},
                    **_errors(*_FETCH_ERRORS),
                },
            },
            "post": {
                "operationId": "classifyUrls",
                "summary": f"Classify up to {max_urls} image URLs; results in input order.",
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {"schema": {"type": "object", "required": ["urls"], "properties": {"urls": url_list}}}
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["results"],
                            "properties": {
                                "results": {
                                    "type": "array",
                                    "items": {"anyOf": [_ref("UrlVerdict"), _ref("UrlItemError")]},
                                }
                            },
                        },
                        "One verdict or error per URL.",
                    ),
                    **_errors(400, 413),
                },
            },
        },
        "/api/v1/classify/image": {
            "post": {
                "operationId": "classifyImage",
                "summary": "Classify an uploaded image (raw body) or several (multipart/form-data).",
                "requestBody": {
                    "required": True,
                    "content": {
                        "image/*": {"schema": binary},
                        "application/octet-stream": {"schema": binary},
                        "multipart/form-data": {"schema": multipart_files},
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "anyOf": [
                                _ref("Verdict"),
                                {
                                    "type": "object",
                                    "required": ["results"],
                                    "properties": {
                                        "results": {
                                            "type": "array",
                                            "items": {"anyOf": [_ref("FileVerdict"), _ref("FileItemError")]},
                                        }
                                    },
                                },
                            ]
                        },
                        "A verdict (raw body) or one result per file (multipart).",
                    ),
                    "304": {"description": "Not modified (If-None-Match matched).", "headers": cache_headers},
                    **_errors(400, 413, 415, 422, 503),
                },
            }
        },
        "/api/v1/verdicts/{sha256}": {
            "get": {
                "operationId": "verdictByHash",
                "summary": "The verdict for an image this model has already seen, by SHA-256.",
                "parameters": [
                    {
                        "name": "sha256",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                    }
                ],
                "responses": {
                    "200": {**_json(_ref("Verdict"), "The verdict."), "headers": cache_headers},
                    "304": {"description": "Not modified (If-None-Match matched).", "headers": cache_headers},
                    **_errors(400, 404, 413, 415, 422),
                },
            }
        },
        "/api/url": {
            "post": {
                "operationId": "compatUrl",
                "summary": "invertornot.com-compatible: classify image URLs.",
                "requestBody": {"required": True, "content": {_JSON: {"schema": url_list}}},
                "responses": {
                    "200": _json({"type": "array", "items": _ref("CompatResult")}, "One result per URL."),
                    **_errors(400, 413),
                },
            }
        },
        "/api/file": {
            "post": {
                "operationId": "compatFile",
                "summary": "invertornot.com-compatible: classify uploaded files (field `files`).",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": multipart_files}}},
                "responses": {
                    "200": _json({"type": "array", "items": _ref("CompatResult")}, "One result per file."),
                    **_errors(400, 413, 415),
                },
            }
        },
        "/api/sha1": {
            "post": {
                "operationId": "compatSha1",
                "summary": "invertornot.com-compatible: look up images already classified, by SHA-1.",
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": {"type": "array", "items": {"type": "string"}}}},
                },
                "responses": {
                    "200": _json({"type": "array", "items": _ref("CompatResult")}, "One result per hash."),
                    **_errors(400, 413),
                },
            }
        },
        "/api/correction": {
            "post": {
                "operationId": "compatCorrection",
                "summary": "invertornot.com-compatible: report misclassified image URLs.",
                "requestBody": {"required": True, "content": {_JSON: {"schema": url_list}}},
                "responses": {"200": _json({"type": "null"}, "Accepted (the body is null)."), **_errors(400, 413)},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness, model version and uptime.",
                "responses": {"200": _json(_ref("Health"), "Healthy.")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format 0.0.4).",
                "responses": {
                    "200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
            }
        },
    }
    paths.update(static_openapi_paths())
    paths.update(corrections_openapi_paths(settings))
    paths.update(pages_openapi_paths(settings))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "InvertOrNot classification service",
            "version": "1",
            "description": (
                "Decides whether an image should be inverted in a website's dark mode (diagrams, plots, text "
                f"scans) or only dimmed (photos, paintings). Model: {model_version}. Every error is "
                '{"error": {"code", "message"}}.'
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "paths": paths,
        "components": {"schemas": schemas, "responses": responses, "securitySchemes": SECURITY_SCHEMES},
    }
