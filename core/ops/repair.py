"""`backstop repair`: damaged or missing copies rewritten from a verified copy; `repair index` from pack headers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from core.context import EngineContext
from core.errors import BackstopError, IntegrityError, StorageError
from core.jobs import run_job
from core.repository import copies, quarantine
from core.repository.copies import Survey, commit_groups, commit_order
from core.repository.index import INDEX_PREFIX
from core.repository.keys import KEY_PREFIX
from core.repository.manifest import SNAPSHOT_PREFIX
from core.repository.packs import DATA_PREFIX, pack_id_from_name
from core.repository.repair_index import IndexRepairReport
from core.repository.repair_index import repair_index as rebuild_index
from core.repository.repo import CONFIG_NAME, Repository, sha256_hex
from core.storage.base import Storage

_PARALLEL = 4


async def repair_index(ctx: EngineContext, dry_run: bool = False) -> IndexRepairReport:
    """Rebuild the index from the pack headers where index objects are damaged or missing."""
    async with run_job(ctx.bus, "repair", None, "repair index" + (" (dry run)" if dry_run else "")) as job:
        repo = await ctx.open_repository(require_all=True)
        async with repo.lock("exclusive", "repair index"):
            job.phase("read pack headers")
            report = await rebuild_index(repo, dry_run=dry_run)
        job.result = report.to_json()
        return report


@dataclass
class TargetRepair:
    """What repair did (or would do) on one target."""

    target: str
    rewritten: list[str] = field(default_factory=list)  # damaged copies replaced: "name (from target)"
    copied: list[str] = field(default_factory=list)  # missing objects written: "name (from target)"
    bytes: int = 0
    failed: list[str] = field(default_factory=list)  # writes whose read-back did not verify, or that failed
    skipped: str | None = None  # why the target was not repaired (unreachable)


@dataclass
class LostObject:
    """An object no target holds a copy of that verifies: nothing is deleted, the damage is named."""

    name: str
    copies: dict[str, str]  # target -> why its copy fails
    snapshots: list[str]  # "id8 (db finished_at)" of the snapshots it makes unrestorable
    advice: str


@dataclass
class RepairReport:
    """The result of `backstop repair`."""

    dry_run: bool
    targets: list[TargetRepair]
    lost: list[LostObject] = field(default_factory=list)
    objects_read: int = 0
    bytes_read: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.lost and all(t.skipped is None and not t.failed for t in self.targets)

    def to_json(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "ok": self.ok, "objects_read": self.objects_read,
                "bytes_read": self.bytes_read, "targets": [asdict(t) for t in self.targets],
                "lost": [asdict(x) for x in self.lost], "notes": self.notes}


async def repair(ctx: EngineContext, target: str | None = None, dry_run: bool = False) -> RepairReport:
    """Read every copy on every target, then rewrite each damaged or missing one from a copy that verifies."""
    label = "repair" + (f" of target {target}" if target else "") + (" (dry run)" if dry_run else "")
    async with run_job(ctx.bus, "repair", None, label) as job:
        scope = {s.name for s in ctx.storages(target)}  # an unknown target name is a ConfigError here
        repo = await ctx.open_repository(require_all=False)
        stores = [*repo.storages, *repo.damaged_storages]
        passphrase = ctx.config.encryption.passphrase()
        known_sids = {s.id for s in ctx.catalog.snapshots()}
        report = RepairReport(dry_run, [])
        async with repo.lock("exclusive", label):
            job.phase("read every copy on every target")
            found = await copies.survey(
                stores, repo.params, repo.keys, passphrase, read=True,
                # A manifest the catalog does not list may have been forgotten while a target was away.
                skip=lambda n: n.startswith(SNAPSHOT_PREFIX) and n[len(SNAPSHOT_PREFIX):] not in known_sids,
                on_progress=job.progress)
            report.objects_read = sum(len(c) for c in found.objects.values())
            report.bytes_read = found.bytes_read
            if found.skipped:
                report.notes.append(f"{len(found.skipped)} snapshot manifest(s) not in the catalog were left alone "
                                    "(they may have been forgotten); `backstop catalog rebuild` lists them if they "
                                    "should stay")
            for name, why in {**repo.unreachable, **found.unlisted}.items():
                if name in scope:
                    report.targets.append(TargetRepair(name, skipped=why))
            job.phase("find what the snapshots need")
            demanded = await _demanded(repo, known_sids)
            unusable = found.without_intact_copy()
            lost = {n for n in unusable if demanded(n)}
            if len(unusable) > len(lost):
                report.notes.append(f"{len(unusable) - len(lost)} object(s) no snapshot needs have no copy that "
                                    "verifies; prune removes them")
            by_name = {s.name: s for s in stores}
            prefer = {t.name: t.priority for t in ctx.config.targets}
            job.phase("rewrite from verified copies")
            for st in (s for s in stores if s.name in scope and s.name in found.targets):
                tr = TargetRepair(st.name)
                report.targets.append(tr)
                todo = sorted((set(found.damaged(st.name)) | set(found.missing(st.name, demanded))) - set(unusable),
                              key=commit_order)
                try:
                    await _rewrite(repo, passphrase, found, by_name, prefer, st, todo, tr, dry_run)
                except StorageError as exc:
                    tr.skipped = str(exc)
            report.lost = await _describe_lost(ctx, repo, found, sorted(lost, key=commit_order))
            if not dry_run:
                report.notes += await _after(ctx, repo, found, report)
        job.result = {"ok": report.ok, "rewritten": sum(len(t.rewritten) + len(t.copied) for t in report.targets),
                      "lost": len(report.lost)}
        return report


async def _demanded(repo: Repository, known_sids: set[str]) -> Callable[[str], bool]:
    """Which objects every target must hold: the always-wanted ones, and what the catalog's snapshots need.

    Packs and index objects a failed backup or an interrupted prune left on
    some targets only are leftovers for prune, not copies to restore; a
    manifest the catalog does not list (forgotten) does not make its packs
    wanted either.
    """
    names: set[str] = set()
    for st in repo.storages:
        names |= await repo.snapshot_names(st)
    live: set[bytes] = set()
    for sid in sorted(names & known_sids):
        try:
            live |= (await repo.read_manifest(sid)).chunk_ids()
        except BackstopError:
            continue  # no intact copy of the manifest: named as lost
    index = await repo.load_index(common=False)
    packs = {loc.pack_id for c in live if (loc := index.chunks.get(c)) is not None}
    index_objects = {name for name, listed in index.file_packs.items() if listed & packs}

    def demanded(name: str) -> bool:
        if copies.always_demanded(name) or name.startswith((SNAPSHOT_PREFIX, copies.WAL_PREFIX)):
            return True
        if name.startswith(DATA_PREFIX):
            return pack_id_from_name(name) in packs
        return name in index_objects

    return demanded


async def _rewrite(repo: Repository, passphrase: bytes, found: Survey, by_name: dict[str, Storage],
                   prefer: dict[str, int], dest: Storage, todo: list[str], tr: TargetRepair, dry_run: bool) -> None:
    """Write each of ``todo`` to ``dest`` from a verified copy, in commit order, and check what was written."""
    sem = asyncio.Semaphore(_PARALLEL)
    damaged = found.damaged(dest.name)

    async def one(name: str) -> None:
        async with sem:
            check = copies.verifier(name, repo.params, repo.keys, passphrase)
            sources = sorted((t for t in found.intact_on(name) if t != dest.name), key=lambda t: prefer.get(t, 1000))
            errors: list[str] = []
            for src in sources:
                try:
                    data = await by_name[src].get(name)
                    await asyncio.to_thread(check, data)
                except (BackstopError, ValueError) as exc:
                    errors.append(f"target '{src}': {exc}")
                    continue
                done = tr.rewritten if name in damaged else tr.copied
                if not dry_run:
                    try:
                        await dest.put(name, data)
                        back = await dest.get(name)
                        if sha256_hex(back) != sha256_hex(data):
                            raise IntegrityError("the read-back does not match what was written")
                        await asyncio.to_thread(check, back)
                    except (BackstopError, ValueError) as exc:
                        tr.failed.append(f"{name}: {exc}")
                        return
                done.append(f"{name} (from {src})")
                tr.bytes += len(data)
                return
            tr.failed.append(f"{name}: no copy verified when read again ({'; '.join(errors) or 'none left'})")

    for group in commit_groups(todo):
        if group[0] == CONFIG_NAME and tr.failed and CONFIG_NAME not in damaged:
            tr.failed.append("config not written: a target counts as initialised once it holds it, and objects "
                             "above are still missing there")
            return
        for r in await asyncio.gather(*(one(n) for n in group), return_exceptions=True):
            if isinstance(r, BaseException):
                raise r


async def _describe_lost(ctx: EngineContext, repo: Repository, found: Survey, lost: list[str]) -> list[LostObject]:
    """Name each object without a verified copy and the snapshots it makes unrestorable."""
    if not lost:
        return []
    described = {s.id: f"{s.short_id} ({s.db} {s.finished_at})" for s in ctx.catalog.snapshots()}
    packs = {pack_id_from_name(n) for n in lost if n.startswith(DATA_PREFIX)}
    key_versions = {int(n.rsplit("-", 1)[-1]) for n in lost if n.startswith(KEY_PREFIX)}
    index = await repo.load_index(common=False) if packs or key_versions or any(
        n.startswith(INDEX_PREFIX) for n in lost) else None
    hit: dict[str, set[str]] = {n: set() for n in lost}
    if index is not None:
        sids = sorted({sid for st in repo.storages for sid in await repo.snapshot_names(st)})
        for sid in sids:
            try:
                chunks = (await repo.read_manifest(sid)).chunk_ids()
            except BackstopError:
                continue  # its manifest is itself lost: named below
            for n in lost:
                if n.startswith(DATA_PREFIX):
                    pid = pack_id_from_name(n)
                    if any((loc := index.chunks.get(c)) is not None and loc.pack_id == pid for c in chunks):
                        hit[n].add(sid)
                elif n.startswith(KEY_PREFIX):
                    kv = int(n.rsplit("-", 1)[-1])
                    if any((loc := index.chunks.get(c)) is not None and loc.key_version == kv for c in chunks):
                        hit[n].add(sid)
                elif n.startswith(INDEX_PREFIX) and any(c not in index.chunks for c in chunks):
                    hit[n].add(sid)
    out = []
    for n in lost:
        if n.startswith(SNAPSHOT_PREFIX):
            hit[n].add(n[len(SNAPSHOT_PREFIX):])
        advice = ("`backstop repair index` rebuilds the index from the pack headers" if n.startswith(INDEX_PREFIX)
                  else "restore these snapshots from another repository copy, or take a new backup and forget them"
                  if hit[n] else "no snapshot needs it; prune removes it once nothing refers to it")
        out.append(LostObject(n, found.damaged_on(n), sorted(described.get(s, s[:8]) for s in hit[n]), advice))
    return out


async def _after(ctx: EngineContext, repo: Repository, found: Survey, report: RepairReport) -> list[str]:
    """The catalog learns which targets hold the snapshots now; packs intact everywhere leave quarantine."""
    written: dict[str, set[str]] = {}
    for tr in report.targets:
        for entry in [*tr.rewritten, *tr.copied]:
            written.setdefault(entry.split(" ", 1)[0], set()).add(tr.target)
    for rec in ctx.catalog.snapshots():
        got = written.get(f"{SNAPSHOT_PREFIX}{rec.id}")
        if got:
            ctx.catalog.set_snapshot_targets(rec.id, sorted(set(rec.targets) | got))
    held = await quarantine.load(repo)
    everywhere = set(found.targets)
    healed = set()
    pack_names = {pack_id_from_name(n): n for n in found.objects if n.startswith(DATA_PREFIX)}
    for pid in held:
        name = pack_names.get(pid)
        if name is None:
            continue
        good = set(found.intact_on(name)) | written.get(name, set())
        if good >= everywhere:
            healed.add(pid)
    if healed:
        await quarantine.release(repo, healed)
        return [f"{len(healed)} pack(s) now intact on every target: out of quarantine"]
    return []
