"""The engine's read-only query facade: what front ends may read from the catalog, and its change feed.

The console never holds a catalog object: it asks ``engine.queries`` (this
class), which delegates to the catalog's read side
(:class:`core.catalog.base.CatalogQueries`, with connections of its own that
are safe from worker threads). Every method blocks on I/O: call it from a
worker thread or through ``asyncio.to_thread``, never on an event loop.
:meth:`Queries.watch` is the one asynchronous method: it does its polling
in a thread itself.

Records come from :mod:`core.records`.
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING

from core.records import (
    AuditTable,
    DatabaseSummary,
    DurationHistogram,
    JobFailure,
    JobRecord,
    RestoreRecord,
    ScheduleRunStats,
    SnapshotRow,
    TargetCheck,
    VerificationRecord,
)

if TYPE_CHECKING:
    from core.catalog.base import CatalogQueries, ChangeFeed
    from core.drills.model import DrillReport
    from core.storage.health import HealthWindow, TargetHealthState


class Queries:
    """Read-only catalog queries for the console and the insights (method by method as
    :class:`core.catalog.base.CatalogQueries`)."""

    def __init__(self, source: CatalogQueries) -> None:
        self._q = source

    def close(self) -> None:
        """Release the connections the queries opened (in every thread)."""
        self._q.close()

    # -- the change feed -----------------------------------------------------------------

    def changes(self) -> ChangeFeed:
        """A new change feed: ``poll()`` is True when anyone committed since the previous poll (blocking)."""
        return self._q.changes()

    async def watch(self, interval: float) -> AsyncIterator[None]:
        """Yield whenever the catalog changed (any process), looking at least every ``interval`` seconds.

        On PostgreSQL the feed's wait is woken by NOTIFY, so a change shows at once. The waits run in a
        thread; one that fails (the catalog is being replaced, or is locked, or the server restarts) is
        tried again after ``interval``.
        """
        feed = self.changes()
        try:
            try:
                await asyncio.to_thread(feed.poll)  # watching from now on: a change from here on is seen
            except Exception:  # noqa: BLE001 - the waits below look again
                pass
            while True:
                try:
                    changed = await asyncio.to_thread(feed.wait, interval)
                except Exception:  # noqa: BLE001 - a catalog being replaced or locked: try again later
                    await asyncio.sleep(interval)
                    continue
                if changed:
                    yield
        finally:
            feed.close()

    # -- databases and snapshots -----------------------------------------------------------

    def databases(self) -> list[DatabaseSummary]:
        return self._q.databases()

    def snapshot_rowids(self, db: str | None = None, words: Sequence[str] = ()) -> array:
        return self._q.snapshot_rowids(db, words)

    def snapshot_total(self, db: str | None = None, words: Sequence[str] = ()) -> int:
        return self._q.snapshot_total(db, words)

    def snapshot_page(self, start: int, stop: int, total: int, db: str | None = None,
                      words: Sequence[str] = ()) -> list[int]:
        return self._q.snapshot_page(start, stop, total, db, words)

    def snapshot_rows(self, rowids: Sequence[int]) -> list[SnapshotRow]:
        return self._q.snapshot_rows(rowids)

    def latest_snapshots(self, db: str, limit: int = 200) -> list[SnapshotRow]:
        return self._q.latest_snapshots(db, limit)

    def snapshot_by_id(self, sid: str) -> SnapshotRow | None:
        return self._q.snapshot_by_id(sid)

    def latest_checks(self, snapshot_ids: Iterable[str]) -> dict[str, tuple[TargetCheck, ...]]:
        return self._q.latest_checks(snapshot_ids)

    def snapshot_count(self) -> int:
        return self._q.snapshot_count()

    def snapshots_lacking(self, targets: Sequence[str]) -> dict[str, int]:
        return self._q.snapshots_lacking(targets)

    def snapshots_verified_since(self, since: float) -> int:
        return self._q.snapshots_verified_since(since)

    def never_verified(self, since_iso: str, older_than_iso: str,
                       limit: int = 5) -> tuple[int, list[tuple[str, str, str]]]:
        return self._q.never_verified(since_iso, older_than_iso, limit)

    def snapshot_series(self, since_iso: str) -> list[tuple[str, str, str, str, int, int]]:
        return self._q.snapshot_series(since_iso)

    def latest_snapshot_per_db(self) -> dict[str, str]:
        return self._q.latest_snapshot_per_db()

    # -- jobs ----------------------------------------------------------------------------------

    def jobs(self, limit: int = 200, words: Sequence[str] = ()) -> list[JobRecord]:
        return self._q.jobs(limit, words)

    def running_jobs(self) -> list[JobRecord]:
        return self._q.running_jobs()

    def job(self, job_id: str) -> JobRecord | None:
        return self._q.job(job_id)

    def job_events(self, job_id: str, after_id: int = 0,
                   limit: int = 1000) -> list[tuple[int, float, str, dict[str, object]]]:
        return self._q.job_events(job_id, after_id, limit)

    def finished_jobs_since(self, since: float, kind: str | None = None) -> list[JobRecord]:
        return self._q.finished_jobs_since(since, kind)

    def failed_jobs_since(self, since: float) -> list[JobRecord]:
        return self._q.failed_jobs_since(since)

    def backup_counts_by_age(self, now: float, days: int) -> dict[int, tuple[int, int]]:
        return self._q.backup_counts_by_age(now, days)

    def missed_runs_since(self, since: float, action: str = "backup") -> list[tuple[str, float]]:
        return self._q.missed_runs_since(since, action)

    def job_failures_since(self, since: float) -> list[JobFailure]:
        return self._q.job_failures_since(since)

    # -- verifications, restores and drills -----------------------------------------------------

    def verification_rowids(self, words: Sequence[str] = ()) -> array:
        return self._q.verification_rowids(words)

    def verification_rows(self, ids: Sequence[int]) -> list[VerificationRecord]:
        return self._q.verification_rows(ids)

    def verification_counts_by_age(self, now: float, days: int) -> dict[int, tuple[int, int]]:
        return self._q.verification_counts_by_age(now, days)

    def verifications_since(self, since: float) -> list[VerificationRecord]:
        return self._q.verifications_since(since)

    def latest_target_checks(self) -> dict[str, VerificationRecord]:
        return self._q.latest_target_checks()

    def damaged_copies(self, limit: int = 20) -> list[VerificationRecord]:
        return self._q.damaged_copies(limit)

    def target_health_windows(self, since: float) -> list[HealthWindow]:
        return self._q.target_health_windows(since)

    def target_health_states(self) -> dict[str, TargetHealthState]:
        return self._q.target_health_states()

    def restores(self, since: float = 0.0, db: str | None = None, limit: int = 1000,
                 kind: str | None = None) -> list[RestoreRecord]:
        return self._q.restores(since, db, limit, kind)

    def drills(self, limit: int = 5000) -> list[RestoreRecord]:
        """Recorded drills (test restores), oldest first."""
        return self._q.restores(limit=limit, kind="drill")

    # -- aggregates for the metrics endpoint -----------------------------------------------------------

    def job_duration_histograms(self, bounds: Sequence[float]) -> list[DurationHistogram]:
        return self._q.job_duration_histograms(bounds)

    def job_failure_counts(self) -> dict[tuple[str, str], int]:
        return self._q.job_failure_counts()

    def schedule_run_stats(self) -> list[ScheduleRunStats]:
        return self._q.schedule_run_stats()

    def newest_restorable(self) -> dict[str, tuple[str, str | None]]:
        return self._q.newest_restorable()

    def latest_drills(self) -> list[DrillReport]:
        return self._q.latest_drills()

    def drill_counts(self) -> dict[tuple[str, str], int]:
        return self._q.drill_counts()

    def drill_reports(self, db: str | None = None, since: float = 0.0, limit: int = 1000) -> list[DrillReport]:
        """Drill reports (core/drills), newest first."""
        return self._q.drill_reports(db, since, limit)

    # -- the audit log, for display ---------------------------------------------------------------

    def audit_table(self) -> AuditTable | None:
        return self._q.audit_table()

    def audit_rowids(self, words: Sequence[str] = ()) -> array:
        return self._q.audit_rowids(words)

    def audit_rows(self, rowids: Sequence[int]) -> list[tuple[object, ...]]:
        return self._q.audit_rows(rowids)
