"""A request-rate and concurrency limit that many workers (rollouts, judges) in one process share.

``RateLimiter(requests_per_minute=600, max_concurrency=16)`` is an async context manager: entering it
waits for a free concurrency slot, then for a token from a token bucket refilled at
``requests_per_minute / 60`` tokens per second (capacity ``burst``). Over any window of ``T`` seconds
at most ``burst + T * rate`` requests start, and at most ``max_concurrency`` are in flight.

Why these choices:

- The slot is taken before the token, so a request starts as soon as its token is granted; taking
  tokens first would let requests that queued for a slot start in a burst above the rate.
- Tokens are reserved in arrival order (the bucket may go negative) and waited for outside the lock,
  so waiting requests are served first come, first served.
- The state sits behind a ``threading.Lock`` and waiters are woken through their own event loop, so
  one limiter works across event loops and threads (``Judge.score`` runs each call in a fresh loop;
  a Ray or thread worker may run its own). An ``asyncio.Semaphore`` would bind to the first loop.

``shared_limiter(group, ...)`` returns one limiter per group name for the whole process, so backends
built separately from a config (a rubric judge and a sufficiency judge on the same endpoint) can
share a provider's quota by naming the same group.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any

from genevolve.registry import ConfigError


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class RateLimiter:
    """Bound requests per minute (token bucket) and requests in flight.

    Args:
        requests_per_minute: sustained rate; ``None`` = unlimited.
        max_concurrency: requests in flight at once; ``None`` = unbounded.
        burst: bucket capacity, i.e. how many requests may start at once after an idle spell
            (default 1: requests are spread evenly, which providers' per-second limits prefer).
    """

    def __init__(self, requests_per_minute: float | None = None, max_concurrency: int | None = None,
                 burst: int = 1) -> None:
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise ConfigError(f"requests_per_minute={requests_per_minute!r}; expected a positive number or None")
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError(f"max_concurrency={max_concurrency!r}; expected >= 1 or None")
        if burst < 1:
            raise ConfigError(f"burst={burst!r}; expected >= 1")
        self.requests_per_minute = requests_per_minute
        self.max_concurrency = max_concurrency
        self.burst = burst
        self._rate = requests_per_minute / 60.0 if requests_per_minute else None  # tokens per second
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._in_flight = 0
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()
        self.started = 0  # requests let through so far (for metrics and tests)

    def __repr__(self) -> str:
        return (f"RateLimiter(requests_per_minute={self.requests_per_minute}, "
                f"max_concurrency={self.max_concurrency}, burst={self.burst})")

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def __aenter__(self) -> RateLimiter:
        await self._acquire_slot()
        try:
            await self._acquire_token()
        except BaseException:
            self._release_slot()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release_slot()

    # -- concurrency --------------------------------------------------------------------------

    async def _acquire_slot(self) -> None:
        if self.max_concurrency is None:
            return
        with self._lock:
            if self._in_flight < self.max_concurrency and not self._waiters:
                self._in_flight += 1
                return
            loop = asyncio.get_running_loop()
            waiter = (loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await waiter[1]  # a releasing request hands its slot over (in_flight unchanged)
        except asyncio.CancelledError:
            with self._lock:
                queued = waiter in self._waiters
                if queued:
                    self._waiters.remove(waiter)
            if not queued:  # the slot was already handed to us: pass it on
                self._release_slot()
            raise

    def _release_slot(self) -> None:
        if self.max_concurrency is None:
            return
        with self._lock:
            while self._waiters:
                loop, fut = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(_wake, fut)
                    return
                except RuntimeError:  # that waiter's loop is closed: try the next one
                    continue
            self._in_flight -= 1

    # -- rate ---------------------------------------------------------------------------------

    async def _acquire_token(self) -> None:
        with self._lock:
            self.started += 1
            if self._rate is None:
                return
            now = time.monotonic()
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            self._tokens -= 1.0  # reserve; a negative balance is the queue ahead of the next caller
            wait = -self._tokens / self._rate if self._tokens < 0 else 0.0
        if wait > 0:
            try:
                await asyncio.sleep(wait)
            except asyncio.CancelledError:
                with self._lock:
                    self._tokens += 1.0  # give the reservation back
                    self.started -= 1
                raise


_SHARED: dict[str, RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(group: str, requests_per_minute: float | None = None, max_concurrency: int | None = None,
                   burst: int = 1) -> RateLimiter:
    """The process-wide limiter named ``group``, created on first use with these settings.

    A later call with different settings is a configuration error: two backends would otherwise
    silently disagree about one quota.
    """
    settings: dict[str, Any] = {"requests_per_minute": requests_per_minute, "max_concurrency": max_concurrency,
                                "burst": burst}
    with _SHARED_LOCK:
        limiter = _SHARED.get(group)
        if limiter is None:
            limiter = _SHARED[group] = RateLimiter(**settings)
            return limiter
    existing = {k: getattr(limiter, k) for k in settings}
    if existing != settings:
        raise ConfigError(f"rate-limit group {group!r} already exists with {existing}; got {settings}")
    return limiter
