"""`backstop forget --db NAME`: apply a database's retention rules, then trim the WAL no retained snapshot needs.

Planning is core/retention (pure). Acting is one gated SNAPSHOT_FORGET action
(one code for the whole run, audited with what went), under forget's shared
lock: the planned snapshots are forgotten exactly as `backstop forget` does,
then the WAL older than the oldest retained physical snapshot's start segment
is deleted from every target, oldest first (an interrupted trim leaves the
archive contiguous). A run with nothing to remove needs no code.

The rules are ``ctx.config``'s: the approved ones once the settings are
applied (Engine.apply_settings). The plan covers the snapshots taken for
this database entry; the WAL trim counts every physical snapshot of the
archive's cluster, whichever entry took it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from core.config import RetentionConfig
from core.context import EngineContext
from core.errors import ConfigError
from core.jobs import run_job
from core.ops.forget import FORGET_LOCK, forget_allowed
from core.repository.gc import deleting_view, locked_snapshots
from core.repository.repo import Repository
from core.repository.wal import WalArchive, wal_object_name, wal_objects
from core.retention.policy import RetainedFacts, RetentionPlan, plan_retention
from core.retention.wal import PhysicalStart, WalTrimPlan, plan_wal_trim
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Guard, act
from core.storage.immutability import delete_where_allowed, when, why_kept


@dataclass
class RetentionReport:
    """What a retention run planned and did."""

    db: str
    plan: RetentionPlan
    wal: WalTrimPlan
    dry_run: bool
    forgotten: list[str] = field(default_factory=list)
    wal_deleted: int = 0
    # FORMAT.md 23: snapshots the rules would remove but whose manifest is locked: id -> retention end.
    locked: dict[str, float] = field(default_factory=dict)
    wal_locked_until: float | None = None  # trimming stopped at a WAL file locked until then

    def to_json(self) -> dict[str, object]:
        return {"db": self.db, "dry_run": self.dry_run, **self.plan.to_json(), "forgotten": list(self.forgotten),
                "wal": self.wal.to_json(), "wal_deleted": self.wal_deleted, "locked": dict(self.locked),
                "wal_locked_until": self.wal_locked_until}


def retention_rules(ctx: EngineContext, db: str) -> RetentionConfig:
    """The database's retention rules; ConfigError when its entry has none."""
    rules = ctx.config.database(db).retention
    if rules is None:
        raise ConfigError(f"database {db!r} has no retention rules: add `retention:` to its entry in the config "
                          "(e.g. retention: {keep_daily: 14, keep_weekly: 8, min_age_days: 30})")
    return rules


def plan_for(ctx: EngineContext, db: str, rules: RetentionConfig, now: datetime) -> RetentionPlan:
    """The retention plan of the snapshots taken for ``db`` (catalog reads only)."""
    own = [s for s in ctx.catalog.snapshots(db=db) if s.db == db]
    return plan_retention([RetainedFacts.of(s) for s in own], rules, now)


async def wal_trim_plan(ctx: EngineContext, repo: Repository, db: str, leaving: set[str]) -> WalTrimPlan:
    """The archived WAL no physical snapshot of ``db``'s cluster still needs once ``leaving`` are forgotten."""
    ident = await WalArchive(repo).identity()
    if ident is None:
        return WalTrimPlan(note="the repository archives no WAL")
    system = str(ident.system_identifier)
    if ctx.catalog.system_of(db) != system:
        return WalTrimPlan(note=f"the WAL archive is database system {system}'s, not {db}'s: left alone")
    on_targets: set[str] = set()
    for st in repo.storages:
        on_targets |= await repo.snapshot_names(st)
    records = ctx.catalog.snapshots()
    unknown = on_targets - {s.id for s in records}
    if unknown:
        return WalTrimPlan(note=f"the repository holds {len(unknown)} snapshot(s) the catalog does not list, whose "
                                "WAL needs are unknown: WAL kept; run `backstop catalog rebuild`")
    physical = [s for s in records
                if s.is_physical and s.id not in leaving and s.system_identifier in (None, system)]
    blind = [s for s in physical if not s.start_lsn or not s.timeline]
    if blind:
        return WalTrimPlan(note=f"physical snapshot {blind[0].short_id} has no start LSN in the catalog, so the WAL it "
                                "needs is unknown: WAL kept; run `backstop catalog rebuild`")
    retained = [PhysicalStart(s.id, s.start_lsn, s.timeline, s.wal_segment_size or ident.wal_segment_size)
                for s in physical if s.start_lsn and s.timeline]
    listings = await asyncio.gather(*(wal_objects(st) for st in repo.storages))
    return plan_wal_trim(retained, {n for lst in listings for n, _ in lst})


async def delete_wal(repo: Repository, names: list[str]) -> tuple[int, float | None]:
    """Delete WAL files from every target, in the order given (oldest first); returns how many, and a lock's end.

    Trimming stops at the first file some target holds under Object Lock
    retention (the rest is younger, and the archive stays contiguous);
    append-only targets keep every file (FORMAT.md 23).
    """
    view = deleting_view(repo)
    for i, n in enumerate(names):
        obj = wal_object_name(n)
        kept = [k for k in await asyncio.gather(*(why_kept(st, obj) for st in view.storages)) if k is not None]
        if kept:
            return i, max(k.until or 0.0 for k in kept)
        await delete_where_allowed(repo.storages, obj)
    return len(names), None


async def _hold_locked(repo: Repository, report: RetentionReport) -> None:
    """Take snapshots whose manifest is locked out of the plan: they are kept until their date, not refused."""
    locked = await locked_snapshots(repo, report.plan.remove)
    report.locked = {sid: k.until or 0.0 for sid, k in locked.items()}
    for d in report.plan.decisions:
        kept = locked.get(d.snapshot_id)
        if kept is not None:
            d.keep = True
            d.reasons.append(f"locked until {when(kept.until or 0.0)} on target '{kept.target}'")


async def apply_retention(ctx: EngineContext, db: str, who: Identity | None = None, dry_run: bool = False,
                          now: datetime | None = None, *, approved_by: str | None = None) -> RetentionReport:
    """Plan ``db``'s retention and, unless a dry run, forget the removed snapshots and trim the WAL (gated).

    ``approved_by`` replaces the code check with a standing approval, recorded as the reason in the audit
    log (the scheduler applying rules that were themselves approved, as `key rotate --if-due` does).
    """
    rules = retention_rules(ctx, db)
    at = now or datetime.now(UTC)
    plan = plan_for(ctx, db, rules, at)
    repo = await ctx.open_repository(require_all=True)
    report = RetentionReport(db, plan, WalTrimPlan(), dry_run)
    await _hold_locked(repo, report)
    wal = report.wal = await wal_trim_plan(ctx, repo, db, set(plan.remove))
    if dry_run or (not plan.remove and not wal.remove):
        return report
    who = who or default_identity()
    subject = f"retention of {db}: {len(plan.remove)} snapshot(s), {len(wal.remove)} WAL file(s)"
    async with Guard(ctx).session(who, require_all=True) as sec, \
            act(sec, who, Action.SNAPSHOT_FORGET, subject, lock=FORGET_LOCK, approved_by=approved_by) as acting:
        async with run_job(ctx.bus, "forget", db, subject) as job:
            job.phase("forget")
            # Planned again under the lock: what another process forgot or added meanwhile counts.
            plan = report.plan = plan_for(ctx, db, rules, at)
            await _hold_locked(acting.repo, report)
            if plan.alert:
                job.warn(plan.alert)
            if plan.remove:
                report.forgotten = await forget_allowed(ctx, acting, plan.remove)
            job.phase("wal")
            wal = report.wal = await wal_trim_plan(ctx, acting.repo, db, set())
            report.wal_deleted, report.wal_locked_until = await delete_wal(acting.repo, wal.remove)
            acting.detail.update(wal_deleted=report.wal_deleted, wal_kept_from=wal.keep_from)
            job.result = {"forgotten": report.forgotten, "wal_deleted": report.wal_deleted, "alert": plan.alert}
    return report
