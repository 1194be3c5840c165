"""The three KPIs of the operator console, computed from catalog records.

Every function here is pure: it takes records and a ``now`` and returns a
``Kpi``. The definitions below are the ones the console shows when the
operator asks what a number means, so they are written for operators.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from core.format import duration
from core.records import JobRecord, RestoreRecord, VerificationRecord

Status = Literal["ok", "warn", "bad", "none"]
DAY = 86_400.0

COMPLETION_DEFINITION = (
    "Backup Completion Rate = completed backups / (backups started + scheduled runs that never started), "
    "over the last {days} days. A failed backup and a missed run both count against it; backups still "
    "running are not counted yet. Target: at least {target:.0f}%."
)
INTEGRITY_DEFINITION = (
    "Data Integrity Verification Success = verifications that passed / verifications run, over the last "
    "{days} days; every target checked counts once. Coverage = share of the snapshots in the catalog "
    "with a passed verification in the last {coverage_days} days. Target: 100% passed."
)
RECOVERY_DEFINITION = (
    "Average Recovery Time = mean and 95th percentile of measured restores and drills that succeeded "
    "over the last {days} days, from start to a usable database. Compared with each database's RTO "
    "target: within RTO = share of those restores that finished inside their database's RTO."
)


@dataclass(frozen=True)
class Kpi:
    """One key figure with its trend and what it means."""

    key: str
    title: str
    value: float | None  # None: no data in the window
    display: str
    detail: str
    status: Status
    definition: str
    trend: tuple[float, ...] = field(default_factory=tuple)  # one value per day, oldest first


def _day_index(ts: float, now: float, days: int) -> int | None:
    """Which of the last ``days`` day-buckets ``ts`` falls into (0 = oldest), or None."""
    age = now - ts
    if age < 0 or age >= days * DAY:
        return None
    return days - 1 - int(age // DAY)


def _fill(values: list[float | None]) -> tuple[float, ...]:
    """Carry the last known value over days without data (a sparkline has no gaps)."""
    out: list[float] = []
    last = next((v for v in values if v is not None), 0.0)
    for v in values:
        if v is not None:
            last = v
        out.append(last)
    return tuple(out)


AgeCounts = Mapping[int, tuple[int, int]]  # whole days ago (0 = the last 24 h) -> (passed, failed)


def counts_by_age(outcomes: Iterable[tuple[bool, float]], now: float) -> dict[int, tuple[int, int]]:
    """(passed, at) pairs to per-day counts by age; the catalog computes the same in SQL."""
    out: dict[int, list[int]] = {}
    for ok, at in outcomes:
        if at > now:
            continue
        c = out.setdefault(int((now - at) // DAY), [0, 0])
        c[0 if ok else 1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def _rate_trend(counts: AgeCounts, trend_days: int, extra_failed: Mapping[int, int] | None = None) -> tuple[float, ...]:
    values: list[float | None] = []
    for age in range(trend_days - 1, -1, -1):
        ok, bad = counts.get(age, (0, 0))
        bad += (extra_failed or {}).get(age, 0)
        values.append(100.0 * ok / (ok + bad) if ok + bad else None)
    return _fill(values)


def backup_completion(jobs: Sequence[JobRecord], now: float, *, missed_runs: Sequence[float] = (),
                      days: int = 7, target_pct: float = 99.0, trend_days: int = 14) -> Kpi:
    """Backup Completion Rate from backup jobs (any state) and missed scheduled runs (their due times)."""
    done = counts_by_age(((j.state == "succeeded", j.started_at) for j in jobs
                          if j.kind == "backup" and j.state != "running"), now)
    missed = {age: bad for age, (_, bad) in counts_by_age(((False, t) for t in missed_runs), now).items()}
    return completion_from_counts(done, missed, days=days, target_pct=target_pct, trend_days=trend_days)


def completion_from_counts(done: AgeCounts, missed: Mapping[int, int], *, days: int = 7, target_pct: float = 99.0,
                           trend_days: int = 14) -> Kpi:
    """Backup Completion Rate from per-day (succeeded, failed) backups and per-day missed runs."""
    ok = sum(done.get(a, (0, 0))[0] for a in range(days))
    failed = sum(done.get(a, (0, 0))[1] for a in range(days))
    n_missed = sum(missed.get(a, 0) for a in range(days))
    denom = ok + failed + n_missed
    trend = _rate_trend(done, trend_days, missed)
    definition = COMPLETION_DEFINITION.format(days=days, target=target_pct)
    if denom == 0:
        return Kpi("completion", "Backup Completion Rate", None, "no data",
                   f"no backups in the last {days} days", "none", definition, trend)
    pct = 100.0 * ok / denom
    status: Status = "ok" if pct >= target_pct else ("warn" if pct >= target_pct - 4 else "bad")
    detail = f"{ok} of {denom} in {days}d; {failed} failed, {n_missed} missed"
    return Kpi("completion", "Backup Completion Rate", pct, f"{pct:.1f}%", detail, status, definition, trend)


def verification_success(verifications: Sequence[VerificationRecord], now: float, *, snapshots_total: int,
                         snapshots_verified_recently: int, days: int = 7, coverage_days: int = 30,
                         trend_days: int = 14) -> Kpi:
    """Data Integrity Verification Success: pass rate of verifications, plus verified-snapshot coverage."""
    counts = counts_by_age(((v.ok, v.finished_at) for v in verifications), now)
    return integrity_from_counts(counts, snapshots_total=snapshots_total,
                                 snapshots_verified_recently=snapshots_verified_recently, days=days,
                                 coverage_days=coverage_days, trend_days=trend_days)


def integrity_from_counts(counts: AgeCounts, *, snapshots_total: int, snapshots_verified_recently: int,
                          days: int = 7, coverage_days: int = 30, trend_days: int = 14) -> Kpi:
    """Data Integrity Verification Success from per-day (passed, failed) verification counts."""
    passed = sum(counts.get(a, (0, 0))[0] for a in range(days))
    failed = sum(counts.get(a, (0, 0))[1] for a in range(days))
    trend = _rate_trend(counts, trend_days)
    coverage = 100.0 * snapshots_verified_recently / snapshots_total if snapshots_total else 0.0
    definition = INTEGRITY_DEFINITION.format(days=days, coverage_days=coverage_days)
    cov_text = f"{coverage:.0f}% of {snapshots_total} snapshots verified in {coverage_days}d"
    if passed + failed == 0:
        return Kpi("integrity", "Data Integrity Verification", None, "no data",
                   f"no verifications in {days}d; {cov_text}", "none", definition, trend)
    pct = 100.0 * passed / (passed + failed)
    status: Status = "bad" if failed else ("ok" if coverage >= 90 else "warn")
    detail = f"{passed} of {passed + failed} passed; {cov_text}"
    return Kpi("integrity", "Data Integrity Verification", pct, f"{pct:.1f}%", detail, status, definition, trend)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (what operators expect from 'p95 of 20 restores')."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def recovery_time(restores: Sequence[RestoreRecord], now: float, *, rto_s: Mapping[str, float],
                  default_rto_s: float, days: int = 90, trend_days: int = 14) -> Kpi:
    """Average Recovery Time: mean and p95 of successful measured restores, against the RTO targets."""
    since = now - days * DAY
    good = [r for r in restores if r.ok and r.started_at >= since]
    per_day: list[list[float]] = [[] for _ in range(trend_days)]
    for r in restores:
        i = _day_index(r.started_at, now, trend_days)
        if r.ok and i is not None:
            per_day[i].append(r.duration_s)
    trend = _fill([statistics.fmean(d) if d else None for d in per_day])
    definition = RECOVERY_DEFINITION.format(days=days)
    rtos = {r.db: rto_s.get(r.db, default_rto_s) for r in good}
    if not good:
        rto_text = duration(default_rto_s)
        return Kpi("recovery", "Average Recovery Time", None, "no data",
                    f"no measured restores in {days}d (RTO {rto_text})", "none", definition, trend)
    durations = [r.duration_s for r in good]
    mean = statistics.fmean(durations)
    p95 = percentile(durations, 95)
    within = sum(1 for r in good if r.duration_s <= rtos[r.db])
    share = 100.0 * within / len(good)
    tightest = min(rtos.values())
    status: Status = "ok" if within == len(good) else ("warn" if mean <= tightest else "bad")
    display = f"{duration(mean)} mean"
    detail = f"p95 {duration(p95)}; {share:.0f}% of {len(good)} within RTO {duration(tightest)}"
    return Kpi("recovery", "Average Recovery Time", mean, display, detail, status, definition, trend)
