"""Per-target health records: call statistics per window, a target's newest marks, and latency histograms.

Shared by the meter (core/storage/metered.py), the catalog that stores
them and the insights that summarise them. Latencies are kept as a
log-spaced histogram (bucket widths of 25 %), so windows merge into
percentiles over any span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from core.errors import IntegrityError, ObjectDamaged, ObjectNotFound, StorageError, TargetDamaged, TargetUnreachable

Outcome = Literal["ok", "not_found", "unreachable", "integrity", "storage", "other"]
ERROR_CLASSES: tuple[Outcome, ...] = ("unreachable", "integrity", "storage", "other")
CALL_KINDS = ("put", "get", "get_range", "list", "delete", "exists")
# Bucket i holds latencies in (B**(i-1), B**i] milliseconds; bucket 0 everything up to 1 ms.
_BASE = 1.25
_LOG_BASE = math.log(_BASE)


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a latency."""
    ms = seconds * 1000.0
    return 0 if ms <= 1.0 else math.ceil(math.log(ms) / _LOG_BASE)


def bucket_upper_s(index: int) -> float:
    """The upper edge of a bucket, in seconds (what a percentile falling in it reports)."""
    return (_BASE ** index) / 1000.0


def percentile(hist: dict[int, int], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of a bucket histogram, in seconds; None when empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(total * q / 100.0))
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return bucket_upper_s(index)
    return bucket_upper_s(max(hist))


def classify(exc: BaseException) -> Outcome:
    """The health class of a failed call."""
    if isinstance(exc, ObjectNotFound):
        return "not_found"
    if isinstance(exc, TargetUnreachable):
        return "unreachable"
    if isinstance(exc, (ObjectDamaged, IntegrityError, TargetDamaged)):
        return "integrity"
    if isinstance(exc, StorageError):
        return "storage"
    return "other"


@dataclass
class CallStats:
    """What one target's calls of one kind did since the last flush."""

    calls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # not_found and the error classes; ok is implied
    bytes_written: int = 0
    bytes_read: int = 0
    latency_sum: float = 0.0
    hist: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HealthWindow:
    """One flushed row: a target's calls of one kind in [start, end)."""

    target: str
    kind: str
    start: float
    end: float
    calls: int
    outcomes: dict[str, int]
    bytes_written: int
    bytes_read: int
    latency_sum: float
    hist: dict[int, int]


@dataclass
class TargetMarks:
    """A target's newest successes, error and listing since the last flush (None: nothing new)."""

    last_write_ok_at: float | None = None
    last_read_ok_at: float | None = None
    last_error: tuple[str, str, float] | None = None  # (class, message, time)
    # prefix -> (bytes, objects, time) of the newest listing of it
    listings: dict[str, tuple[int, int, float]] = field(default_factory=dict)

    def stored(self) -> tuple[int, int, float, list[str]] | None:
        """(bytes, objects, measured at, prefixes) from the listings, when the data packs were listed."""
        if not any(p in ("", "data/") for p in self.listings):
            return None
        # Nested prefixes (data/ab/ beside data/) would count twice: keep the outermost.
        tops = [p for p in self.listings if not any(p != q and p.startswith(q) for q in self.listings)]
        return (sum(self.listings[p][0] for p in tops), sum(self.listings[p][1] for p in tops),
                min(self.listings[p][2] for p in tops), sorted(tops))


@dataclass(frozen=True)
class TargetHealthState:
    """What the catalog keeps per target: newest successes, newest error, and the bytes it stores."""

    target: str
    last_write_ok_at: float | None = None
    last_read_ok_at: float | None = None
    last_error_class: str | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    stored_bytes: int | None = None
    stored_objects: int | None = None
    stored_measured_at: float | None = None
