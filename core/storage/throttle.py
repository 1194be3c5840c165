"""Bandwidth limits of a target: a token bucket per direction, shared by every call.

One ``TokenBucket`` paces all uploads (or all downloads) of one Storage, whatever
the number of concurrent callers. Where the backend can wait between pieces of
a transfer (local targets, ranged reads) a call takes its bytes in slices and
each slice waits until the bucket has earned it (``acquire``); a request that
cannot be cut (one S3 put or part, a whole-object get) starts once the link is
free and returns once its bytes are paid for (``paced``, ``paced_read``). The
bucket holds at most one slice of credit (after an idle spell, one slice goes
at once: the first second of a transfer is not free) and starts empty, so N
bytes through a fresh bucket take at least N / rate seconds.

Waits happen on the event loop, before a slice is handed to a worker thread:
a throttled target never holds one of the loop's worker threads while it
waits, so the other targets' calls do not queue behind its pacing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class TransferLimits(Protocol):
    """What a target config says about bandwidth (core.config's target classes)."""

    max_upload_rate: float | None
    max_download_rate: float | None


# What backups did before parallel_uploads existed: three packs in the air per target.
DEFAULT_PARALLEL_UPLOADS = 3
# A slice is at most this, and at most 1/20 of a second's worth of the rate.
MAX_SLICE = 256 * 1024
SLICES_PER_SECOND = 20


def slice_for(rate: float) -> int:
    """The pacing step for ``rate`` bytes/s: 256 KiB or rate/20, whichever is smaller (at least 1 byte)."""
    return max(1, min(MAX_SLICE, int(rate / SLICES_PER_SECOND)))


class TokenBucket:
    """Paces bytes to ``rate`` per second, with at most ``burst`` bytes of credit."""

    def __init__(self, rate: float, burst: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be above zero, got {rate}")
        self.rate = float(rate)
        self.slice = slice_for(rate)
        self.burst = self.slice if burst is None else max(0, burst)
        self._clock = clock
        self._lock = threading.Lock()
        # When the bytes reserved so far are paid for (a virtual time); None until the
        # first call, so a bucket made long before its first transfer starts empty.
        self._paid_until: float | None = None

    def book(self, n: int, since: float | None = None) -> tuple[float, float]:
        """Take ``n`` bytes: (when the link is free for them, when they are paid for), on the bucket's clock.

        ``since``: when a transfer of unknown size began (its bytes are booked once they have arrived).
        """
        with self._lock:
            now = self._clock()
            ref = now if since is None else min(since, now)
            if self._paid_until is None:
                self._paid_until = ref
            # Idle time earns credit, but never more than the burst.
            start = max(self._paid_until, ref - self.burst / self.rate)
            self._paid_until = start + n / self.rate
            return max(start, now), self._paid_until

    def reserve(self, n: int) -> float:
        """Take ``n`` bytes and return how long the caller must wait before sending them (seconds)."""
        return max(0.0, self.book(n)[1] - self._clock())

    async def paced(self, n: int, send: Callable[[], Awaitable[T]],
                    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> T:
        """Run ``send`` (a transfer of ``n`` bytes that cannot be cut into slices, e.g. one S3 part).

        It starts once the transfers booked before it are paid for, and the call returns once its own
        bytes are: the link sees at most one such transfer at a time, the caller at most the rate.
        """
        start_at, paid_at = self.book(n)
        if start_at > self._clock():
            await sleep(start_at - self._clock())
        result = await send()
        if paid_at > self._clock():
            await sleep(paid_at - self._clock())
        return result

    async def paced_read(self, fetch: Callable[[], Awaitable[bytes]],
                         sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> bytes:
        """Run ``fetch``, a download whose size is known only once it arrived; returns once its bytes are paid for."""
        began = self._clock()
        data = await fetch()
        _, paid_at = self.book(len(data), since=began)
        if paid_at > self._clock():
            await sleep(paid_at - self._clock())
        return data

    def _slices(self, n: int) -> list[int]:
        full, rest = divmod(n, self.slice)
        return [self.slice] * full + ([rest] if rest else [])

    async def acquire(self, n: int, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        """Wait on the event loop until ``n`` bytes may go, slice by slice (concurrent callers interleave)."""
        for size in self._slices(n):
            delay = self.reserve(size)
            if delay > 0:
                await sleep(delay)


class Limits:
    """A target's upload and download buckets (either may be None: unlimited)."""

    def __init__(self, upload_rate: float | None = None, download_rate: float | None = None) -> None:
        self.upload = TokenBucket(upload_rate) if upload_rate else None
        self.download = TokenBucket(download_rate) if download_rate else None

    @classmethod
    def of(cls, config: TransferLimits) -> Limits:
        """The buckets a target's config asks for."""
        return cls(config.max_upload_rate, config.max_download_rate)

    async def paced_upload(self, n: int, send: Callable[[], Awaitable[T]]) -> T:
        """Run ``send``, an upload of ``n`` bytes in one request, paced as a whole (TokenBucket.paced)."""
        return await send() if self.upload is None else await self.upload.paced(n, send)

    async def paced_download(self, n: int, fetch: Callable[[], Awaitable[T]]) -> T:
        """Run ``fetch``, a download of ``n`` bytes in one request, paced as a whole (TokenBucket.paced)."""
        return await fetch() if self.download is None else await self.download.paced(n, fetch)

    async def before_upload(self, n: int) -> None:
        """Pace ``n`` bytes about to be written."""
        if self.upload is not None:
            await self.upload.acquire(n)

    async def before_download(self, n: int) -> None:
        """Pace ``n`` bytes about to be read (their size known in advance: ranged reads)."""
        if self.download is not None:
            await self.download.acquire(n)

    async def paced_get(self, fetch: Callable[[], Awaitable[bytes]]) -> bytes:
        """Run ``fetch``, a whole-object download of unknown size (TokenBucket.paced_read)."""
        return await fetch() if self.download is None else await self.download.paced_read(fetch)


# Shared by every Storage that has no limits configured (both buckets None: nothing to share).
NO_LIMITS = Limits()
