"""`backstop prune`: delete packs no snapshot needs, older than the grace period, and leftovers (FORMAT.md 17)."""

from __future__ import annotations

from core.context import EngineContext
from core.errors import UsageError
from core.format import config_duration
from core.jobs import run_job
from core.repository import gc
from core.repository.dedup import backup_index
from core.repository.gc import PruneReport
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Guard


async def prune_repository(ctx: EngineContext, who: Identity | None = None, grace_s: float | None = None,
                           dry_run: bool = False, *, approved_by: str | None = None) -> PruneReport:
    """Mark packs no snapshot needs; delete those marked longer ago than the grace period (default 24 h).

    Runs beside backups and restores (FORMAT.md 17.2). A dry run changes
    nothing, so it needs neither a code nor the lock. ``approved_by``
    replaces the code with a standing approval recorded in the audit log
    (the daemon's retention schedule, itself an approved setting).
    """
    grace = gc.DEFAULT_GRACE_S if grace_s is None else grace_s
    if grace < 0:
        raise UsageError("--grace must not be negative")
    if dry_run:
        return await gc.prune(await ctx.open_repository(require_all=True), grace, dry_run=True)
    who = who or default_identity()
    subject = f"grace {config_duration(grace)}"
    async with Guard(ctx).action(who, Action.PRUNE, subject, lock=("prune", "prune"),
                                 approved_by=approved_by) as acting:
        async with run_job(ctx.bus, "prune", None, f"prune ({subject})") as job:
            job.phase("prune")
            # Finish what an interrupted backup left half-committed before deciding what is unneeded.
            for warning in (await backup_index(acting.repo)).warnings:
                job.warn(warning)
            report = await gc.prune(acting.repo, grace)
            job.result = report.to_json()
        acting.detail.update(report.to_json())
    return report
