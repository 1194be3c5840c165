"""The Prometheus collector: every figure an operator graphs or alerts on, read from the catalog on each scrape.

Nothing polls in the background: each scrape opens a read-only view of the
catalog, asks it for aggregates (grouped by the database, so a scrape of a
catalog with 100,000 jobs stays well under 100 ms), and closes it again.
The KPIs are the console's own (core/insights/overview.py ``build_kpis``).

Units: seconds, bytes, and ratios from 0 to 1 (a KPI the console shows as
99.5 % is 0.995 here). Labels: ``db``, ``target``, ``schedule``, ``kind``,
``class``. Counters (``_total``) count every row the catalog holds, so they
only grow while rows are kept; Grafana takes ``increase()`` over them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from core.catalog.base import Catalog, CatalogQueries
from core.config import BackstopConfig
from core.insights.kpis import recovery_time
from core.insights.overview import DAY, build_kpis, default_rto, rto_targets

log = logging.getLogger("backstop.metrics")

# Job durations are counted into these buckets (seconds): from a quick check to a day-long restore.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
                    86400.0)
KPI_STATES = ("ok", "warn", "bad", "none")

# (catalog, config) of the engine in force: the daemon swaps both on a reload.
Source = Callable[[], tuple[Catalog, BackstopConfig]]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def spool_newest_push(config_path: Path | None) -> Callable[[], float | None]:
    """When the WAL spool of this config (on this host) last acknowledged a pushed segment; None without one."""
    from core.wal.spool import SpoolError, spool_of

    def newest() -> float | None:
        try:
            spool = spool_of(config_path) if config_path is not None else None
        except SpoolError:
            return None
        if spool is None or not os.path.isdir(spool.root):
            return None
        pushes = spool.latencies()
        return pushes[-1][0] if pushes else None

    return newest


class BackstopCollector(Collector):
    """Yields Backstop's metric families from the catalog, fresh on every ``collect()``."""

    def __init__(self, source: Source, *, clock: Callable[[], float] = time.time,
                 wal_pushed_at: Callable[[], float | None] | None = None) -> None:
        self._source = source
        self._clock = clock
        self._wal_pushed_at = wal_pushed_at

    def describe(self) -> list[Metric]:
        # No scrape at registration time (the registry calls collect() when describe() is missing).
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        catalog, config = self._source()
        ok = GaugeMetricFamily("backstop_catalog_up", "1 when the catalog could be read for this scrape, else 0 "
                                                      "(the reason is in the daemon's log)")
        reader = catalog.open_queries()
        try:
            families = list(self._families(reader, config, self._clock()))
        except Exception as exc:  # noqa: BLE001 - a scrape reports a catalog it cannot read; it never crashes
            log.warning("metrics: cannot read the catalog: %s", exc)
            families = []
        finally:
            reader.close()
        ok.add_metric([], 1.0 if families else 0.0)
        yield from families
        yield ok
        took = GaugeMetricFamily("backstop_scrape_duration_seconds", "How long reading the catalog for this scrape "
                                                                    "took, in seconds")
        took.add_metric([], time.perf_counter() - started)
        yield took

    def _families(self, q: CatalogQueries, config: BackstopConfig, now: float) -> Iterator[Metric]:
        yield from self._kpis(q, config, now)
        yield from self._schedules(q)
        yield from self._recovery_points(q, now)
        yield from self._targets(q)
        yield from self._jobs(q)
        yield from self._drills(q)

    # -- the KPIs -----------------------------------------------------------------------------------------------

    def _kpis(self, q: CatalogQueries, config: BackstopConfig, now: float) -> Iterator[Metric]:
        restores = q.restores(since=now - 90 * DAY)  # as build_kpis reads them: read once, used twice
        completion, integrity, recovery = build_kpis(q, config, now, restores=restores)
        for name, kpi, help_text in (
                ("backstop_kpi_backup_completion_ratio", completion,
                 "Backup Completion Rate over the last 7 days as a ratio 0..1 (completed backups / backups started "
                 "+ scheduled runs that never started); absent without backups"),
                ("backstop_kpi_verification_success_ratio", integrity,
                 "Data Integrity Verification Success over the last 7 days as a ratio 0..1 (passed / run, each "
                 "target checked counting once); absent without verifications")):
            g = GaugeMetricFamily(name, help_text)
            if kpi.value is not None:
                g.add_metric([], kpi.value / 100.0)
            yield g
        g = GaugeMetricFamily("backstop_kpi_recovery_time_seconds",
                              "Average Recovery Time: mean seconds of the successful restores and drills of the last "
                              "90 days, fleet-wide; absent without any")
        if recovery.value is not None:
            g.add_metric([], recovery.value)
        yield g
        status = GaugeMetricFamily("backstop_kpi_status", "Each KPI's status as the console colours it: 1 for the "
                                                          "current status (ok, warn, bad, none), 0 for the others",
                                   labels=["kpi", "status"])
        for kpi in (completion, integrity, recovery):
            for state in KPI_STATES:
                status.add_metric([kpi.key, state], 1.0 if kpi.status == state else 0.0)
        yield status
        # Per database: the same KPI function over each database's restores, against its own RTO.
        rto = rto_targets(config)
        per_db = GaugeMetricFamily("backstop_recovery_time_seconds",
                                   "Average Recovery Time of one database: mean seconds of its successful restores "
                                   "and drills of the last 90 days", labels=["db"])
        for db in sorted({r.db for r in restores}):
            kpi = recovery_time([r for r in restores if r.db == db], now, rto_s=rto, default_rto_s=default_rto(config))
            if kpi.value is not None:
                per_db.add_metric([db], kpi.value)
        yield per_db
        target = GaugeMetricFamily("backstop_rto_seconds", "Each configured database's recovery time objective "
                                                           "(rto_minutes), in seconds", labels=["db"])
        for db, seconds in sorted(rto.items()):
            target.add_metric([db], seconds)
        yield target

    # -- schedules, recovery points, targets ---------------------------------------------------------------------

    def _schedules(self, q: CatalogQueries) -> Iterator[Metric]:
        stats = q.schedule_run_stats()
        last = GaugeMetricFamily("backstop_schedule_last_success_timestamp_seconds",
                                 "When each schedule's newest successful run finished (Unix time)",
                                 labels=["schedule", "action"])
        runs = CounterMetricFamily("backstop_schedule_runs", "Scheduled runs recorded in the catalog, by state "
                                                             "(succeeded, failed, missed, abandoned, running, waiting)",
                                   labels=["schedule", "action", "state"])
        for s in stats:
            runs.add_metric([s.name, s.action, s.state], s.runs)
            if s.state == "succeeded" and s.last_finished_at is not None:
                last.add_metric([s.name, s.action], s.last_finished_at)
        yield last
        yield runs

    def _recovery_points(self, q: CatalogQueries, now: float) -> Iterator[Metric]:
        g = GaugeMetricFamily("backstop_recovery_point_age_seconds",
                              "How old each database's newest recoverable moment is, in seconds: its newest "
                              "restorable snapshot (source=snapshot), or for a database with physical snapshots the "
                              "newest WAL segment this host's spool saw archived when that is newer (source=wal)",
                              labels=["db", "source"])
        wal_at = self._wal_pushed_at() if self._wal_pushed_at is not None else None
        for db, (newest, physical) in sorted(q.newest_restorable().items()):
            at, source = _epoch(newest), "snapshot"
            if physical is not None and wal_at is not None and wal_at > at:
                at, source = wal_at, "wal"
            g.add_metric([db, source], max(0.0, now - at))
        yield g

    def _targets(self, q: CatalogQueries) -> Iterator[Metric]:
        stored = GaugeMetricFamily("backstop_repository_stored_bytes",
                                   "Bytes the repository occupies on each target, as last listed (`backstop check`)",
                                   labels=["target"])
        objects = GaugeMetricFamily("backstop_repository_stored_objects",
                                    "Objects the repository holds on each target, as last listed", labels=["target"])
        for name, st in sorted(q.target_health_states().items()):
            if st.stored_bytes is not None:
                stored.add_metric([name], st.stored_bytes)
            if st.stored_objects is not None:
                objects.add_metric([name], st.stored_objects)
        yield stored
        yield objects

    # -- jobs and drills --------------------------------------------------------------------------------------------

    def _jobs(self, q: CatalogQueries) -> Iterator[Metric]:
        h = HistogramMetricFamily("backstop_job_duration_seconds",
                                  "How long finished jobs took, by kind (backup, restore, verify, ...), in seconds",
                                  labels=["kind"])
        for d in q.job_duration_histograms(DURATION_BUCKETS):
            buckets = [(_le(b), float(n)) for b, n in zip(d.bounds, d.cumulative, strict=True)]
            h.add_metric([d.kind], buckets + [("+Inf", float(d.count))], d.sum_s)
        yield h
        failures = CounterMetricFamily("backstop_job_failures",
                                       "Failed jobs by kind and class: the error's class (core/errors.py, e.g. "
                                       "TargetUnreachable), interrupted for abandoned jobs, unknown when not recorded",
                                       labels=["kind", "class"])
        for (kind, cls), n in sorted(q.job_failure_counts().items()):
            failures.add_metric([kind, cls], n)
        yield failures

    def _drills(self, q: CatalogQueries) -> Iterator[Metric]:
        passed = GaugeMetricFamily("backstop_drill_last_passed", "1 when each database's newest restore drill "
                                                                 "passed, 0 when it failed",
                                   labels=["db", "kind", "target"])
        recovery = GaugeMetricFamily("backstop_drill_last_recovery_seconds",
                                     "The measured recovery time of each database's newest drill, in seconds",
                                     labels=["db"])
        rto = GaugeMetricFamily("backstop_drill_last_rto_seconds", "The RTO each database's newest drill was held "
                                                                   "to, in seconds", labels=["db"])
        when = GaugeMetricFamily("backstop_drill_last_timestamp_seconds",
                                 "When each database's newest drill started (Unix time)", labels=["db"])
        for d in q.latest_drills():
            passed.add_metric([d.db, d.kind, d.target], 1.0 if d.passed else 0.0)
            recovery.add_metric([d.db], d.recovery_s)
            rto.add_metric([d.db], d.rto_s)
            when.add_metric([d.db], d.started_at)
        yield from (passed, recovery, rto, when)
        total = CounterMetricFamily("backstop_drills", "Restore drills recorded, by database and verdict",
                                    labels=["db", "verdict"])
        for (db, verdict), n in sorted(q.drill_counts().items()):
            total.add_metric([db, verdict], n)
        yield total


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``60.0``)."""
    return repr(float(bound))


def registry_of(collector: BackstopCollector) -> CollectorRegistry:
    """A registry holding only Backstop's collector (no process or platform metrics of the Python client)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(collector: BackstopCollector) -> bytes:
    """The exposition text of one scrape (what `backstop metrics` prints)."""
    return generate_latest(registry_of(collector))
