"""Corrections over HTTP: report a wrong verdict, review the queue, reload the model.

* `POST /api/v1/corrections` `{"url" | "sha256", "invert", "note"?}` -> 202 `{"id", "status", "sha256"}`.
  The image is fetched, classified (to record what the service answered) and stored by hash before the
  correction is written, so it stays trainable when its URL dies. With a valid API token the correction is
  accepted at once: the next answer for that image is `source: "correction"`. Anonymous corrections are
  rate limited per client and wait for review.
* `GET /api/v1/corrections`, `POST /api/v1/corrections/{id}/review` (token): the review queue.
* `POST /api/v1/admin/reload` (token), or SIGHUP: load the configured model again and swap it in while
  requests keep being answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from classifier.decode import ImageError
from classifier.verdict import ImageClassifier, Verdict
from proxy.appkeys import FETCHER, SERVICE, SETTINGS
from proxy.bodies import read_json
from proxy.corrections import ANONYMOUS, Correction, CorrectionRequest, CorrectionStore, Status, create_store
from proxy.errors import ApiError, BadRequest, NotFound
from proxy.ratelimit import RateLimited, RateLimiter, client_address
from proxy.tokens import TOKENS, TokenRegistry, requester, require_token

log = logging.getLogger(__name__)

SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
MAX_NOTE_CHARS = 1000
MAX_LISTED = 500

STORE = web.AppKey("correction_store", CorrectionStore)
CORRECTION_LIMITER = web.AppKey[RateLimiter | None]("correction_limiter")


class ReloadFailed(ApiError):
    status = 503
    default_code = "reload_failed"


class ModelReloader:
    """Loads the configured model again and swaps it in; one reload at a time."""

    def __init__(self, load: Callable[[], ImageClassifier]) -> None:
        self._load = load
        self._lock = asyncio.Lock()

    async def reload(self, app: web.Application) -> tuple[str, str]:
        """(previous version, new version). The old model keeps answering until the new one is loaded."""
        async with self._lock:
            try:
                # Not in the app's executor: that one runs the batches, which must keep flowing meanwhile.
                new = await asyncio.to_thread(self._load)
            except Exception as error:
                log.exception("model reload failed; the current model keeps serving")
                raise ReloadFailed(f"the model could not be loaded; still serving the old one ({error})") from None
            old = app[SERVICE].replace_classifier(new)
            log.info("model reloaded: %s -> %s", old.version, new.version)
            return old.version, new.version


RELOADER = web.AppKey("model_reloader", ModelReloader)


def setup(app: web.Application, *, load_model: Callable[[], ImageClassifier]) -> None:
    """Everything corrections need: tokens, the rate limiter, the store's lifetime, SIGHUP, routes.

    Call before the context that builds the `VerdictService` is appended: the service reads the store."""
    settings = app[SETTINGS]
    app[TOKENS] = TokenRegistry(settings.api_tokens)
    app[RELOADER] = ModelReloader(load_model)
    per_minute = settings.correction_rate_limit_per_minute
    app[CORRECTION_LIMITER] = RateLimiter(per_minute, settings.correction_rate_limit_burst) if per_minute else None
    app.cleanup_ctx.append(_store_ctx)
    router = app.router
    router.add_post("/api/v1/corrections", submit_correction)
    router.add_get("/api/v1/corrections", list_corrections, allow_head=False)
    router.add_post("/api/v1/corrections/{id}/review", review_correction)
    router.add_post("/api/v1/admin/reload", reload_model)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = create_store(
        settings.database_url,
        images_dir=settings.correction_images_dir,
        max_pending=settings.max_pending_corrections,
    )
    await store.open()
    app[STORE] = store
    try:
        yield
    finally:
        await store.close()


async def sighup_ctx(app: web.Application) -> AsyncIterator[None]:
    """`kill -HUP` reloads the model, as for most daemons. Only where the loop can own signals (the main
    thread of a Unix process); elsewhere the HTTP endpoint remains."""
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[Any]] = set()

    def on_sighup() -> None:
        task = asyncio.ensure_future(_reload_logged(app))
        running.add(task)
        task.add_done_callback(running.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (AttributeError, NotImplementedError, RuntimeError, ValueError):
        log.debug("SIGHUP reload unavailable here; use POST /api/v1/admin/reload")
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in running:
            task.cancel()


async def _reload_logged(app: web.Application) -> None:
    with contextlib.suppress(ReloadFailed):  # already logged with its traceback
        await app[RELOADER].reload(app)


# -- recording a correction -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reporter:
    name: str | None  # the API token's name; None: anonymous
    client: str

    @property
    def trusted(self) -> bool:
        return self.name is not None


def reporter(request: web.Request) -> Reporter:
    """Who reports (401 for a wrong token) and from where; anonymous reporters spend their rate budget."""
    name = requester(request)
    client = client_address(request, trust_forwarded_for=request.app[SETTINGS].trust_forwarded_for)
    return Reporter(name, client)


def spend_rate_budget(request: web.Request, who: Reporter) -> None:
    limiter = request.app[CORRECTION_LIMITER]
    if who.trusted or limiter is None:
        return
    wait = limiter.acquire(who.client)
    if wait is not None:
        raise RateLimited(wait)


async def fetch_and_keep(app: web.Application, url: str) -> tuple[str, Verdict]:
    """Fetch the image at `url`, store it by hash and return (sha256, what the service answers for it)."""
    fetched = await app[FETCHER].fetch_image(url)
    classified = await app[SERVICE].classify_bytes(fetched.body)
    if isinstance(classified.result, ImageError):
        raise classified.result  # a correction of an image nobody can decode cannot be trained on
    await app[STORE].store_image(fetched.body)
    return classified.sha256, classified.result


async def record(
    app: web.Application,
    who: Reporter,
    *,
    sha256: str,
    invert: bool,
    origin: str,
    url: str | None = None,
    note: str = "",
    answered: Verdict | None = None,
) -> Correction:
    correction = await app[STORE].submit(
        CorrectionRequest(
            sha256=sha256,
            invert=invert,
            submitted_by=who.name or ANONYMOUS,
            trusted=who.trusted,
            client=who.client,
            origin=origin,
            url=url,
            note=note,
            answered_model=answered.model if answered is not None else None,
            answered_p_invert=answered.p_invert if answered is not None else None,
        )
    )
    if correction.status == "accepted":
        app[SERVICE].invalidate(sha256)
    return correction


def _parse_correction(body: Any) -> tuple[str | None, str | None, bool, str]:
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object {"url" or "sha256", "invert"}', code="invalid_correction")
    invert, url, sha256, note = body.get("invert"), body.get("url"), body.get("sha256"), body.get("note", "")
    if not isinstance(invert, bool):
        raise BadRequest('"invert" must be true or false', code="invalid_correction")
    if url is None and sha256 is None:
        raise BadRequest('name the image with "url" or "sha256"', code="missing_image")
    if url is not None and (not isinstance(url, str) or not url):
        raise BadRequest('"url" must be a non-empty string', code="invalid_correction")
    if sha256 is not None:
        if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256.lower()):
            raise BadRequest('"sha256" must be 64 hexadecimal digits', code="invalid_sha256")
        sha256 = sha256.lower()
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise BadRequest(f'"note" must be a string of at most {MAX_NOTE_CHARS} characters', code="invalid_correction")
    return url, sha256, invert, note


async def submit_correction(request: web.Request) -> web.Response:
    """POST /api/v1/corrections"""
    who = reporter(request)
    url, sha256, invert, note = _parse_correction(await read_json(request))
    spend_rate_budget(request, who)
    app = request.app
    answered: Verdict | None = None
    if url is not None:
        fetched_sha256, answered = await fetch_and_keep(app, url)
        if sha256 is not None and sha256 != fetched_sha256:
            raise BadRequest(
                f"the URL serves the image {fetched_sha256}, not the one named by sha256", code="sha256_mismatch"
            )
        sha256 = fetched_sha256
    else:
        assert sha256 is not None
        known = app[SERVICE].cached_image(sha256)
        answered = known.result if known is not None and isinstance(known.result, Verdict) else None
        # A reviewer must be able to look at the image; a trusted reporter may pin a hash blind.
        if not who.trusted and not await app[STORE].has_image(sha256):
            raise NotFound(
                'this server does not hold that image; send its "url" so it can be fetched and kept',
                code="unknown_image",
            )
    correction = await record(
        app, who, sha256=sha256, invert=invert, origin="api", url=url, note=note, answered=answered
    )
    return web.json_response(
        {"id": correction.id, "status": correction.status, "sha256": correction.sha256},
        status=202,
        headers={"Cache-Control": "no-store"},
    )


async def report_wrong_verdict(app: web.Application, who: Reporter, url: str) -> Correction | None:
    """invertornot.com's report "this URL's verdict is wrong": a correction suggesting the opposite answer.
    None when the image cannot be fetched or judged (that client expects no per-URL answer)."""
    try:
        sha256, answered = await fetch_and_keep(app, url)
    except (ApiError, ImageError) as error:
        log.debug("correction report for %s dropped: %s", url, error)
        return None
    return await record(
        app, who, sha256=sha256, invert=not answered.invert, origin="compat", url=url, answered=answered
    )


# -- review ----------------------------------------------------------------------------------------------------


_STATUSES: dict[str, Status | None] = {
    "pending": "pending",
    "accepted": "accepted",
    "rejected": "rejected",
    "all": None,
}


def _int_query(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", code="invalid_query") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}", code="invalid_query")
    return value


async def list_corrections(request: web.Request) -> web.Response:
    """GET /api/v1/corrections?status=pending&after=ID&limit=N"""
    require_token(request)
    status = request.query.get("status", "pending")
    if status not in _STATUSES:
        raise BadRequest("status must be pending, accepted, rejected or all", code="invalid_query")
    after = _int_query(request, "after", 0, low=0, high=2**62)
    limit = _int_query(request, "limit", 100, low=1, high=MAX_LISTED)
    found = await request.app[STORE].corrections(status=_STATUSES[status], after_id=after, limit=limit)
    return web.json_response(
        {
            "corrections": [correction.to_json() for correction in found],
            "next_after": found[-1].id if len(found) == limit else None,
        },
        headers={"Cache-Control": "no-store"},
    )


async def review_correction(request: web.Request) -> web.Response:
    """POST /api/v1/corrections/{id}/review {"decision": "accept" | "reject"}"""
    who = require_token(request)
    try:
        correction_id = int(request.match_info["id"])
    except ValueError:
        raise BadRequest("the correction id must be an integer", code="invalid_id") from None
    body = await read_json(request)
    decision = body.get("decision") if isinstance(body, dict) else None
    if decision not in ("accept", "reject"):
        raise BadRequest('expected {"decision": "accept" or "reject"}', code="invalid_decision")
    store = request.app[STORE]
    reviewed = await store.review(correction_id, accept=decision == "accept", by=who)
    if reviewed.status == "accepted":
        request.app[SERVICE].invalidate(reviewed.sha256)
    return web.json_response(reviewed.to_json(), headers={"Cache-Control": "no-store"})


async def reload_model(request: web.Request) -> web.Response:
    """POST /api/v1/admin/reload"""
    require_token(request)
    previous, current = await request.app[RELOADER].reload(request.app)
    return web.json_response(
        {"model": current, "previous": previous, "changed": current != previous},
        headers={"Cache-Control": "no-store"},
    )
