"""The labelling page `/label` and its API: queues of images to judge, their pictures, and the decisions.

A person sees a grid of images shown inverted on a dark page and flags the ones that look wrong, so every
image gets a label ("invert" unless flagged) in well under a second. Three queues feed the grid:

* `review`: images with anonymous corrections waiting for a decision (a label settles them);
* `uncertain`: recent model answers whose p_invert is closest to the model's threshold (active learning);
* `audit`: a random sample of recent answers and of labelled images, to measure the model and the labels.

Images not stored yet (recent answers) are fetched again and kept by hash before they are shown, so each
label is trainable. Every endpoint but the page itself needs an API token.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from classifier.decode import sniff_format
from proxy.appkeys import FETCHER, SERVICE
from proxy.bodies import read_json
from proxy.corrections import LabelRequest
from proxy.corrections_routes import SHA256_PATTERN, STORE
from proxy.errors import ApiError, BadRequest, NotFound, PayloadTooLarge
from proxy.fetch import SNIFFED_MIME
from proxy.image_store import sha256_of
from proxy.tokens import require_token
from proxy.verdicts import RecentVerdict

STATIC_DIR = Path(__file__).resolve().parent / "static"
QUEUES = ("review", "uncertain", "audit")
DEFAULT_PAGE = 16
MAX_PAGE = 64
MAX_LABELS = 500
# Fetching candidates again for the uncertain and audit queues: a few at a time, like a browser would.
_REFETCH_CONCURRENCY = 8
# The page runs only its own script, talks only to this server and shows images as blob: URLs.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def add_routes(app: web.Application) -> None:
    page = (STATIC_DIR / "label.html").read_bytes() if (STATIC_DIR / "label.html").is_file() else None

    async def label_page(request: web.Request) -> web.Response:
        if page is None:
            raise NotFound("the labelling page is not part of this installation", code="not_installed")
        return web.Response(
            body=page,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": PAGE_CSP,
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    router = app.router
    router.add_get("/label", label_page, allow_head=False)
    router.add_get("/api/v1/label/queue", label_queue, allow_head=False)
    router.add_get("/api/v1/label/images/{sha256}", label_image, allow_head=False)
    router.add_post("/api/v1/labels", post_labels)


def model_threshold(classifier: Any) -> float:
    """The p_invert at which the model starts answering "invert" (0.5 for classifiers without one)."""
    current = getattr(classifier, "current", classifier)
    return float(getattr(current, "threshold", 0.5))


def _item(sha256: str, **fields: Any) -> dict[str, Any]:
    return {"sha256": sha256, "image": f"/api/v1/label/images/{sha256}", **fields}


async def _keep_image(app: web.Application, candidate: RecentVerdict) -> bool:
    """True once the candidate's image is stored (fetched again if needed and still the same image)."""
    store = app[STORE]
    if await store.has_image(candidate.sha256):
        return True
    try:
        fetched = await app[FETCHER].fetch_image(candidate.url)
    except ApiError:
        return False
    if sha256_of(fetched.body) != candidate.sha256:
        return False  # the URL serves another picture now: what was judged is gone
    await store.store_image(fetched.body)
    return True


async def _kept(app: web.Application, candidates: list[RecentVerdict]) -> list[RecentVerdict]:
    slots = asyncio.Semaphore(_REFETCH_CONCURRENCY)

    async def keep(candidate: RecentVerdict) -> bool:
        async with slots:
            return await _keep_image(app, candidate)

    kept = await asyncio.gather(*(keep(candidate) for candidate in candidates))
    return [candidate for candidate, ok in zip(candidates, kept, strict=True) if ok]


def _recent(app: web.Application) -> list[RecentVerdict]:
    """Recent answers of the current model, newest first, one per image."""
    service = app[SERVICE]
    seen: set[str] = set()
    unique = []
    for verdict in reversed(service.recent):
        if verdict.model == service.model and verdict.sha256 not in seen:
            seen.add(verdict.sha256)
            unique.append(verdict)
    return unique


def _model_fields(verdict: RecentVerdict, threshold: float) -> dict[str, Any]:
    return {"url": verdict.url, "p_invert": verdict.p_invert, "model_invert": verdict.p_invert >= threshold}


async def review_queue(app: web.Application, limit: int) -> list[dict[str, Any]]:
    store = app[STORE]
    return [
        _item(
            pending.sha256,
            url=pending.url,
            suggested_invert=pending.suggested_invert,
            correction_ids=pending.correction_ids,
            label=store.label_of(pending.sha256),
        )
        for pending in await store.pending_images(limit)
    ]


async def uncertain_queue(app: web.Application, limit: int) -> list[dict[str, Any]]:
    store = app[STORE]
    threshold = model_threshold(app[SERVICE].classifier)
    unlabelled = [verdict for verdict in _recent(app) if store.label_of(verdict.sha256) is None]
    unlabelled.sort(key=lambda verdict: abs(verdict.p_invert - threshold))
    return [
        _item(verdict.sha256, **_model_fields(verdict, threshold)) for verdict in await _kept(app, unlabelled[:limit])
    ]


async def audit_queue(app: web.Application, limit: int, rng: random.Random | None = None) -> list[dict[str, Any]]:
    store = app[STORE]
    rng = rng or random.Random()
    threshold = model_threshold(app[SERVICE].classifier)
    recent = _recent(app)
    recent_hashes = {verdict.sha256 for verdict in recent}
    labelled = [sha256 for sha256 in store.labelled_images() if sha256 not in recent_hashes]
    pool: list[RecentVerdict | str] = [*recent, *labelled]
    chosen = rng.sample(pool, min(limit, len(pool)))
    fresh = await _kept(app, [entry for entry in chosen if isinstance(entry, RecentVerdict)])
    items = [
        _item(verdict.sha256, label=store.label_of(verdict.sha256), **_model_fields(verdict, threshold))
        for verdict in fresh
    ]
    for sha256 in (entry for entry in chosen if isinstance(entry, str)):
        if await store.has_image(sha256):
            items.append(_item(sha256, label=store.label_of(sha256)))
    rng.shuffle(items)
    return items


async def label_queue(request: web.Request) -> web.Response:
    """GET /api/v1/label/queue?queue=review|uncertain|audit&limit=N"""
    require_token(request)
    queue = request.query.get("queue", "review")
    if queue not in QUEUES:
        raise BadRequest(f"queue must be one of {', '.join(QUEUES)}", code="invalid_queue")
    try:
        limit = int(request.query.get("limit", DEFAULT_PAGE))
    except ValueError:
        raise BadRequest("limit must be an integer", code="invalid_query") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}", code="invalid_query")
    app = request.app
    builders = {"review": review_queue, "uncertain": uncertain_queue, "audit": audit_queue}
    items = await builders[queue](app, limit)
    counts = await app[STORE].counts()
    service = app[SERVICE]
    return web.json_response(
        {
            "queue": queue,
            "model": service.model,
            "threshold": model_threshold(service.classifier),
            "pending": counts["pending"],
            "items": items,
        },
        headers={"Cache-Control": "no-store"},
    )


async def label_image(request: web.Request) -> web.Response:
    """GET /api/v1/label/images/{sha256}: a stored image, for the labelling page (fetched with the token)."""
    require_token(request)
    sha256 = request.match_info["sha256"].lower()
    if not SHA256_PATTERN.fullmatch(sha256):
        raise BadRequest("expected a SHA-256 as 64 hexadecimal digits", code="invalid_sha256")
    data = await request.app[STORE].image(sha256)
    if data is None:
        raise NotFound("no stored image with this SHA-256", code="unknown_image")
    media_type = SNIFFED_MIME.get(sniff_format(data) or "", "application/octet-stream")
    return web.Response(
        body=data,
        content_type=media_type,
        headers={
            # Content-addressed: the bytes behind this URL never change.
            "Cache-Control": "private, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
            # An SVG opened directly must not run scripts on this origin.
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
        },
    )


def _parse_labels(body: Any) -> tuple[str, list[tuple[str, bool]]]:
    if not isinstance(body, dict) or not isinstance(body.get("labels"), list):
        raise BadRequest('expected {"queue": ..., "labels": [{"sha256", "invert"}, ...]}', code="invalid_labels")
    queue = body.get("queue", "review")
    if queue not in QUEUES:
        raise BadRequest(f"queue must be one of {', '.join(QUEUES)}", code="invalid_queue")
    if len(body["labels"]) > MAX_LABELS:
        raise PayloadTooLarge(f"at most {MAX_LABELS} labels per request", code="too_many_items")
    parsed = []
    for entry in body["labels"]:
        sha256 = entry.get("sha256") if isinstance(entry, dict) else None
        invert = entry.get("invert") if isinstance(entry, dict) else None
        if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256.lower()) or not isinstance(invert, bool):
            raise BadRequest('each label is {"sha256": 64 hex digits, "invert": true or false}', code="invalid_labels")
        parsed.append((sha256.lower(), invert))
    return queue, parsed


async def post_labels(request: web.Request) -> web.Response:
    """POST /api/v1/labels {"queue", "labels": [{"sha256", "invert"}]}: decisions from the labelling page."""
    who = require_token(request)
    queue, labels = _parse_labels(await read_json(request))
    outcome = await request.app[STORE].add_labels(
        [LabelRequest(sha256, invert, who, f"label:{queue}") for sha256, invert in labels]
    )
    _invalidate(request.app, (sha256 for sha256, _ in labels))
    return web.json_response(
        {"stored": len(outcome.labels), "accepted": outcome.accepted, "rejected": outcome.rejected},
        headers={"Cache-Control": "no-store"},
    )


def _invalidate(app: web.Application, hashes: Iterable[str]) -> None:
    service = app[SERVICE]
    for sha256 in set(hashes):
        service.invalidate(sha256)
