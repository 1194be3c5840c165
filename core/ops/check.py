"""`backstop check`: every target on its own, the targets against each other, the catalog against the repository."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from core.context import EngineContext
from core.jobs import run_job
from core.repository import copies, quarantine
from core.repository.checker import TargetReport, check_target
from core.repository.index import INDEX_PREFIX
from core.repository.keys import KEY_PREFIX
from core.repository.manifest import SNAPSHOT_PREFIX
from core.repository.packs import DATA_PREFIX, pack_id_from_name
from core.repository.repo import CONFIG_NAME, DRILL_PREFIX, Repository
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
        if target is None:
            notes += await compare_drills(ctx, repo)
        if target is None and len(repo.storages) + len(repo.damaged_storages) > 1:
            job.phase("compare the targets' copies")
            notes += await compare_copies(ctx, repo, reports, read_data)
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


# Reported by other steps of check: manifests (compare_catalog), WAL files (check_wal), packs (check_target).
_COVERED = (SNAPSHOT_PREFIX, copies.WAL_PREFIX)


async def compare_copies(ctx: EngineContext, repo: Repository, reports: list[TargetReport],
                         read_data: bool) -> list[str]:
    """Targets against each other object by object (FORMAT.md 12.5): what one lacks or holds damaged.

    Packs check_target read are not fetched again, nor packs no index lists
    (leftovers); WAL files are compared by check_wal. Adds problems to the target reports, returns notes.
    """
    by_name = {r.target: r for r in reports}
    known_sids = {s.id for s in ctx.catalog.snapshots()}

    def skip(name: str) -> bool:
        return name.startswith(SNAPSHOT_PREFIX) and name[len(SNAPSHOT_PREFIX):] not in known_sids

    def known(target: str, name: str) -> copies.Copy | None:
        rep = by_name.get(target)
        if name.startswith(DATA_PREFIX) and rep is not None:
            pid = pack_id_from_name(name)
            if pid in rep.bad_packs:
                return copies.Copy(pid, rep.bad_packs[pid])
            if pid in rep.intact_packs:
                return copies.Copy(pid)
            if any(pid in r.intact_packs or pid in r.bad_packs for r in reports):
                return None  # indexed elsewhere, not here (a damaged index object): read this copy too
            return copies.Copy()  # indexed nowhere: a leftover of a failed write, prune's business, not read
        if name.startswith(copies.WAL_PREFIX) and name != copies.CLUSTER_NAME:
            return copies.Copy()  # not read again: check_wal opened every copy
        return None

    found = await copies.survey([*repo.storages, *repo.damaged_storages], repo.params, repo.keys,
                                ctx.config.encryption.passphrase(), read=read_data, skip=skip, known=known)
    for name, rep in ((t, by_name[t]) for t in found.targets if t in by_name):
        # Packs and index objects a snapshot needs are named by check_target; others are leftovers for prune.
        lacking = found.missing(name, copies.always_demanded)
        if lacking:
            kinds = Counter(n.split("/", 1)[0] for n in lacking)
            what = ", ".join(f"{c} {k}" for k, c in kinds.items())
            rep.problems.append(f"target '{name}': {len(lacking)} object(s) the other targets hold are missing here "
                                f"({what}; first {lacking[0]}); `backstop repair --target {name}` copies them")
        for obj, why in found.damaged(name).items():
            if obj.startswith((INDEX_PREFIX, KEY_PREFIX, *_COVERED)) or obj == CONFIG_NAME or (
                    obj.startswith(DATA_PREFIX) and pack_id_from_name(obj) in rep.bad_packs):
                continue  # already named by check_target / check_wal
            rep.problems.append(f"target '{name}': {obj} is damaged ({why}); `backstop repair --target {name}` "
                                "rewrites it from an intact copy")
    # Audit log copies are sealed on each target on their own (FORMAT.md 18.1): their bytes differ by design.
    notes = [f"{obj} verifies on every target that holds it but the copies differ byte for byte"
             for obj in found.differing() if not obj.startswith(copies.AUDIT_PREFIX)]
    return notes


async def compare_drills(ctx: EngineContext, repo: Repository) -> list[str]:
    """Drill reports the catalog lists against their sealed copies in the repository (FORMAT.md 18.4): notes."""
    held = await repo.names_anywhere(DRILL_PREFIX)
    rows = ctx.catalog.drills(limit=1_000_000)
    notes = []
    unsealed = [r.id for r in rows if f"{DRILL_PREFIX}{r.id}" not in held]
    if unsealed:
        notes.append(f"{len(unsealed)} drill report(s) in the catalog have no sealed copy on any target (first "
                     f"{unsealed[0]}); `backstop drill verify ID` says why")
    unknown = held - {f"{DRILL_PREFIX}{r.id}" for r in rows}
    if unknown:
        notes.append(f"{len(unknown)} drill report(s) in the repository are not in the catalog: `backstop catalog "
                     "rebuild` adds them")
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
