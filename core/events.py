"""Typed job events and the bus that carries them to the catalog and the UIs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

# "abandoned": stopped from outside (SIGTERM, Ctrl-C) or its process died; counts as a failure.
Outcome = Literal["succeeded", "failed", "abandoned"]


@dataclass(frozen=True)
class JobEvent:
    """Base of all job events."""

    job_id: str
    ts: float = field(default_factory=time.time, kw_only=True)

    @property
    def type(self) -> str:
        return type(self).__name__

    def payload(self) -> dict[str, object]:
        """The event's fields without job id and time (stored as JSON)."""
        d = asdict(self)
        d.pop("job_id")
        d.pop("ts")
        return d


@dataclass(frozen=True)
class JobStarted(JobEvent):
    kind: str  # backup, restore, check, ...
    db: str | None
    description: str
    host: str | None = None  # where it ran, when not in this process (an agent's job filed by the control plane)


@dataclass(frozen=True)
class PhaseChanged(JobEvent):
    phase: str


@dataclass(frozen=True)
class Progress(JobEvent):
    phase: str
    bytes_done: int
    bytes_total: int | None
    rate: float  # bytes per second, smoothed


@dataclass(frozen=True)
class JobWarning(JobEvent):
    message: str


@dataclass(frozen=True)
class JobFinished(JobEvent):
    outcome: Outcome
    error: str | None = None
    result: dict[str, object] = field(default_factory=dict)


Subscriber = Callable[[JobEvent], None]


class EventBus:
    """Synchronous fan-out of events to subscribers (each must be quick)."""

    def __init__(self) -> None:
        self._subs: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        self._subs.append(fn)
        return lambda: self._subs.remove(fn)

    def publish(self, event: JobEvent) -> None:
        """Deliver an event to every subscriber."""
        for fn in list(self._subs):
            fn(event)


class RateMeter:
    """Smoothed throughput for progress events (exponential moving average)."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.rate = 0.0
        self._last_t = time.monotonic()
        self._last_b = 0

    def update(self, bytes_done: int) -> float:
        now = time.monotonic()
        dt = now - self._last_t
        if dt > 0:
            inst = (bytes_done - self._last_b) / dt
            self.rate = inst if self.rate == 0 else self.alpha * inst + (1 - self.alpha) * self.rate
        self._last_t, self._last_b = now, bytes_done
        return self.rate
