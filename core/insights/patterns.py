"""Failure patterns: failed jobs by hour of day, by target and by error class, and the pattern that stands out.

Pure functions over :class:`core.records.JobFailure` rows. Hours are UTC
hours of the job's start, as every time the console and the CLI show.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from core.errors import target_named
from core.records import JobFailure

MIN_PATTERN = 3  # a pattern needs at least this many failures in one group
INTERRUPTED = "interrupted"  # the class of an abandoned job (SIGTERM, Ctrl-C, a dead process)
UNRECORDED = "unrecorded"  # failed before the class was recorded (older catalogs)


@dataclass(frozen=True)
class FailurePatterns:
    """Failures of a window grouped three ways, and the one-line pattern (None when none stands out)."""

    total: int
    by_hour: tuple[int, ...]  # 24 counts, UTC hour of the job's start
    by_target: tuple[tuple[str, int], ...]  # most first; failures that blame no target are left out
    by_class: tuple[tuple[str, int], ...]  # most first
    pattern: str | None

    def to_json(self) -> dict[str, object]:
        return {"total": self.total, "by_hour": list(self.by_hour), "by_target": dict(self.by_target),
                "by_class": dict(self.by_class), "pattern": self.pattern}


def error_class(f: JobFailure) -> str:
    """The failure's error class: as recorded, ``interrupted`` for an abandoned job, else ``unrecorded``."""
    if f.error_class:
        return f.error_class
    return INTERRUPTED if f.state == "abandoned" else UNRECORDED


def failure_target(f: JobFailure) -> str | None:
    """The target a failure blames: as recorded, else the one its message names (``target 'NAME': ...``)."""
    return f.target or target_named(f.error)


def _hour(ts: float) -> int:
    return datetime.fromtimestamp(ts, UTC).hour


def _most(counter: Counter[str]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def _window(hour: int) -> str:
    return f"between {hour:02d}:00 and {(hour + 1) % 24:02d}:00"


def failure_patterns(failures: Sequence[JobFailure]) -> FailurePatterns:
    """Group failures by hour, target and class, and name the pattern when one stands out.

    A group *stands out* when it holds at least half of the M failures and
    at least 3 of them (``MIN_PATTERN``). The checks run in this order and
    the first that stands out is named:

    1. one target in one 1-hour window (UTC): "8 of 11 failures hit target
       offsite between 02:00 and 03:00";
    2. one target: "8 of 11 failures hit target offsite";
    3. one 1-hour window: "8 of 11 failures started between 02:00 and 03:00 (UTC)";
    4. one error class (not ``unrecorded``): "8 of 11 failures were TargetUnreachable".

    Otherwise there is no pattern line (None). Ties go to the earlier hour,
    then to the name first in alphabetical order.
    """
    total = len(failures)
    hours = [0] * 24
    targets: Counter[str] = Counter()
    classes: Counter[str] = Counter()
    pairs: Counter[tuple[str, int]] = Counter()
    for f in failures:
        h = _hour(f.started_at)
        hours[h] += 1
        classes[error_class(f)] += 1
        target = failure_target(f)
        if target is not None:
            targets[target] += 1
            pairs[(target, h)] += 1
    need = max(MIN_PATTERN, (total + 1) // 2)
    pattern: str | None = None
    best_pair = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]), default=None)
    best_target = _most(targets)[0] if targets else None
    best_hour = min(range(24), key=lambda h: (-hours[h], h))
    # A class no failure recorded says nothing about the failures.
    best_class = next((kv for kv in _most(classes) if kv[0] != UNRECORDED), None)
    if best_pair is not None and best_pair[1] >= need:
        (target, hour), n = best_pair
        pattern = f"{n} of {total} failures hit target {target} {_window(hour)}"
    elif best_target is not None and best_target[1] >= need:
        pattern = f"{best_target[1]} of {total} failures hit target {best_target[0]}"
    elif hours[best_hour] >= need:
        pattern = f"{hours[best_hour]} of {total} failures started {_window(best_hour)} (UTC)"
    elif best_class is not None and best_class[1] >= need:
        pattern = f"{best_class[1]} of {total} failures were {best_class[0]}"
    return FailurePatterns(total, tuple(hours), _most(targets), _most(classes), pattern)
