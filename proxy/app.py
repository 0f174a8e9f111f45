"""`create_app`: the classification service, assembled from its parts; nothing is created at import time.

Resources live in `app.cleanup_ctx`, each paired with its teardown, in dependency order:

1. the executor that runs classification batches (the only place model code runs);
2. the classifier: the given one, or the model loaded in that executor at startup (the loop stays free);
3. the one upstream `ClientSession` with the SSRF-safe connector, and its `SafeFetcher`;
4. the corrections store (labels people gave images are answered before the model);
5. the shared cache (Redis, when configured: a second level behind this instance's caches);
6. the caches, the batcher and the `VerdictService` that ties them together, then listening to the other
   instances' announcements (labels, model reloads);
7. SIGHUP: reload the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from aiohttp import web
from aiohttp.abc import AbstractResolver

from classifier.verdict import ImageClassifier
from proxy import compat, corrections_routes, handlers, labelling, pages_routes, sharing
from proxy.appkeys import (
    CLASSIFIER,
    EXECUTOR,
    FETCHER,
    METRICS,
    OPENAPI,
    SERVICE,
    SESSION,
    SETTINGS,
    STARTED,
)
from proxy.fetch import SafeFetcher, create_client_session
from proxy.metrics import Gauge, Metrics
from proxy.middleware import edge_middleware
from proxy.openapi import openapi_document
from proxy.ratelimit import RateLimiter, rate_limit_middleware
from proxy.settings import Settings
from proxy.static_routes import add_static_routes
from proxy.verdicts import Batcher, SwappableClassifier, VerdictCaches, VerdictService

log = logging.getLogger(__name__)

# Operational endpoints stay reachable for monitoring however busy a client is.
UNLIMITED_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json"})


def create_app(
    settings: Settings,
    *,
    classifier: ImageClassifier | None = None,
    resolver: AbstractResolver | None = None,
) -> web.Application:
    """Build the service. `classifier` replaces the model (tests, the heuristic fallback); `resolver`
    replaces the system DNS resolver behind the address checks (e.g. aiohttp's AsyncResolver)."""
    metrics = Metrics()
    middlewares = [edge_middleware(metrics)]
    if settings.rate_limit_per_minute:
        limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        middlewares.append(
            rate_limit_middleware(
                limiter,
                exempt_paths=UNLIMITED_PATHS,
                trust_forwarded_for=settings.trust_forwarded_for,
                on_limited=metrics.rate_limited.inc,
            )
        )
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_request_bytes)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app.cleanup_ctx.extend(
        [_executor_ctx, partial(_classifier_ctx, given=classifier), partial(_session_ctx, resolver=resolver)]
    )
    corrections_routes.setup(app, load_model=_model_loader(settings))  # the store's context comes before the service
    app.cleanup_ctx.append(sharing.shared_cache_ctx)  # wraps the store, so it comes before the service
    app.cleanup_ctx.append(_service_ctx)
    app.cleanup_ctx.append(sharing.announcements_ctx)
    app.cleanup_ctx.append(corrections_routes.sighup_ctx)
    pages_routes.setup(app)  # after the service: its background work stops before the service does
    _add_routes(app)
    labelling.add_routes(app)
    add_static_routes(app)
    return app


def _add_routes(app: web.Application) -> None:
    # HEAD is not offered: no client needs it, and every route must be documented in /openapi.json.
    router = app.router
    router.add_get("/api/v1/classify", handlers.classify_url, allow_head=False)
    router.add_post("/api/v1/classify", handlers.classify_urls)
    router.add_post("/api/v1/classify/image", handlers.classify_image)
    router.add_get("/api/v1/verdicts/{sha256}", handlers.verdict_by_hash, allow_head=False)
    router.add_post("/api/url", compat.api_url)
    router.add_post("/api/file", compat.api_file)
    router.add_post("/api/sha1", compat.api_sha1)
    router.add_post("/api/correction", compat.api_correction)
    router.add_get("/healthz", handlers.healthz, allow_head=False)
    router.add_get("/metrics", handlers.metrics, allow_head=False)
    router.add_get("/openapi.json", handlers.openapi, allow_head=False)


async def _executor_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    executor = ThreadPoolExecutor(max_workers=settings.classification_threads(), thread_name_prefix="classify")
    app[EXECUTOR] = executor
    try:
        yield
    finally:
        # Off the loop: a batch may still be finishing.
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)


def _answered_by(classifier: ImageClassifier) -> list[tuple[tuple[str, ...], float]]:
    # Only InvertModel has stages; the heuristic fallback reports none. A swapped-in model starts at zero.
    current = getattr(classifier, "current", classifier)
    answered = getattr(current, "answered_by", None)
    return [] if answered is None else [((stage,), float(count)) for stage, count in sorted(answered().items())]


async def _classifier_ctx(app: web.Application, *, given: ImageClassifier | None) -> AsyncIterator[None]:
    # Swappable: a model reload replaces what it holds, so everyone holding it (the batcher, the service,
    # /healthz) moves to the new model at once.
    if given is not None:
        app[CLASSIFIER] = SwappableClassifier(given)
    else:
        settings = app[SETTINGS]
        started = time.perf_counter()
        load = _model_loader(settings)
        loaded = await asyncio.get_running_loop().run_in_executor(app[EXECUTOR], load)
        app[CLASSIFIER] = SwappableClassifier(loaded)
        log.info("loaded model %s in %.1f s", loaded.version, time.perf_counter() - started)
    yield


def _model_loader(settings: Settings) -> Callable[[], ImageClassifier]:
    def load() -> ImageClassifier:
        from classifier.model import InvertModel  # heavy (ONNX Runtime, scikit-learn): only when serving

        return InvertModel.load(settings.model, threads=settings.onnx_threads(), max_pixels=settings.max_pixels)

    return load


async def _session_ctx(app: web.Application, *, resolver: AbstractResolver | None) -> AsyncIterator[None]:
    policy = app[SETTINGS].fetch_policy()
    session = create_client_session(policy, resolver=resolver)
    app[SESSION] = session
    app[FETCHER] = SafeFetcher(session, policy)
    try:
        yield
    finally:
        await session.close()


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    classifier = app[CLASSIFIER]
    batcher = Batcher(
        classifier,
        app[EXECUTOR],
        batch_size=settings.batch_size,
        batch_wait=settings.batch_wait_ms / 1000,
        concurrency=settings.classification_threads(),
        metrics=metrics,
        max_queued=settings.max_queued_images,
    )
    caches = VerdictCaches(
        url_size=settings.url_cache_size, url_ttl=settings.url_cache_ttl, verdict_size=settings.verdict_cache_size
    )
    service = VerdictService(
        classifier,
        batcher,
        app[FETCHER],
        settings.fetch_policy(),
        caches,
        metrics,
        corrections=app[corrections_routes.STORE],
        shared=app[sharing.SHARED_CACHE],
    )
    metrics.add(
        Gauge(
            "invertornot_cache_entries",
            "Entries in each in-process cache.",
            lambda: [(("url",), len(caches.urls)), (("verdict",), len(caches.verdicts))],
            ("cache",),
        )
    )
    metrics.add(
        Gauge("invertornot_queued_images", "Images waiting for the classifier.", lambda: [((), batcher.queued)])
    )
    metrics.add(
        Gauge(
            "invertornot_model_images",
            "Images the serving model answered since it was loaded, by stage: its colour screen alone, or the "
            "full model with the backbone.",
            partial(_answered_by, classifier),
            ("stage",),
        )
    )
    app[SERVICE] = service
    app[OPENAPI] = openapi_document(settings, classifier.version)
    app[STARTED] = time.monotonic()
    batcher.start()
    try:
        yield
    finally:
        await batcher.close()
