"""`backstop catalog rebuild`: make the catalog equal to the repository (the catalog is only an index)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from core.context import EngineContext
from core.drills import seal as drill_seal
from core.errors import BackstopError
from core.ops.backup import physical_fields, refresh_status
from core.physical.status import WAITING
from core.records import SnapshotRecord
from core.repository.dedup import backup_index
from core.repository.manifest import Manifest
from core.repository.repo import Repository
from core.security import state
from core.security.gate import Identity, default_identity


@dataclass
class RebuildResult:
    """What `catalog rebuild` changed."""

    snapshots: int = 0  # snapshots the repository holds, now in the catalog
    removed: list[str] = field(default_factory=list)  # catalog rows of snapshots no target holds
    security: list[str] = field(default_factory=list)  # audit log, operators, schema repairs
    warnings: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # interrupted commits finished, damage quarantined
    drills: int = 0  # drill reports taken back from their sealed copies (missing from the catalog, or differing)


async def rebuild_catalog(ctx: EngineContext, who: Identity | None = None) -> RebuildResult:
    """Snapshots and where each is stored, the audit log and the operators, as the repository has them."""
    repo = await ctx.open_repository(require_all=False)
    result = RebuildResult()
    if not repo.unreachable and not repo.damaged:
        # A commit a crash left on some targets only is finished first (as the next backup would).
        async with repo.lock("shared", "catalog rebuild"):
            result.repaired = (await backup_index(repo)).warnings
    where = await _where(repo)
    manifests = await _read_manifests(repo, where, result)
    # A re-sealed manifest replaces the one it names (an interrupted re-encryption left both).
    replaced = {m.supersedes for m in manifests.values() if m.supersedes}
    existing = {r.id: r for r in ctx.catalog.snapshots()}
    # Oldest first, so that rowid order (the tie-breaker for equal times) follows time.
    for sid, m in sorted(manifests.items(), key=lambda kv: (kv[1].finished_at, kv[1].started_at, kv[0])):
        if sid in replaced:
            continue
        _keep(ctx, sid, m, where[sid], existing.get(sid))
        result.snapshots += 1
    partial = {**repo.unreachable, **repo.damaged}
    # Whether a physical snapshot's WAL is archived is the repository's to say, not the old catalog's.
    result.warnings += (await refresh_status(ctx, ctx.catalog.snapshots(kind="physical")))[1]
    for sid, row in existing.items():
        if sid in where and sid not in replaced:
            continue
        if partial and sid not in replaced:
            # A target that did not answer may hold it: keep the row rather than guess.
            result.warnings.append(f"snapshot {row.short_id} is on no reachable target; kept in the catalog because "
                                   f"target(s) {', '.join(partial)} could not be read")
            continue
        ctx.catalog.delete_snapshot(sid)
        result.removed.append(sid)
    result.security = await state.rebuild(ctx.catalog, ctx.config, repo, who or default_identity())
    result.drills, drill_warnings = await drill_seal.rebuild(ctx, repo)
    result.warnings += drill_warnings
    return result


def _keep(ctx: EngineContext, sid: str, m: Manifest, targets: list[str], old: SnapshotRecord | None,
          job_id: str | None = None) -> SnapshotRecord:
    """Index one snapshot as its manifest describes it (physical: its cluster learnt, status kept or waiting)."""
    rec = SnapshotRecord(sid, m.db, m.kind, m.started_at, m.finished_at, m.size_bytes, m.stored_bytes,
                         targets, job_id or (old.job_id if old else None))
    if m.physical is not None:
        rec = replace(rec, **physical_fields(m.physical, old.status if old and old.is_physical else WAITING))
        ctx.catalog.learn_system(m.db, m.physical.system_identifier)
    ctx.catalog.add_snapshot(rec)
    return rec


async def index_snapshot(ctx: EngineContext, sid: str, job_id: str | None = None) -> SnapshotRecord:
    """Index one snapshot another process committed (an agent's backup), read from the repository itself.

    The control plane does not take an agent's word for what it stored: the row comes from the sealed
    manifest, and names the targets that hold it.
    """
    repo = await ctx.open_repository(require_all=False)
    m = await repo.read_manifest(sid)
    targets = [st.name for st in repo.storages if sid in await repo.snapshot_names(st)]
    rec = _keep(ctx, sid, m, targets, None, job_id)
    if rec.is_physical:
        await refresh_status(ctx, [rec])
    return rec


async def learn_snapshots(ctx: EngineContext, db: str | None = None) -> int:
    """Index the snapshots (of ``db``) in the repository that this catalog does not know yet, from their
    manifests: an agent about to drill a database another host backed up. Returns how many it learnt."""
    repo = await ctx.open_repository(require_all=False)
    learnt = 0
    for sid, targets in (await _where(repo)).items():
        if ctx.catalog.has_snapshot(sid):
            continue
        try:
            m = await repo.read_manifest(sid)
        except BackstopError:
            continue  # unreadable now: `check` names it; it is not this one's to report
        if db is None or m.db == db:
            rec = _keep(ctx, sid, m, targets, None)
            if rec.is_physical:
                await refresh_status(ctx, [rec])
            learnt += 1
    return learnt


async def _where(repo: Repository) -> dict[str, list[str]]:
    """Snapshot id -> the targets holding its manifest, in config order."""
    where: dict[str, list[str]] = {}
    for st in repo.storages:
        for sid in await repo.snapshot_names(st):
            where.setdefault(sid, []).append(st.name)
    return where


async def _read_manifests(repo: Repository, where: dict[str, list[str]], result: RebuildResult) -> dict[str, Manifest]:
    out: dict[str, Manifest] = {}
    for sid in sorted(where):
        try:
            out[sid] = await repo.read_manifest(sid)
        except BackstopError as exc:
            result.warnings.append(f"snapshot {sid[:8]} cannot be read from any target ({exc}); it is left out")
    return out
