"""Per-client rate limiting: a token bucket per client IP, and the middleware that answers 429.

Every API request takes one token; a client gets `burst` tokens at once and `per_minute` more per minute.
Buckets live in a TTL cache whose TTL is the time a bucket takes to fill up again: a client that has been
quiet that long is indistinguishable from a new one, so forgetting it is exact, and memory stays bounded
by `max_clients` even when addresses are spoofed or numerous (IPv6).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cachetools import TTLCache

from proxy.errors import TooManyRequests


class RateLimited(TooManyRequests):
    """429 with the Retry-After header the client should honour."""

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(f"rate limit exceeded; retry in {seconds} s")
        self.headers = {"Retry-After": str(seconds)}


class RateLimiter:
    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1 or burst < 1:
            raise ValueError("per_minute and burst must be at least 1")
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst)
        self.clock = clock
        refill_seconds = self.burst / self.rate
        self._buckets: TTLCache[str, tuple[float, float]] = TTLCache(max_clients, refill_seconds, timer=clock)

    def acquire(self, client: str) -> float | None:
        """Take a token for `client`: None when allowed, else the seconds until a token is available."""
        now = self.clock()
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            return (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens - 1.0, now)
        return None


def client_address(request: web.Request, *, trust_forwarded_for: bool) -> str:
    """The client's IP: the peer address, or behind a trusted proxy the address that proxy appended last."""
    if trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last
    return request.remote or "unknown"


def rate_limit_middleware(
    limiter: RateLimiter,
    *,
    exempt_paths: Collection[str],
    trust_forwarded_for: bool,
    on_limited: Callable[[], None],
) -> Middleware:
    """Refuse requests over the client's budget with 429 and Retry-After; health and metrics are exempt."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in exempt_paths:
            wait = limiter.acquire(client_address(request, trust_forwarded_for=trust_forwarded_for))
            if wait is not None:
                on_limited()
                raise RateLimited(wait)
        return await handler(request)

    return middleware
