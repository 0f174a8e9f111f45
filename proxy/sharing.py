"""Several instances, one source of truth: wiring the shared Redis cache into the app.

* `shared_cache_ctx` (before the verdict service's context): connects the `RedisSharedCache` when
  `--redis-url` is set (the do-nothing `SharedCache` otherwise) and wraps the corrections store so every
  label this instance stores is announced to the others.
* `announcements_ctx` (after it): listens to the other instances: their labels are answered here at once
  (and cached answers for those images dropped), and their model reloads are followed.

`SharedLabelsStore` keeps the labels other instances announced in memory, in front of the store's own: each
store loads its labels at startup and learns only its own writes afterwards, even when several instances
share one database.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence

from aiohttp import web

from proxy.appkeys import METRICS, SERVICE, SETTINGS
from proxy.corrections import (
    Correction,
    CorrectionRequest,
    CorrectionStore,
    Label,
    LabelOutcome,
    LabelRequest,
    PendingImage,
    Status,
)
from proxy.corrections_routes import RELOADER, STORE, ReloadFailed
from proxy.shared_cache import RedisSharedCache, SharedCache, following_announcement

log = logging.getLogger(__name__)

SHARED_CACHE = web.AppKey("shared_cache", SharedCache)


class SharedLabelsStore(CorrectionStore):
    """A corrections store whose new labels are announced to, and learnt from, the other instances."""

    def __init__(self, inner: CorrectionStore, shared: SharedCache) -> None:
        super().__init__(inner.images)
        self.inner = inner
        self._shared = shared
        # Labels newer than the inner store's memory: other instances' and our own since startup (so an
        # older announcement can never shadow a newer local write).
        self._newer: dict[str, bool] = {}

    def learn(self, labels: Mapping[str, bool]) -> list[str]:
        """Take labels announced elsewhere; returns the images whose answer changed."""
        changed = [sha256 for sha256, invert in labels.items() if self.label_of(sha256) is not invert]
        self._newer.update(labels)
        return changed

    def _stored(self, labels: Mapping[str, bool]) -> None:
        self._newer.update(labels)
        self._shared.announce_labels(labels)

    # -- the interface, delegated --

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    def label_of(self, sha256: str) -> bool | None:
        label = self._newer.get(sha256)
        return self.inner.label_of(sha256) if label is None else label

    def labelled_images(self) -> list[str]:
        return list(dict.fromkeys([*self.inner.labelled_images(), *self._newer]))

    async def submit(self, request: CorrectionRequest) -> Correction:
        correction = await self.inner.submit(request)
        if correction.status == "accepted":
            self._stored({correction.sha256: correction.invert})
        return correction

    async def get(self, correction_id: int) -> Correction | None:
        return await self.inner.get(correction_id)

    async def corrections(
        self, *, status: Status | None = None, after_id: int = 0, limit: int = 100
    ) -> list[Correction]:
        return await self.inner.corrections(status=status, after_id=after_id, limit=limit)

    async def pending_images(self, limit: int) -> list[PendingImage]:
        return await self.inner.pending_images(limit)

    async def review(self, correction_id: int, *, accept: bool, by: str) -> Correction:
        reviewed = await self.inner.review(correction_id, accept=accept, by=by)
        if reviewed.status == "accepted":
            self._stored({reviewed.sha256: reviewed.invert})
        return reviewed

    async def add_labels(self, labels: Sequence[LabelRequest]) -> LabelOutcome:
        outcome = await self.inner.add_labels(labels)
        self._stored({label.sha256: label.invert for label in labels})  # in order: the newest per image wins
        return outcome

    async def labels(self) -> list[Label]:
        return await self.inner.labels()

    async def counts(self) -> dict[str, int]:
        return await self.inner.counts()

    async def image_urls(self) -> dict[str, str]:
        return await self.inner.image_urls()


class AppEvents:
    """What this instance does with the other instances' announcements."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def labels_changed(self, labels: Mapping[str, bool]) -> None:
        store = self._app[STORE]
        changed = store.learn(labels) if isinstance(store, SharedLabelsStore) else list(labels)
        service = self._app[SERVICE]
        for sha256 in changed:
            service.invalidate(sha256)
        if changed:
            log.debug("shared cache: %d labels from other instances", len(changed))

    async def model_announced(self, version: str) -> None:
        if version == self._app[SERVICE].model:
            return
        log.info("shared cache: another instance serves model %s; reloading ours", version)
        # A failure is logged by the reloader; this instance keeps its model (its answers carry its version).
        with following_announcement(), contextlib.suppress(ReloadFailed):
            await self._app[RELOADER].reload(self._app)


async def shared_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """The shared cache; comes after the corrections store's context and before the verdict service's."""
    settings = app[SETTINGS]
    if not settings.redis_url:
        app[SHARED_CACHE] = SharedCache()
        yield
        return
    cache = RedisSharedCache(
        settings.redis_url,
        app[METRICS],
        url_ttl=settings.url_cache_ttl,
        timeout=settings.redis_timeout,
        lock_seconds=settings.redis_lock_seconds,
        retry_seconds=settings.redis_retry_seconds,
    )
    await cache.connect()
    app[SHARED_CACHE] = cache
    app[STORE] = SharedLabelsStore(app[STORE], cache)
    try:
        yield
    finally:
        await cache.close()


async def announcements_ctx(app: web.Application) -> AsyncIterator[None]:
    """Listen to the other instances once the verdict service exists; stop before it is torn down."""
    cache = app[SHARED_CACHE]
    cache.start(AppEvents(app))
    try:
        yield
    finally:
        await cache.stop()
