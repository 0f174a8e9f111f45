"""Redis as a second-level cache shared by several instances, behind each instance's in-memory caches.

    L1 miss --> Redis: URL -> sha256 (with the URL cache's TTL), sha256 -> verdict (per model version)
            --> miss: a short Redis lock per (model, image): its holder classifies and stores the verdict,
                the other instances poll for it (single-flight across instances)

* One pub/sub channel keeps instances consistent: new labels (accepted corrections, reviews, the labelling
  page) and model reloads are announced, so every instance drops its cached answer for a relabelled image
  and reloads its model when another instance announces a new version. Labels are also written to a Redis
  hash, read after every (re)subscription: an instance that was cut off catches up on what it missed.
* Redis is an optimisation, never a dependency. Every command has a short timeout; a connection failure
  switches the instance to its own memory (one log line, `invertornot_redis_up 0`), later commands skip
  Redis at once instead of waiting on it, and a background probe brings Redis back into use when it answers
  again (one more log line). Announcements made meanwhile are kept and sent then. No request fails, or
  waits longer than one timeout, because of Redis.
* `SharedCache` itself is the do-nothing variant, used without `--redis-url`.

Only verdicts are shared, not image errors: those depend on each instance's limits and cost little to find.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from classifier.decode import ImageError
from classifier.verdict import Verdict
from proxy.metrics import Counter, Gauge, Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
Result = Verdict | ImageError
KEY_PREFIX = "invertornot:"
#: A verdict of one model never changes; the TTL only lets Redis forget images nobody asks about any more
#: (configure `maxmemory-policy allkeys-lru` to bound memory instead of relying on it).
VERDICT_TTL_SECONDS = 30 * 86400
# Polling for another instance's verdict: quick at first (a batch takes ~10-100 ms), then every 50 ms.
_FIRST_POLL_SECONDS = 0.005
_MAX_POLL_SECONDS = 0.05
#: Redis commands in flight at once per instance. Redis answers in about 0.1 ms, so more would only add
#: sockets; a burst beyond it waits for a slot (up to the command timeout), then skips Redis for that call.
MAX_COMMANDS = 64
# Failures that mean "Redis is not reachable now" (as opposed to a command Redis refused).
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_RELEASE_LOCK = """
if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end
return 0
"""

_following: contextvars.ContextVar[bool] = contextvars.ContextVar("following_announcement", default=False)


@contextlib.contextmanager
def following_announcement() -> Iterator[None]:
    """Within this block, a model reload follows another instance's announcement and is not announced again
    (two instances configured with different models would otherwise make each other reload forever)."""
    token = _following.set(True)
    try:
        yield
    finally:
        _following.reset(token)


class SharedEvents(Protocol):
    """What an instance does when another one announces something."""

    def labels_changed(self, labels: Mapping[str, bool]) -> None:
        """Images got new labels (sha256 -> invert): answer them from now on, drop cached answers."""

    async def model_announced(self, version: str) -> None:
        """Another instance serves model `version` now."""


class SharedCache:
    """The shared cache interface, doing nothing: every lookup misses and every image is classified here."""

    @property
    def available(self) -> bool:
        return False

    def start(self, events: SharedEvents) -> None:
        """Begin listening for other instances' announcements."""

    async def stop(self) -> None:
        """Stop listening (the cache stays usable until `close`)."""

    async def close(self) -> None: ...

    async def image_for_url(self, url: str) -> str | None:
        """The sha256 another instance found behind `url`, if it is still fresh."""
        return None

    async def remember_url(self, url: str, sha256: str) -> None: ...

    async def verdict(self, model: str, sha256: str) -> tuple[Verdict, str] | None:
        """(verdict, sha1) of an image another instance classified with `model`."""
        return None

    async def classify_once(
        self, model: str, sha256: str, sha1: str, work: Callable[[], Awaitable[Result]]
    ) -> tuple[Result, bool]:
        """(result, True) from running `work` here, or (verdict, False) from another instance's run."""
        return await work(), True

    def announce_labels(self, labels: Mapping[str, bool]) -> None:
        """Tell the other instances about new labels (sent in the background; kept while Redis is away)."""

    def announce_model(self, version: str) -> None:
        """Tell the other instances this one serves model `version` now."""


class RedisSharedCache(SharedCache):
    """The shared cache on one Redis server (or anything speaking its protocol)."""

    def __init__(
        self,
        url: str,
        metrics: Metrics,
        *,
        url_ttl: float,
        timeout: float = 0.5,
        lock_seconds: float = 10.0,
        retry_seconds: float = 1.0,
        prefix: str = KEY_PREFIX,
    ) -> None:
        # One immediate retry on a broken connection (an idle pooled connection to a Redis that restarted
        # meanwhile), none on a timeout and no back-off: a failure must reach us at once, so requests fall
        # back to memory instead of waiting through redis-py's reconnection back-offs.
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            decode_responses=True,
            max_connections=MAX_COMMANDS + 4,  # + the subscription and the probe
        )
        self._slots = asyncio.Semaphore(MAX_COMMANDS)
        self._timeout = timeout
        self._url = _redacted(url)
        self._url_ttl_ms = max(1, int(url_ttl * 1000))
        self._lock_ms = max(1, int(lock_seconds * 1000))
        self._lock_seconds = lock_seconds
        self._retry_seconds = retry_seconds
        self._prefix = prefix
        self._channel = prefix + "events"
        self._labels_key = prefix + "labels"
        self._instance = uuid.uuid4().hex  # to recognise our own announcements
        self._release = self._redis.register_script(_RELEASE_LOCK)
        self._metrics = metrics
        self._up = asyncio.Event()
        self._up.set()  # until a command says otherwise
        self._down = asyncio.Event()
        self._unsent_labels: dict[str, bool] = {}
        self._unsent_model: str | None = None
        self._unsent = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._events: SharedEvents | None = None
        self.outages = Counter("invertornot_redis_outages_total", "Times Redis became unreachable.")
        self.errors = Counter("invertornot_redis_errors_total", "Redis commands that failed, by kind.", ("kind",))
        self.waits = Counter(
            "invertornot_redis_lock_waits_total",
            "Images another instance was classifying, by outcome (shared: its verdict was used; "
            "own: this instance classified the image after all).",
            ("outcome",),
        )
        metrics.add(Gauge("invertornot_redis_up", "1 while the shared Redis cache is in use.", self._read_up))
        for metric in (self.outages, self.errors, self.waits):
            metrics.add(metric)

    def _read_up(self) -> list[tuple[tuple[str, ...], float]]:
        return [((), 1.0 if self.available else 0.0)]

    @property
    def available(self) -> bool:
        return self._up.is_set()

    # -- lifecycle -----------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Check Redis once at startup; an instance starts (on memory alone) even when Redis is away."""
        if await self._command(lambda redis: redis.ping(), False):
            log.info("shared cache: using Redis at %s", self._url)

    def start(self, events: SharedEvents) -> None:
        self._events = events
        for work in (self._probe(), self._listen(), self._publish()):
            task = asyncio.create_task(work)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("shared cache task failed", exc_info=task.exception())

    async def stop(self) -> None:
        self._events = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.stop()
        if self.available and (self._unsent_labels or self._unsent_model is not None):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):  # a last chance for announcements made just before shutdown
                    await self._send_unsent()
        await self._redis.aclose()

    # -- health ----------------------------------------------------------------------------------------

    async def _command(self, call: Callable[[Redis], Awaitable[T]], fallback: T) -> T:
        """Run one Redis call; `fallback` when Redis is away or fails. Never raises a Redis error."""
        if not self._up.is_set():
            return fallback
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            self.errors.inc("busy")  # a burst: this call goes without Redis rather than wait longer
            return fallback
        try:
            return await call(self._redis)
        except MaxConnectionsError:
            self.errors.inc("busy")
        except _UNREACHABLE as error:
            self._went_down(error)
        except RedisError as error:  # Redis answered, but refused (out of memory, read-only replica...)
            self.errors.inc(type(error).__name__)
            log.debug("shared cache: Redis refused a command: %s", error)
        finally:
            self._slots.release()
        return fallback

    def _went_down(self, error: BaseException) -> None:
        self.errors.inc(type(error).__name__)
        if not self._up.is_set():
            return
        self._up.clear()
        self._down.set()
        self.outages.inc()
        log.warning(
            "shared cache: Redis at %s is unreachable (%s: %s); serving from this instance's memory until it is back",
            self._url,
            type(error).__name__,
            error,
        )

    async def _probe(self) -> None:
        """While Redis is away, try it every `retry_seconds`; bring it back into use when it answers."""
        while True:
            await self._down.wait()
            await asyncio.sleep(self._retry_seconds)
            # Connections opened before the outage are dead (or to a Redis that has restarted since).
            await self._redis.connection_pool.disconnect()
            try:
                await self._redis.ping()
            except _UNREACHABLE:
                continue
            except RedisError:  # e.g. LOADING: reachable but not ready yet
                continue
            self._down.clear()
            self._up.set()
            log.info("shared cache: Redis at %s is reachable again; sharing resumes", self._url)

    # -- lookups ---------------------------------------------------------------------------------------

    def _key(self, kind: str, model: str, name: str) -> str:
        return f"{self._prefix}{kind}:{model}:{name}"

    # URL -> sha256 does not depend on the model: it survives model reloads.
    async def image_for_url(self, url: str) -> str | None:
        sha256 = _text(await self._command(lambda redis: redis.get(f"{self._prefix}url:{url}"), None))
        self._count("redis_url", sha256 is not None)
        return sha256

    async def remember_url(self, url: str, sha256: str) -> None:
        key = f"{self._prefix}url:{url}"
        await self._command(lambda redis: redis.set(key, sha256, px=self._url_ttl_ms), None)

    async def verdict(self, model: str, sha256: str) -> tuple[Verdict, str] | None:
        raw = await self._command(lambda redis: redis.get(self._key("verdict", model, sha256)), None)
        found = _decode_verdict(raw, sha256)
        self._count("redis_verdict", found is not None)
        return found

    def _count(self, cache: str, hit: bool) -> None:
        if self.available:
            (self._metrics.cache_hits if hit else self._metrics.cache_misses).inc(cache)

    async def _store(self, model: str, sha256: str, sha1: str, verdict: Verdict) -> None:
        key = self._key("verdict", model, sha256)
        value = _encode_verdict(verdict, sha1)
        await self._command(lambda redis: redis.set(key, value, ex=VERDICT_TTL_SECONDS), None)

    # -- single-flight across instances ---------------------------------------------------------------

    async def classify_once(
        self, model: str, sha256: str, sha1: str, work: Callable[[], Awaitable[Result]]
    ) -> tuple[Result, bool]:
        found = await self.verdict(model, sha256)
        if found is not None:
            return found[0], False
        lock = self._key("lock", model, sha256)
        token = uuid.uuid4().hex
        locked = await self._command(lambda redis: redis.set(lock, token, nx=True, px=self._lock_ms), None)
        if not locked and self.available:
            shared = await self._wait_for(model, sha256, lock)
            self.waits.inc("own" if shared is None else "shared")
            if shared is not None:
                return shared, False
        try:
            result = await work()
            if isinstance(result, Verdict) and result.model == model:
                await self._store(model, sha256, sha1, result)
        finally:
            if locked:
                await self._command(lambda redis: self._release(keys=[lock], args=[token], client=redis), None)
        return result, True

    async def _wait_for(self, model: str, sha256: str, lock: str) -> Verdict | None:
        """The verdict of the instance holding the lock, or None when it gave up, died or took too long."""
        deadline = time.monotonic() + self._lock_seconds
        pause = _FIRST_POLL_SECONDS
        verdict_key = self._key("verdict", model, sha256)
        while time.monotonic() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_POLL_SECONDS)
            # One round trip reads both: the verdict is stored before the lock is released, so "no lock and
            # no verdict" means the holder finished without a verdict (an image error) or died.
            values = await self._command(lambda redis: redis.mget(verdict_key, lock), None)
            if values is None:  # Redis went away: classify here
                return None
            raw, holder = values
            found = _decode_verdict(raw, sha256)
            if found is not None:
                return found[0]
            if holder is None:
                return None
        return None

    # -- announcements ---------------------------------------------------------------------------------

    def announce_labels(self, labels: Mapping[str, bool]) -> None:
        if labels:
            self._unsent_labels.update(labels)
            self._unsent.set()

    def announce_model(self, version: str) -> None:
        if not _following.get():
            self._unsent_model = version
            self._unsent.set()

    async def _publish(self) -> None:
        """Send announcements in order, in the background; while Redis is away they wait (newest per image)."""
        while True:
            await self._unsent.wait()
            await self._up.wait()
            await self._send_unsent()

    async def _send_unsent(self) -> None:
        self._unsent.clear()
        labels, self._unsent_labels = self._unsent_labels, {}
        model, self._unsent_model = self._unsent_model, None
        sent = True
        if labels:
            sent = await self._command(lambda redis: self._send_labels(redis, labels), False)
        if sent and model is not None:
            message = json.dumps({"from": self._instance, "model": model})
            sent = await self._command(lambda redis: _published(redis.publish(self._channel, message)), False)
        if not sent and not self.available:
            # Keep them for when Redis is back; anything announced meanwhile is newer and wins.
            self._unsent_labels = {**labels, **self._unsent_labels}
            if model is not None and self._unsent_model is None:
                self._unsent_model = model
            self._unsent.set()
        elif not sent:
            log.warning("shared cache: Redis refused announcements of %d labels / model %s", len(labels), model)

    async def _send_labels(self, redis: Redis, labels: dict[str, bool]) -> bool:
        # The hash first: an instance subscribing right now either gets the message or reads the hash after.
        message = json.dumps({"from": self._instance, "labels": labels})
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._labels_key, mapping={sha256: int(invert) for sha256, invert in labels.items()})
            pipe.publish(self._channel, message)
            await pipe.execute()
        return True

    async def _listen(self) -> None:
        while True:
            await self._up.wait()
            try:
                async with self._subscription() as subscription:
                    await self._catch_up()
                    while True:
                        message = await subscription.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None:
                            self._received(message["data"])
            except _UNREACHABLE as error:
                self._went_down(error)
            except RedisError as error:
                self.errors.inc(type(error).__name__)
                log.warning("shared cache: subscription failed (%s); retrying", error)
                await asyncio.sleep(self._retry_seconds)

    @contextlib.asynccontextmanager
    async def _subscription(self) -> AsyncIterator[Any]:
        subscription = self._redis.pubsub()
        try:
            await subscription.subscribe(self._channel)
            yield subscription
        finally:
            with contextlib.suppress(RedisError, OSError):
                await subscription.aclose()

    async def _catch_up(self) -> None:
        """Labels announced while this instance was not listening (or before it started)."""
        stored = await self._redis.hgetall(self._labels_key)
        if stored and self._events is not None:
            self._events.labels_changed({_text(sha256) or "": _text(value) == "1" for sha256, value in stored.items()})

    def _received(self, data: str) -> None:
        try:
            message = json.loads(data)
            if message.get("from") == self._instance:
                return
            labels, model = message.get("labels"), message.get("model")
        except (ValueError, AttributeError):
            log.warning("shared cache: ignoring a malformed announcement %.200r", data)
            return
        if self._events is None:
            return
        if isinstance(labels, dict):
            self._events.labels_changed({str(sha256): bool(invert) for sha256, invert in labels.items()})
        if isinstance(model, str):
            task = asyncio.create_task(self._events.model_announced(model))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)


async def _published(sending: Awaitable[Any]) -> bool:
    await sending
    return True


def _encode_verdict(verdict: Verdict, sha1: str) -> str:
    return json.dumps(
        {
            "invert": verdict.invert,
            "p_invert": verdict.p_invert,
            "confidence": verdict.confidence,
            "model": verdict.model,
            "source": verdict.source,
            "sha1": sha1,
        }
    )


def _text(value: bytes | str | None) -> str | None:
    # The client decodes responses; redis-py's types cannot say so.
    return value.decode() if isinstance(value, bytes) else value


def _decode_verdict(raw: bytes | str | None, sha256: str) -> tuple[Verdict, str] | None:
    if raw is None:
        return None
    try:
        fields = json.loads(raw)
        verdict = Verdict(
            bool(fields["invert"]),
            float(fields["p_invert"]),
            float(fields["confidence"]),
            sha256,
            str(fields["model"]),
            fields["source"],
        )
        return verdict, str(fields["sha1"])
    except (ValueError, KeyError, TypeError):
        log.warning("shared cache: ignoring a malformed verdict for %s", sha256)
        return None


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, separator, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{separator}{user + ':***' if user else '***'}@{host}"
