"""`backstop insights` and the console's insight lines: read the catalog, hand the records to the pure functions.

Failure patterns (``patterns``), retention cost in bytes (``retention_cost``)
and the recovery-time forecast (``forecast``), per database. Reads go through
:class:`core.catalog.base.CatalogQueries` only, bounded by time windows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from core.catalog.base import CatalogQueries
from core.config import BackstopConfig
from core.drills.model import DrillReport
from core.insights.forecast import Forecast, Measured, forecast
from core.insights.kpis import DAY
from core.insights.patterns import FailurePatterns, failure_patterns
from core.insights.retention_cost import RetentionCost, SnapshotSize, retention_cost
from core.records import RestoreRecord, SnapshotRow
from core.retention.policy import parse_time

MAX_SNAPSHOTS = 20_000  # per database: more than any retention keeps
RESTORE_HISTORY_DAYS = 365


@dataclass(frozen=True)
class Insights:
    """The three insight sections over one window."""

    now: float
    days: int
    db: str | None
    failures: FailurePatterns
    retention: tuple[RetentionCost, ...]
    forecasts: tuple[Forecast, ...]

    def to_json(self) -> dict[str, object]:
        return {"now": self.now, "days": self.days, "db": self.db, "failures": self.failures.to_json(),
                "retention": [r.to_json() for r in self.retention],
                "forecasts": [f.to_json() for f in self.forecasts]}


def measured_restores(restores: Sequence[RestoreRecord], drills: Sequence[DrillReport],
                      sizes: dict[str, int]) -> list[Measured]:
    """Successful restores and passed drills as (time, seconds, bytes), oldest first.

    A drill that also left a restore row (the runner restores through the
    same code) is counted once, from the restore row; a drill whose snapshot
    is no longer in the catalog has no size and is left out.
    """
    out = [Measured(r.started_at, r.duration_s, r.bytes) for r in restores if r.ok]
    rows = [r for r in restores if r.is_drill]
    for d in drills:
        if not d.passed or d.snapshot_id not in sizes:
            continue
        if any(r.snapshot_id == d.snapshot_id and d.started_at - 1 <= r.started_at <= d.finished_at + 1
               for r in rows):
            continue
        out.append(Measured(d.started_at, d.recovery_s, sizes[d.snapshot_id]))
    return sorted(out, key=lambda m: m.at)


def _growth_series(snaps: Sequence[SnapshotRow], kind: str, since: float) -> list[tuple[float, int]]:
    """(time, size) of one kind's snapshots since a time, or of all of them when fewer than 2 are that recent."""
    series = [(parse_time(s.finished_at).timestamp(), s.size_bytes) for s in snaps if s.kind == kind]
    recent = [p for p in series if p[0] >= since]
    return sorted(recent if len(recent) >= 2 else series)


def database_insights(reader: CatalogQueries, config: BackstopConfig, name: str, now: float,
                      days: int) -> tuple[RetentionCost, Forecast]:
    """One database's retention cost and recovery-time forecast."""
    entry = config.database(name)
    snaps = reader.latest_snapshots(name, MAX_SNAPSHOTS)
    sizes = [SnapshotSize(s.id, s.kind, parse_time(s.finished_at), s.size_bytes, s.stored_bytes, s.status)
             for s in snaps]
    cost = retention_cost(name, sizes, entry.retention, datetime.fromtimestamp(now, UTC))
    since = now - RESTORE_HISTORY_DAYS * DAY
    restores = reader.restores(since=since, db=name, limit=1000)
    drills = reader.drill_reports(db=name, since=since)
    by_id = {s.id: s for s in snaps}
    measured = measured_restores(restores, drills, {s.id: s.size_bytes for s in snaps})
    # Growth of the kind the restores restored (logical unless they were physical).
    kinds = Counter(by_id[r.snapshot_id].kind for r in restores if r.snapshot_id in by_id)
    kind = kinds.most_common(1)[0][0] if kinds else "logical"
    series = _growth_series(snaps, kind, now - days * DAY)
    return cost, forecast(name, measured, series, entry.rto_minutes * 60, now)


def build_insights(reader: CatalogQueries, config: BackstopConfig, now: float, *, days: int = 30,
                   db: str | None = None) -> Insights:
    """Failure patterns over the last ``days`` days, retention cost and forecast per database (or one)."""
    names = [db] if db else [d.name for d in config.databases]
    if db:
        config.database(db)  # an unknown name fails here, naming the configured ones
    failures = [f for f in reader.job_failures_since(now - days * DAY) if db is None or f.db == db]
    per_db = [database_insights(reader, config, n, now, days) for n in names]
    return Insights(now, days, db, failure_patterns(failures), tuple(c for c, _ in per_db),
                    tuple(f for _, f in per_db))
