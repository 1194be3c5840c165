"""`backstop prune`: delete packs no snapshot needs, older than the grace period, and leftovers (FORMAT.md 17)."""

from __future__ import annotations

from core.context import EngineContext
from core.errors import UsageError
from core.format import config_duration
from core.jobs import run_job
from core.repository import gc
from core.repository.dedup import backup_index
from core.repository.gc import PruneReport
from core.repository.manifest import SNAPSHOT_PREFIX
from core.repository.repo import Repository
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Guard
from core.storage.base import Storage
from core.storage.immutability import is_append_only


async def prune_repository(ctx: EngineContext, who: Identity | None = None, grace_s: float | None = None,
                           dry_run: bool = False, *, approved_by: str | None = None,
                           append_only_override: str | None = None) -> PruneReport:
    """Mark packs no snapshot needs; delete those marked longer ago than the grace period (default 24 h).

    Runs beside backups and restores (FORMAT.md 17.2). A dry run changes
    nothing, so it needs neither a code nor the lock. ``approved_by``
    replaces the code with a standing approval recorded in the audit log
    (the daemon's retention schedule, itself an approved setting).
    ``append_only_override`` names an append-only target this run may
    delete from (FORMAT.md 23): the manifests forgotten elsewhere go first.
    """
    grace = gc.DEFAULT_GRACE_S if grace_s is None else grace_s
    if grace < 0:
        raise UsageError("--grace must not be negative")
    if dry_run:
        repo = await ctx.open_repository(require_all=True)
        lifted = _lift(repo, append_only_override) if append_only_override is not None else None
        try:
            return await gc.prune(repo, grace, dry_run=True)
        finally:
            if lifted is not None:
                lifted.lift_append_only(False)  # type: ignore[attr-defined]
    who = who or default_identity()
    subject = f"grace {config_duration(grace)}"
    if append_only_override is not None:
        subject += f", append-only override of target {append_only_override}"
    async with Guard(ctx).action(who, Action.PRUNE, subject, lock=("prune", "prune"),
                                 approved_by=approved_by) as acting:
        async with run_job(ctx.bus, "prune", None, f"prune ({subject})") as job:
            job.phase("prune")
            target = _lift(acting.repo, append_only_override) if append_only_override is not None else None
            try:
                if target is not None:
                    gone = await _forget_leftover_manifests(ctx, acting.repo, target)
                    acting.detail["append_only_override"] = {"target": target.name, "manifests_deleted": gone}
                # Finish what an interrupted backup left half-committed before deciding what is unneeded.
                for warning in (await backup_index(acting.repo)).warnings:
                    job.warn(warning)
                report = await gc.prune(acting.repo, grace)
            finally:
                if target is not None:  # for this run only: a long-lived engine keeps the target append-only
                    target.lift_append_only(False)  # type: ignore[attr-defined]
            job.result = report.to_json()
        acting.detail.update(report.to_json())
    return report


def _lift(repo: Repository, name: str) -> Storage:
    """Allow deletes on the append-only target ``name`` for this process; UsageError unless it is one."""
    for st in repo.storages:
        if st.name == name:
            if not is_append_only(st):
                raise UsageError(f"target '{name}' is not append-only; --append-only-override names an "
                                 "`append_only: true` target")
            st.lift_append_only()  # type: ignore[attr-defined]  # LocalStorage's (through the metered wrapper)
            return st
    raise UsageError(f"no target named '{name}' in the config")


async def _forget_leftover_manifests(ctx: EngineContext, repo: Repository, target: Storage) -> int:
    """Delete from ``target`` the manifests forgotten elsewhere while it was append-only; returns how many.

    A manifest counts as forgotten when the catalog does not list it and no
    other target holds it (`catalog rebuild` first if the catalog was lost).
    """
    listed = {s.id for s in ctx.catalog.snapshots()}
    elsewhere: set[str] = set()
    for st in repo.storages:
        if st is not target:
            elsewhere |= await repo.snapshot_names(st)
    gone = sorted(await repo.snapshot_names(target) - listed - elsewhere)
    for sid in gone:
        await target.delete(f"{SNAPSHOT_PREFIX}{sid}")
    return len(gone)
