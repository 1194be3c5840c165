"""Assemble the dashboard and the trend series from the catalog (the engine's read side).

These functions do the catalog reads (bounded by time windows, so they stay
fast with 100,000 snapshots and a million job events) and hand the records
to the pure computations in ``kpis``, ``alerts`` and ``trends``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.catalog.base import CatalogQueries
from core.config import BackstopConfig
from core.format import iso_at
from core.insights.alerts import Alert, build_alerts, iso_to_epoch, missing_copy_alerts
from core.insights.kpis import DAY, Kpi, completion_from_counts, counts_by_age, integrity_from_counts, recovery_time
from core.insights.targets import summarise, target_health_alerts
from core.insights.trends import Trends, build_trends
from core.records import JobRecord, RestoreRecord

DEFAULT_RTO_S = 3600.0


@dataclass(frozen=True)
class Dashboard:
    """What the dashboard shows."""

    kpis: tuple[Kpi, Kpi, Kpi]
    alerts: tuple[Alert, ...]
    running: tuple[JobRecord, ...]
    now: float


def rto_targets(config: BackstopConfig) -> dict[str, float]:
    """Each configured database's RTO in seconds."""
    return {d.name: d.rto_minutes * 60 for d in config.databases}


def default_rto(config: BackstopConfig) -> float:
    """The RTO used for databases without one: the tightest configured, else one hour."""
    return min(rto_targets(config).values(), default=DEFAULT_RTO_S)


def build_kpis(reader: CatalogQueries, config: BackstopConfig, now: float, *, trend_days: int = 14,
               missed: Sequence[tuple[str, float]] | None = None,
               restores: Sequence[RestoreRecord] | None = None) -> tuple[Kpi, Kpi, Kpi]:
    """The three KPIs as of ``now``, as the dashboard and the metrics endpoint show them (``missed``, ``restores``:
    the missed runs and the restores of the last 90 days, when the caller read them already)."""
    days = max(trend_days, 7)
    total = reader.snapshot_count()
    covered = reader.snapshots_verified_since(now - 30 * DAY)
    if restores is None:
        restores = reader.restores(since=now - 90 * DAY)
    if missed is None:
        missed = reader.missed_runs_since(now - days * DAY)
    missed_by_age = {age: n for age, (_, n) in counts_by_age(((False, due) for _, due in missed), now).items()}
    return (
        # Scheduled backups that never started (core/schedule/) count against completion.
        completion_from_counts(reader.backup_counts_by_age(now, days), missed_by_age, trend_days=trend_days),
        integrity_from_counts(reader.verification_counts_by_age(now, days), snapshots_total=total,
                              snapshots_verified_recently=covered, trend_days=trend_days),
        recovery_time(restores, now, rto_s=rto_targets(config), default_rto_s=default_rto(config),
                      trend_days=trend_days),
    )


def build_dashboard(reader: CatalogQueries, config: BackstopConfig, now: float, *, trend_days: int = 14,
                    pending_settings: Sequence[str] = ()) -> Dashboard:
    """KPIs, alerts and running jobs as of ``now`` (``pending_settings``: guarded sections awaiting approval)."""
    days = max(trend_days, 7)
    missed = reader.missed_runs_since(now - days * DAY)
    kpis = build_kpis(reader, config, now, trend_days=trend_days, missed=missed)
    # Snapshots of the last 30 days left unverified (older ones weigh on the coverage KPI);
    # the newest hour is skipped: its verification may be running.
    cutoff = iso_at(now - 3600)
    since = iso_at(now - 30 * DAY)
    latest_backup = reader.latest_snapshot_per_db()
    # Targets with failed calls in the last hour, or that missed the newest backup (core/storage/metered.py).
    states = reader.target_health_states()
    health = summarise(config, reader.target_health_windows(now - DAY), states, now)
    newest = max((iso_to_epoch(iso) for iso in latest_backup.values()), default=None)
    alerts = build_alerts(
        now=now, recent_jobs=reader.failed_jobs_since(now - DAY),
        never_verified=reader.never_verified(since, cutoff), damaged=reader.damaged_copies(),
        target_checks=reader.latest_target_checks(), configured_targets=[t.name for t in config.targets],
        latest_backup=latest_backup, configured_dbs=[d.name for d in config.databases],
        pending_settings=pending_settings, missed_runs=[(db, due) for db, due in missed if due >= now - DAY],
        extra=[*target_health_alerts(health, now, newest, known=list(states)),
               *missing_copy_alerts(reader.snapshots_lacking([t.name for t in config.targets]))],
    )
    return Dashboard(kpis, tuple(alerts), tuple(reader.running_jobs()), now)


def build_trend_series(reader: CatalogQueries, config: BackstopConfig, now: float, *, days: int = 30) -> Trends:
    """Every series of the trends screen over the last ``days`` days."""
    since_iso = iso_at(now - days * DAY)
    return build_trends(
        restores=reader.restores(since=now - 365 * DAY, limit=500),
        snapshot_rows=reader.snapshot_series(since_iso),
        jobs=reader.failed_jobs_since(now - days * DAY),  # only failures are charted
        rto_s=rto_targets(config), default_rto_s=default_rto(config), now=now, days=days,
    )
