"""A restore drill: choose a snapshot and the target to prove, restore into scratch space, check, measure, clean up.

One drill, start to verdict (``run_drill``):

1. choose: the snapshot (``latest``, ``random`` within the retention window,
   or an id/prefix) and the target to read from: ``--target``, else the
   target holding it that was drilled longest ago (never drilled first, then
   config order), so every copy is proven within a period;
2. restore: a logical restore into the scratch database
   ``<db>_drill_<UTC %Y%m%d%H%M%S>`` on the source server, reading from that
   target only (recorded as a restore of kind 'drill', which the KPIs read);
3. integrity: per-table row counts and digests against the manifest, amcheck
   on the indexes (core/drills/integrity.py), and the measured recovery time
   against the database's ``rto_minutes``;
4. cleanup: the scratch database is dropped, also when a step failed.

The report is recorded whatever happened (:func:`_keep`) and returned; a
step that raised makes it a failed drill carrying the error's message.
A physical drill restores a physical snapshot into a private scratch
cluster instead (core/ops/scratch.py, as tables-at-a-moment does), checks
the data directory with pg_verifybackup before it starts, recovers it to a
random point between the snapshot's end and the newest archived WAL,
records the point reached, runs amcheck there, then stops and removes it.
Its base backup is read from the drilled target only; the WAL comes through
restore_command (`backstop wal-fetch`), which reads from any target holding
it: the report's ``sources`` check says so.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from core import __version__
from core.config import DatabaseConfig, RetentionConfig
from core.context import EngineContext
from core.drills import integrity
from core.drills.model import FAILED, PASSED, DrillCheck, DrillReport, DrillStep
from core.errors import BackstopError, DrillFailed, NotFound, PostgresError, RestoreRefused, UsageError
from core.jobs import Job, run_job
from core.records import SnapshotRecord

if TYPE_CHECKING:
    from core.postgres.recovery import RecoveryTarget
    from core.repository.repo import Repository

log = logging.getLogger("backstop.drills")

KINDS = ("logical", "physical")
SNAPSHOT_CHOICES = ("latest", "random")


@dataclass(frozen=True)
class DrillRequest:
    """What to drill: ``target`` None rotates, ``snapshot`` is latest, random or an id/prefix, ``kind`` None is
    logical; ``after_restore`` (tests) is awaited with the scratch DSN between the restore and the checks."""

    db: str
    target: str | None = None
    snapshot: str = "latest"
    kind: str | None = None
    scheduled_by: str = "operator"
    after_restore: Callable[[str], Awaitable[None]] | None = None
    # The config file a physical drill's restore_command (`backstop wal-fetch`) reads; the Engine fills it in.
    config_path: Path | None = None


def retention_span(rules: RetentionConfig | None) -> timedelta | None:
    """How far back the retention rules keep snapshots; None when unbounded (no rules, an unlimited bucket,
    or only ``keep_last``, which is a count, not a span)."""
    if rules is None:
        return None
    buckets = [(rules.keep_hourly, timedelta(hours=1)), (rules.keep_daily, timedelta(days=1)),
               (rules.keep_weekly, timedelta(weeks=1)), (rules.keep_monthly, timedelta(days=31)),
               (rules.keep_yearly, timedelta(days=366))]
    if any(n == -1 for n, _ in buckets):
        return None
    spans = [n * unit for n, unit in buckets if n > 0]
    if rules.min_age_days:
        spans.append(timedelta(days=rules.min_age_days))
    return max(spans) if spans else None


def rotate(holding: Sequence[str], last_drilled: Mapping[str, float]) -> str:
    """The target to prove next: never drilled first, then the one drilled longest ago; ties in ``holding`` order.

    As the planner's drill ranking (core/planner.py), but over the drill reports and in config order.
    """
    order = {name: i for i, name in enumerate(holding)}
    return min(holding, key=lambda n: (last_drilled.get(n, -math.inf), order[n]))


def pick_snapshot(snaps: Sequence[SnapshotRecord], ref: str, span: timedelta | None, now: datetime,
                  rng: random.Random | None = None) -> SnapshotRecord:
    """``latest``: the newest of ``snaps`` (oldest first); ``random``: any finished within ``span`` before
    ``now`` (any at all without a span; the newest when none is that recent)."""
    if ref == "latest":
        return snaps[-1]
    pool = list(snaps)
    if span is not None:
        pool = [s for s in snaps if datetime.fromisoformat(s.finished_at) >= now - span] or pool[-1:]
    return (rng or random).choice(pool)  # noqa: S311  (a fair pick, not a secret)


def drill_id(db: str, started_at: float) -> str:
    """``<db>-<UTC start, %Y%m%dT%H%M%SZ>``."""
    return f"{db}-{datetime.fromtimestamp(started_at, UTC).strftime('%Y%m%dT%H%M%SZ')}"


async def run_drill(ctx: EngineContext, request: DrillRequest) -> DrillReport:
    """Run one drill as a job of kind 'drill'; the report is recorded and returned, passed or failed."""
    dbc = ctx.config.database(request.db)  # a ConfigError naming the configured databases
    kind = request.kind or "logical"
    if kind not in KINDS:
        raise UsageError(f"drill type {kind!r}: expected logical or physical")
    if kind == "physical" and request.config_path is None:
        raise UsageError("a physical drill needs the config file's path (its restore_command reads it): run it "
                         "with --config PATH")
    if request.target is not None:
        ctx.config.target(request.target)  # a ConfigError naming the configured targets
    started = await _unique_start(ctx, request.db)
    report = DrillReport(
        id=drill_id(request.db, started), db=request.db, kind=kind, snapshot_id="", snapshot_finished_at="",
        target=request.target or "", sources=[], point_reached="", started_at=started, finished_at=started,
        recovery_s=0.0, rto_s=dbc.rto_minutes * 60, scheduled_by=request.scheduled_by, verdict=FAILED,
        host=socket.gethostname(), backstop_version=__version__)
    try:
        async with run_job(ctx.bus, "drill", request.db, f"{kind} drill of {request.db}") as job:
            try:
                await _Drill(ctx, request, dbc, report, job).run()
            except BackstopError as exc:
                report.error = str(exc)
            except (asyncio.CancelledError, KeyboardInterrupt):
                report.error = "interrupted (SIGTERM or Ctrl-C) before the drill finished"
                _finish(ctx, report)
                raise
            except Exception as exc:
                # A bug, not a finding: recorded as a failed drill all the same, then raised to be seen.
                report.error = f"unexpected {type(exc).__name__}: {exc}"
                _finish(ctx, report)
                raise
            _finish(ctx, report)
            job.result = {"drill": report.id, "verdict": report.verdict, "target": report.target,
                          "snapshot": report.snapshot_id, "recovery_s": round(report.recovery_s, 3)}
            if not report.passed:
                # The job shows as failed on the jobs screen; the caller gets the report, not this error.
                raise DrillFailed(_failure_line(report))
    except DrillFailed:
        pass
    await _seal(ctx, report)
    return report


async def _unique_start(ctx: EngineContext, db: str) -> float:
    """Now, or the next second when a drill of ``db`` already has this second's id (ids are per second)."""
    started = time.time()
    while ctx.catalog.drill(drill_id(db, started)) is not None:
        await asyncio.sleep(1.0 - started % 1.0 + 0.001)
        started = time.time()
    return started


def _finish(ctx: EngineContext, report: DrillReport) -> None:
    report.finished_at = time.time()
    ok = report.error is None and bool(report.checks) and all(c.ok for c in report.checks)
    report.verdict = PASSED if ok else FAILED
    _keep(ctx, report)


def _keep(ctx: EngineContext, report: DrillReport) -> None:
    """Record the report in the catalog, whatever happened (sealed afterwards by :func:`_seal` when it can be)."""
    ctx.catalog.add_drill(report)


async def _seal(ctx: EngineContext, report: DrillReport) -> None:
    """Seal the report into the repository with its MAC; if that fails it stays in the catalog, unsealed, and says so.

    Outside the drill's job and steps: sealing is bookkeeping, not recovery time.
    """
    from core.drills.seal import publish

    try:
        await publish(ctx, report)
    except BackstopError as exc:
        log.warning("drill report %s is in the catalog but not sealed into the repository: %s; `backstop drill "
                    "verify %s` says so until it is", report.id, exc, report.id)


def _failure_line(report: DrillReport) -> str:
    """Why a drill failed, in one line."""
    if report.error:
        return f"drill {report.id} failed: {report.error}"
    bad = [c for c in report.checks if not c.ok]
    first = f"{bad[0].name}: {bad[0].detail}" if bad else "no check ran"
    return f"drill {report.id} failed {len(bad)} check(s), first {first}; see `backstop drill report {report.id}`"


class _Drill:
    """One drill's steps (logical, or physical in a scratch cluster), each timed into the report."""

    def __init__(self, ctx: EngineContext, request: DrillRequest, dbc: DatabaseConfig, report: DrillReport,
                 job: Job) -> None:
        self.ctx, self.request, self.dbc, self.report, self.job = ctx, request, dbc, report, job

    async def run(self) -> None:
        report = self.report
        t = time.monotonic()
        self.job.phase("choose")
        snap = await self._choose_snapshot()
        report.snapshot_id, report.snapshot_finished_at = snap.id, snap.finished_at
        report.point_reached = f"end of snapshot {snap.short_id} ({snap.finished_at})"
        report.target = self._choose_target(snap)
        self._step("choose", t)
        if report.kind == "physical":
            await self._physical(snap)
            return
        scratch = report.scratch = (f"{report.db}_drill_"
                                    f"{datetime.fromtimestamp(report.started_at, UTC).strftime('%Y%m%d%H%M%S')}")
        try:
            await self._restore(snap, scratch)
        finally:
            t = time.monotonic()
            self.job.phase("cleanup")
            report.scratch_removed = await self._drop(scratch)
            self._step("cleanup", t)

    def _step(self, name: str, since: float) -> float:
        took = time.monotonic() - since
        self.report.steps.append(DrillStep(name, round(took, 3)))
        return took

    async def _choose_snapshot(self) -> SnapshotRecord:
        kind, ref, db = self.report.kind, self.request.snapshot, self.report.db
        if ref not in SNAPSHOT_CHOICES:
            snap = await self.ctx.find_snapshot(ref, db, kind=kind)
            if snap.status != "restorable":
                raise RestoreRefused(f"snapshot {snap.short_id} is {snap.status}, not restorable yet; "
                                     "drill another one (--snapshot latest)")
            return snap
        snaps = [s for s in self.ctx.catalog.snapshots(db, kind=kind) if s.status == "restorable"]
        if not snaps:
            more = " --type physical" if kind == "physical" else ""
            raise NotFound(f"no restorable {kind} snapshot of {db} to drill; take one with "
                           f"`backstop backup --db {db}{more}`")
        return pick_snapshot(snaps, ref, retention_span(self.dbc.retention), datetime.now(UTC))

    def _choose_target(self, snap: SnapshotRecord) -> str:
        holding = [t.name for t in self.ctx.config.targets if t.name in snap.targets]
        forced = self.request.target
        if forced is not None:
            if forced not in snap.targets:
                where = ", ".join(snap.targets) or "no target"
                raise RestoreRefused(f"target {forced} holds no copy of snapshot {snap.short_id} (it is on {where}); "
                                     "choose one of those with --target, or run `backstop sync`")
            return forced
        if not holding:
            raise RestoreRefused(f"no configured target holds snapshot {snap.short_id}; run `backstop sync`")
        # Every drill counts, failed ones too: a broken target must not starve the others of proof (its failure
        # is on the dashboard and in its report).
        last: dict[str, float] = {}
        for d in self.ctx.catalog.drills(self.report.db, limit=10_000):
            last[d.target] = max(last.get(d.target, 0.0), d.started_at)
        return rotate(holding, last)

    async def _restore(self, snap: SnapshotRecord, scratch: str) -> None:
        from core.ops import restore
        from core.postgres.logical import with_dbname

        report = self.report
        t = time.monotonic()
        self.job.phase("restore")
        res = await restore.restore(self.ctx, report.db, scratch, snap.id, target=report.target, only_target=True,
                                    kind="drill")
        report.recovery_s = self._step("restore", t)
        report.sources = [s.to_json() for s in res.sources]
        dsn = with_dbname(self.dbc.dsn, scratch)
        if self.request.after_restore is not None:
            await self.request.after_restore(dsn)
        t = time.monotonic()
        self.job.phase("integrity")
        repo = await self.ctx.open_repository(require_all=False, target=report.target)
        manifest = await repo.read_manifest(snap.id)
        report.checks.extend(await integrity.check_tables(dsn, manifest))
        indexes = await integrity.check_indexes(dsn)
        if indexes is not None:
            report.checks.append(indexes)
        report.checks.append(rto_check(report.recovery_s, report.rto_s))
        self._step("integrity", t)

    async def _physical(self, snap: SnapshotRecord) -> None:
        """Recover the snapshot in a scratch cluster to a random archived point, check it, remove the cluster."""
        from psycopg.conninfo import conninfo_to_dict

        from core.ops.physical_restore import WAIT_TIMEOUT_S, PhysicalRestoreRequest, _start_and_wait, restore_physical
        from core.ops.scratch import ScratchSpace, login_role
        from core.ops.table_at_moment import _without_keep_advice

        report, job = self.report, self.job
        assert self.request.config_path is not None
        space = ScratchSpace(self.ctx)
        try:
            t = time.monotonic()
            job.phase("recover")
            repo = await self.ctx.open_repository(require_all=False, target=report.target)
            manifest = await repo.read_manifest(snap.id)
            target = await _random_target(repo, snap)
            pgdata = space.create(sum(f.size for f in manifest.files), snap.wal_segment_size or 16 << 20,
                                  f"a physical drill of {report.db}")
            report.scratch = str(space.work)
            res = await restore_physical(self.ctx, PhysicalRestoreRequest(
                db=report.db, pgdata=pgdata, config_path=self.request.config_path, snapshot=snap.id, target=target,
                kind="drill", only_target=report.target, verify_checksums=True))
            report.sources = [s.to_json() for s in res.sources]
            # pg_verifybackup ran inside the restore, on the files as written and before the recovery settings
            # and the scratch cluster's own pg_hba.conf changed them; a mismatch would have raised there.
            verified = integrity.verified_check(res.verified)
            verify_s = res.verify_s
            cluster = space.cluster_for(pgdata)
            point = await _start_and_wait(cluster, target, WAIT_TIMEOUT_S)
            report.recovery_s = round(time.monotonic() - t - verify_s, 3)
            report.steps.append(DrillStep("recover", report.recovery_s))
            report.point_reached = (f"LSN {point.lsn or '?'}, last commit {point.commit_time or 'none replayed'} "
                                    f"(asked for {target.describe()}, {point.state})")
            t = time.monotonic()
            job.phase("integrity")
            dbname = str(conninfo_to_dict(self.dbc.dsn).get("dbname") or report.db)
            cluster.role = await login_role(cluster, self.dbc.dsn, dbname)
            dsn = cluster.dsn(dbname)
            if self.request.after_restore is not None:
                await self.request.after_restore(dsn)
            report.checks.append(DrillCheck(
                "sources", True, f"base backup read from {report.target} only; WAL through restore_command "
                                 "(backstop wal-fetch), which reads from any target holding it"))
            report.checks.append(verified)
            indexes = await integrity.check_indexes(dsn)
            if indexes is not None:
                report.checks.append(indexes)
            report.checks.append(rto_check(report.recovery_s, report.rto_s))
            report.steps.append(DrillStep("integrity", round(time.monotonic() - t + verify_s, 3)))
        except PostgresError as exc:
            # The physical restore's advice about a kept directory does not apply: the scratch one is removed.
            raise PostgresError(f"{_without_keep_advice(str(exc))}; the scratch cluster was removed") from None
        finally:
            t = time.monotonic()
            job.phase("cleanup")
            report.scratch_removed = await asyncio.to_thread(space.remove, job.warn)
            self._step("cleanup", t)

    async def _drop(self, scratch: str) -> bool:
        """Drop the scratch database; True when it is gone (a failure to drop is a warning, not the verdict)."""
        from core.postgres.logical import database_exists, drop_database

        try:
            await drop_database(self.dbc.dsn, scratch)
            return not await database_exists(self.dbc.dsn, scratch)
        except BackstopError as exc:
            self.job.warn(f"could not drop the drill database {scratch}: {exc}; drop it by hand")
            return False


async def _random_target(repo: Repository, snap: SnapshotRecord) -> RecoveryTarget:
    """A random LSN between the snapshot's stop and the start of the newest segment archived after it without a
    gap (on its timeline), promoted there; the snapshot's own end when nothing was archived after it."""
    from core.postgres.recovery import make_target
    from core.postgres.wal import format_lsn, parse_lsn, segment_name
    from core.repository.wal import list_wal

    assert snap.stop_lsn is not None and snap.timeline is not None
    seg = snap.wal_segment_size or 16 << 20
    stop, tli = parse_lsn(snap.stop_lsn), snap.timeline
    names = (await list_wal(repo)).get(tli, set())
    last = stop // seg
    while segment_name(tli, (last + 1) * seg, seg) in names:
        last += 1
    # The newest segment's own start at the latest: recovery must find a record at or after the target.
    high = last * seg
    if high <= stop:
        return make_target(immediate=True, action="promote", timeline="current")
    return make_target(lsn=format_lsn(random.randint(stop, high)), action="promote", timeline="current")


def rto_check(recovery_s: float, rto_s: float) -> DrillCheck:
    """The measured recovery time against the RTO: ``recovered in 12.3 s, RTO 60 min``."""
    return DrillCheck("rto", recovery_s <= rto_s, f"recovered in {recovery_s:.1f} s, RTO {rto_s / 60:g} min")
