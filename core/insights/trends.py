"""Trend series for the console's charts, computed from catalog records.

Pure functions: the engine reads the records, these shape them into series
(oldest first) that any front end can draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from core.format import duration
from core.insights.alerts import iso_to_epoch
from core.insights.forecast import fit
from core.insights.kpis import DAY
from core.records import JobRecord, RestoreRecord

# Snapshot kinds that are self-contained; everything else (incremental base
# backups, WAL segments, when physical backups land) counts as incremental.
FULL_KINDS = frozenset({"logical", "full"})


@dataclass(frozen=True)
class RestorePoint:
    """One measured restore."""

    at: float
    duration_s: float
    db: str
    ok: bool
    rto_s: float


@dataclass(frozen=True)
class RestoreTrend:
    """Restore-time history against the RTO, with a simple forecast."""

    points: tuple[RestorePoint, ...]
    rto_s: float  # the tightest RTO among the databases shown
    forecast: str  # one line for operators


@dataclass(frozen=True)
class DurationPoint:
    """How long one backup took."""

    at: float
    duration_s: float
    db: str


@dataclass(frozen=True)
class SizeBucket:
    """Stored bytes of one day, split into full and incremental."""

    day: str  # YYYY-MM-DD (UTC)
    logical_bytes: int  # size of the databases as backed up that day
    full_stored: int  # new bytes stored by full snapshots
    incremental_stored: int  # new bytes stored by incremental backups and WAL


@dataclass(frozen=True)
class Trends:
    """Everything the trends screen draws."""

    restores: RestoreTrend
    backups: tuple[DurationPoint, ...]
    sizes: tuple[SizeBucket, ...]
    failures_by_hour: tuple[int, ...]  # 24 counts, hour of day (UTC)
    failures_by_kind: tuple[tuple[str, int], ...]
    retention_advice: str


def restore_trend(restores: Sequence[RestoreRecord], rto_s: Mapping[str, float], default_rto_s: float,
                  now: float) -> RestoreTrend:
    """Restore history (oldest first) with a linear forecast of when the RTO would be missed."""
    pts = tuple(RestorePoint(r.started_at, r.duration_s, r.db, r.ok, rto_s.get(r.db, default_rto_s))
                for r in sorted(restores, key=lambda r: r.started_at))
    rto = min((p.rto_s for p in pts), default=default_rto_s)
    return RestoreTrend(pts, rto, _forecast([p for p in pts if p.ok], rto, now))


def _forecast(points: Sequence[RestorePoint], rto: float, now: float) -> str:
    """Least-squares line through the recent successful restores against time, extended to the RTO.

    The fleet-wide fallback; the per-database forecast against size and growth is
    :func:`core.insights.forecast.forecast` (what the console and `backstop insights` show).
    """
    recent = list(points)[-30:]
    if len(recent) < 3:
        return "forecast: needs at least 3 measured restores"
    line = fit([(p.at - now) / DAY for p in recent], [p.duration_s for p in recent])
    if line is None:
        return "forecast: restores all at one moment; no trend yet"
    today, slope = line  # seconds now, seconds per day
    if today >= rto:
        return f"forecast: restores already take about {duration(today)}, over the RTO of {duration(rto)}"
    if slope <= 0:
        return f"forecast: restore time is flat or falling (about {duration(today)}); RTO not at risk"
    days = (rto - today) / slope
    return (f"forecast: restore time grows {duration(slope * 30)} a month; "
            f"reaches the RTO of {duration(rto)} in about {days:.0f} days")


def backup_durations(rows: Sequence[tuple[str, str, str, str, int, int]]) -> tuple[DurationPoint, ...]:
    """(db, kind, started, finished, size, stored) rows to backup durations, oldest first."""
    out = []
    for db, _kind, started, finished, _size, _stored in rows:
        t0, t1 = iso_to_epoch(started), iso_to_epoch(finished)
        out.append(DurationPoint(t1, max(0.0, t1 - t0), db))
    return tuple(sorted(out, key=lambda p: p.at))


def size_buckets(rows: Sequence[tuple[str, str, str, str, int, int]], now: float, days: int) -> tuple[SizeBucket, ...]:
    """Per-day stored bytes for the last ``days`` days (UTC days, oldest first, empty days included)."""
    today = datetime.fromtimestamp(now, UTC).date()
    keys = [(today.toordinal() - i) for i in range(days - 1, -1, -1)]
    acc = {k: [0, 0, 0] for k in keys}
    for _db, kind, _started, finished, size, stored in rows:
        k = datetime.fromisoformat(finished).astimezone(UTC).date().toordinal()
        if k in acc:
            acc[k][0] += size
            acc[k][1 if kind in FULL_KINDS else 2] += stored
    return tuple(SizeBucket(datetime.fromordinal(k).strftime("%Y-%m-%d"), *acc[k]) for k in keys)


def failures(jobs: Sequence[JobRecord]) -> tuple[tuple[int, ...], tuple[tuple[str, int], ...]]:
    """Failed jobs by hour of day (UTC, as the console shows times), and by job kind (most first)."""
    hours = [0] * 24
    kinds: dict[str, int] = {}
    for j in jobs:
        if j.state in ("failed", "abandoned"):
            hours[datetime.fromtimestamp(j.started_at, UTC).hour] += 1
            kinds[j.kind] = kinds.get(j.kind, 0) + 1
    return tuple(hours), tuple(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))


def retention_advice(sizes: Sequence[SizeBucket]) -> str:
    """One line on what the stored-size series suggests."""
    logical = sum(b.logical_bytes for b in sizes)
    stored = sum(b.full_stored + b.incremental_stored for b in sizes)
    if not logical:
        return "no backups in this period"
    ratio = stored / logical
    if ratio > 0.5:
        return (f"new data is {ratio:.0%} of what was backed up: deduplication saves little; "
                "consider fewer full snapshots and WAL archiving for the changes")
    return f"new data is {ratio:.1%} of what was backed up: deduplication keeps extra snapshots cheap"


def build_trends(*, restores: Sequence[RestoreRecord], snapshot_rows: Sequence[tuple[str, str, str, str, int, int]],
                 jobs: Sequence[JobRecord], rto_s: Mapping[str, float], default_rto_s: float, now: float,
                 days: int = 30) -> Trends:
    """All series for the trends screen."""
    sizes = size_buckets(snapshot_rows, now, days)
    by_hour, by_kind = failures(jobs)
    return Trends(restore_trend(restores, rto_s, default_rto_s, now), backup_durations(snapshot_rows), sizes,
                  by_hour, by_kind, retention_advice(sizes))
