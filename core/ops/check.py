"""`backstop check`: every target on its own, the targets against each other, the catalog against the repository."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.context import EngineContext
from core.jobs import run_job
from core.repository import quarantine
from core.repository.checker import TargetReport, check_target
from core.repository.repo import Repository
from core.repository.wal import check_wal


@dataclass(frozen=True)
class CheckResult:
    reports: list[TargetReport]
    read_data: bool
    # The catalog compared with the repository: rows for snapshots no target holds.
    catalog_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports) and not self.catalog_problems


async def check(ctx: EngineContext, read_data: bool = False, target: str | None = None) -> CheckResult:
    """Verify the repository on every target (or one), and the catalog against it; results go to the catalog."""
    desc = f"check{' --read-data' if read_data else ''}" + (f" of target {target}" if target else "")
    async with run_job(ctx.bus, "check", None, desc) as job:
        repo = await ctx.open_repository(require_all=False, target=target)
        reports = [TargetReport(name, problems=[msg], unreachable=msg) for name, msg in repo.unreachable.items()]
        held = await quarantine.load(repo)
        started = time.time()
        # A target whose own config or keys are damaged is still checked, with the healthy targets' keys.
        for st in [*repo.storages, *repo.damaged_storages]:
            job.phase(f"check {st.name}")
            reports.append(await check_target(repo, st, read_data, ctx.pool, on_progress=job.progress,
                                              quarantined=held))
        job.phase("check WAL")
        by_name = {r.target: r for r in reports}
        for wal in await check_wal(repo, [*repo.storages, *repo.damaged_storages], read_data):
            rep = by_name[wal.target]
            rep.objects_checked += wal.files
            rep.bytes_read += wal.bytes_read
            rep.problems += wal.problems
        problems, notes = compare_catalog(ctx, reports, all_targets=target is None)
        notes += await _update_quarantine(repo, reports, held, whole=read_data and target is None)
        _record(ctx, job.id, reports, started, read_data)
        result = CheckResult(reports, read_data, problems, notes)
        job.result = {"ok": result.ok, "problems": sum(len(r.problems) for r in reports) + len(problems)}
        return result


async def _update_quarantine(repo: Repository, reports: list[TargetReport], held: set[str], whole: bool) -> list[str]:
    """Damage found goes into quarantine (in the repository); packs read intact everywhere leave it."""
    findings = [quarantine.Finding(pid, r.target, why) for r in reports for pid, why in r.bad_packs.items()]
    if findings:
        await quarantine.add(repo, findings, "check")
    notes: list[str] = []
    healed: set[str] = set()
    if whole and not repo.unreachable and not repo.damaged and reports:
        fine = set.intersection(*(r.intact_packs for r in reports))
        healed = (held & fine) - {pid for r in reports for pid in r.bad_packs}
        if healed:
            await quarantine.release(repo, healed)
            notes.append(f"{len(healed)} pack(s) read intact on every target: out of quarantine")
    still = (held | {f.pack_id for f in findings}) - healed
    if still:
        notes.append(f"{len(still)} pack(s) in quarantine: backups store fresh copies of their chunks instead of "
                     "referencing them")
    return notes


def _record(ctx: EngineContext, job_id: str, reports: list[TargetReport], started: float, read_data: bool) -> None:
    """One verification per target, and one per snapshot and target."""
    for rep in reports:
        ctx.catalog.add_verification(job_id=job_id, target=rep.target, snapshot_id=None, started_at=started,
                                     read_data=read_data, objects_checked=rep.objects_checked,
                                     bytes_read=rep.bytes_read, problems=rep.problems)
        for sid in sorted(set(rep.snapshots) | set(rep.affected)):
            ctx.catalog.add_verification(job_id=job_id, target=rep.target, snapshot_id=sid, started_at=started,
                                         read_data=read_data, objects_checked=0, bytes_read=0,
                                         problems=rep.affected.get(sid, []))


def compare_catalog(ctx: EngineContext, reports: list[TargetReport], all_targets: bool) -> tuple[list[str], list[str]]:
    """Catalog against repository, both ways, and each target against the others.

    Adds to the target reports a problem for each snapshot another target
    holds and this one lacks; returns repository-level problems (catalog rows
    naming snapshots that are not there) and notes.
    """
    checked = [r for r in reports if r.unreachable is None]
    held = {r.target: set(r.snapshots) | set(r.affected) for r in checked}
    described: dict[str, str] = {}
    for r in checked:
        described.update(r.described)
    everywhere = set().union(*held.values()) if held else set()
    if len(checked) > 1:
        for r in checked:
            for sid in sorted(everywhere - held[r.target]):
                others = ", ".join(t for t, have in held.items() if sid in have)
                what = described.get(sid, "")
                r.affect(sid, f"target '{r.target}': snapshot {sid[:8]}{f' ({what})' if what else ''} is missing "
                              f"here (target {others} holds it)")
    problems: list[str] = []
    rows = ctx.catalog.snapshots()
    for row in rows:
        if row.id in everywhere:
            continue
        if all_targets and len(checked) == len(reports):
            problems.append(f"snapshot {row.short_id} ({row.db} {row.finished_at}) is in the catalog but on no "
                            "target: it was deleted from the repository; `backstop catalog rebuild` drops it")
            continue
        for r in checked:
            if r.target in row.targets:
                r.affect(row.id, f"target '{r.target}': snapshot {row.short_id} ({row.db} {row.finished_at}) "
                                 "is in the catalog but not on this target")
    unknown = everywhere - {row.id for row in rows}
    notes = [f"{len(unknown)} snapshot(s) in the repository are not in the catalog: `backstop catalog rebuild` "
             "adds them"] if unknown else []
    return problems, notes
