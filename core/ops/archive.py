"""`backstop archive`: packs only old snapshots use go to a colder storage class; `archive thaw` (FORMAT.md 12.6).

For every target with ``archive_after_days``, the packs whose newest user
is a snapshot older than that many days are (1) made present there, copied
from another target's copy that matches its SHA-256 name and read back
after writing (an archive-role target left out of quorum writes gets them
here), and (2) on S3 targets with ``storage_class``, copied onto themselves
in that class. Packs a recent snapshot uses stay (or go back to) STANDARD
where the class allows it. No hot copy on another target is ever removed:
every target keeps the whole repository (12.1), so sync, check and prune
keep working as before; the saving is the colder class.

The newest user of each pack comes from the manifests, read one at a time
(as prune reads them), and the restore index; the classes from the S3
listings, which are re-read after the moves to check them. The run holds
the exclusive lock, so no backup can start referencing a pack while it
moves (new backups never reference frozen packs: core/repository/dedup.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from core.config import S3TargetConfig, TargetConfig
from core.context import EngineContext
from core.errors import BackstopError, IntegrityError, StorageError, UsageError
from core.jobs import run_job
from core.repository import quarantine
from core.repository.packs import DATA_PREFIX, pack_id_from_name, pack_object_name
from core.repository.repo import Repository
from core.repository.sources import ReadSources
from core.repository.tiers import THAW_TIERS, THAW_TIMES, FrozenCopies, has_classes, needs_thaw, packs_of
from core.storage.base import ObjectInfo, Storage

STANDARD = "STANDARD"
_PARALLEL = 8  # class changes are server-side copies: cheap for the client


@dataclass
class TargetArchive:
    """What `archive` did (or would do) on one target."""

    target: str
    after_days: int
    storage_class: str | None
    old_packs: int = 0  # packs only snapshots older than after_days use
    moved: int = 0  # changed to storage_class now
    moved_bytes: int = 0
    already: int = 0  # in storage_class before this run
    already_bytes: int = 0
    copied: int = 0  # lacked here, copied from a verified copy
    copied_bytes: int = 0
    returned: int = 0  # back to STANDARD: a recent snapshot uses them
    returned_bytes: int = 0
    frozen_recent: int = 0  # a recent snapshot uses them but they are frozen here (a restore of it needs a thaw)
    skipped: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class ArchiveReport:
    """The result of `backstop archive`."""

    dry_run: bool
    snapshots: int
    packs: int  # packs some snapshot uses
    targets: list[TargetArchive]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.skipped is None and not t.problems for t in self.targets)

    def to_json(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "ok": self.ok, "snapshots": self.snapshots, "packs": self.packs,
                "targets": [asdict(t) for t in self.targets], "notes": self.notes}


def _epoch(iso: str) -> float:
    at = datetime.fromisoformat(iso)
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


async def newest_use(repo: Repository) -> tuple[int, dict[str, float]]:
    """How many snapshots there are, and pack id -> start time of the newest snapshot using it.

    Manifests are read one at a time; a manifest no target delivers raises
    (what it needs is unknown, so nothing may be archived).
    """
    names: set[str] = set()
    for st in repo.storages:
        names |= await repo.snapshot_names(st)
    # The restore index: a chunk stored twice is found where a restore would read it (not in quarantine).
    index = await repo.load_index(common=False, avoid=await quarantine.load(repo))
    newest: dict[str, float] = {}
    for sid in sorted(names):
        manifest = await repo.read_manifest(sid)
        at = _epoch(manifest.started_at)
        for pid in packs_of(manifest.files, index):
            if newest.get(pid, -1.0) < at:
                newest[pid] = at
    return len(names), newest


async def archive(ctx: EngineContext, dry_run: bool = False, now: float | None = None) -> ArchiveReport:
    """Move packs only old snapshots use to each target's archive class (and make sure they are there)."""
    at = time.time() if now is None else now
    configured = [t for t in ctx.config.targets if t.archive_after_days is not None]
    label = "archive" + (" (dry run)" if dry_run else "")
    async with run_job(ctx.bus, "archive", None, label) as job:
        if not configured:
            report = ArchiveReport(dry_run, 0, 0, [], ["no target sets archive_after_days: nothing to archive"])
            job.result = report.to_json()
            return report
        repo = await ctx.open_repository(require_all=False)
        # Exclusive: a backup starting meanwhile could reference a pack on its way to a frozen class.
        async with repo.lock("shared" if dry_run else "exclusive", label):
            job.phase("scan")
            count, newest = await newest_use(repo)
            report = ArchiveReport(dry_run, count, len(newest), [])
            listings = await _listings(repo.storages)
            job.phase("archive")
            for tc in configured:
                report.targets.append(await _one_target(repo, tc, newest, listings, at, dry_run))
        job.result = report.to_json()
        return report


async def _listings(storages: list[Storage]) -> dict[str, dict[str, ObjectInfo] | StorageError]:
    out: dict[str, dict[str, ObjectInfo] | StorageError] = {}
    for st, lst in zip(storages, await asyncio.gather(*(s.list(DATA_PREFIX) for s in storages),
                                                     return_exceptions=True), strict=True):
        if isinstance(lst, StorageError):
            out[st.name] = lst
        elif isinstance(lst, BaseException):
            raise lst
        else:
            out[st.name] = {pack_id_from_name(o.name): o for o in lst}
    return out


async def _one_target(repo: Repository, tc: TargetConfig, newest: dict[str, float],
                      listings: dict[str, dict[str, ObjectInfo] | StorageError], at: float,
                      dry_run: bool) -> TargetArchive:
    assert tc.archive_after_days is not None
    wanted = tc.storage_class if isinstance(tc, S3TargetConfig) else None
    ta = TargetArchive(tc.name, tc.archive_after_days, wanted)
    st = next((s for s in repo.storages if s.name == tc.name), None)
    have = listings.get(tc.name)
    if st is None or isinstance(have, StorageError) or have is None:
        why = {**repo.unreachable, **repo.damaged}.get(tc.name) or str(have or "not open")
        ta.skipped = why
        return ta
    cutoff = at - tc.archive_after_days * 86400
    old = sorted(p for p, t in newest.items() if t < cutoff)
    recent = sorted(p for p, t in newest.items() if t >= cutoff)
    ta.old_packs = len(old)
    # 1. Presence: every old pack must be here.
    missing = [p for p in old if p not in have]
    try:
        for pid in missing:
            data = await _verified_copy(repo, listings, pid, tc.name)
            if data is None:
                ta.problems.append(f"pack {pid[:16]}: no target holds a copy that matches its name")
                continue
            if not dry_run:
                await st.put(pack_object_name(pid), data)
                if hashlib.sha256(await st.get(pack_object_name(pid))).hexdigest() != pid:
                    raise IntegrityError(f"target '{tc.name}': read-back of pack {pid[:16]} does not match")
            ta.copied += 1
            ta.copied_bytes += len(data)
            have[pid] = ObjectInfo(pack_object_name(pid), len(data),
                                   storage_class=STANDARD if has_classes(st) else None)
        if wanted is None or not has_classes(st):
            return ta
        # 2. Class: old packs to the archive class; recent ones back to STANDARD where no thaw is needed.
        to_cold = [p for p in old if p in have and have[p].storage_class != wanted]
        for p in old:
            if p in have and have[p].storage_class == wanted:
                ta.already += 1
                ta.already_bytes += have[p].size
        to_hot = [p for p in recent if p in have and (have[p].storage_class or STANDARD) != STANDARD
                  and not needs_thaw(have[p].storage_class)]
        ta.frozen_recent = sum(1 for p in recent if p in have and needs_thaw(have[p].storage_class))
        if not dry_run:
            await _set_classes(st, [(p, wanted) for p in to_cold] + [(p, STANDARD) for p in to_hot])
            after = {pack_id_from_name(o.name): o for o in await st.list(DATA_PREFIX)}
            for p, cls in [(p, wanted) for p in to_cold] + [(p, STANDARD) for p in to_hot]:
                got = after.get(p)
                if got is None or got.size != have[p].size or got.storage_class != cls:
                    found = "missing" if got is None else f"{got.storage_class}, {got.size} bytes"
                    ta.problems.append(f"pack {p[:16]}: expected {cls}, {have[p].size} bytes after the change; "
                                       f"found {found}")
        ta.moved, ta.moved_bytes = len(to_cold), sum(have[p].size for p in to_cold)
        ta.returned, ta.returned_bytes = len(to_hot), sum(have[p].size for p in to_hot)
    except StorageError as exc:  # it went away meanwhile: the other targets still get theirs
        ta.skipped = str(exc)
    return ta


async def _set_classes(st: Storage, changes: list[tuple[str, str]]) -> None:
    sem = asyncio.Semaphore(_PARALLEL)

    async def one(pid: str, cls: str) -> None:
        async with sem:
            await st.set_storage_class(pack_object_name(pid), cls)  # type: ignore[attr-defined]

    results = await asyncio.gather(*(one(p, c) for p, c in changes), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


async def _verified_copy(repo: Repository, listings: dict[str, dict[str, ObjectInfo] | StorageError],
                         pid: str, dest: str) -> bytes | None:
    """The pack from a target whose copy matches its SHA-256 name (readable classes first), or None."""
    name = pack_object_name(pid)
    holders = [s for s in repo.storages if s.name != dest and isinstance(listings.get(s.name), dict)
               and pid in listings[s.name]]  # type: ignore[operator]
    holders.sort(key=lambda s: needs_thaw(listings[s.name][pid].storage_class))  # type: ignore[index]
    for src in holders:
        try:
            data = await src.get(name)
        except BackstopError:
            continue
        if hashlib.sha256(data).hexdigest() == pid:
            return data
    return None


# -- thaw -----------------------------------------------------------------------------------------------------


@dataclass
class ThawReport:
    """What `archive thaw` asked for on one target."""

    snapshot: str
    target: str | None
    tier: str
    days: int
    objects: int = 0
    bytes: int = 0
    started: int = 0
    running: int = 0  # a thaw was already under way
    ready: int = 0  # already readable
    expected: str = ""  # AWS's published time for this tier and class
    error: str | None = None
    note: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


async def thaw(ctx: EngineContext, snapshot: str, tier: str = "Standard", target: str | None = None,
               days: int = 7) -> ThawReport:
    """Ask S3 to make readable copies (restore_object) of the archived packs a restore of ``snapshot`` needs."""
    if tier not in THAW_TIERS:
        raise UsageError(f"--tier {tier}: expected one of {', '.join(THAW_TIERS)}")
    if target is not None:
        ctx.config.target(target)
    snap = await ctx.find_snapshot(snapshot)
    async with run_job(ctx.bus, "thaw", snap.db, f"thaw of snapshot {snap.short_id} ({tier})") as job:
        repo = await ctx.open_repository(require_all=False)
        sources = ReadSources.for_targets(repo.storages, ctx.config.targets)
        stores = [s for s in sources.storages if target is None or s.name == target]
        if target is not None and not stores:
            why = {**repo.unreachable, **repo.damaged}.get(target, "it did not open")
            raise StorageError(target, f"cannot thaw there: {why}")
        manifest = await repo.read_manifest(snap.id)
        frozen = await FrozenCopies.scan(stores)
        index = await repo.load_index(common=False, avoid=await quarantine.load(repo) | frozen.packs())
        needed = packs_of(manifest.files, index)
        await frozen.drop_thawed(stores, needed)
        rep = ThawReport(snap.id, None, tier, days)
        if target is None:
            # Only what no target can serve needs a thaw, on the best target holding it.
            wanted = {p for p in needed if stores and all(p in frozen.by_target.get(s.name, {}) for s in stores)}
        else:
            wanted = set(needed) & set(frozen.by_target.get(target, {}))
        if not wanted:
            rep.note = "nothing to thaw: every object the snapshot needs is readable on " + (
                f"target '{target}'" if target else "some target")
            job.result = rep.to_json()
            return rep
        st = next(s for s in stores if wanted & set(frozen.by_target.get(s.name, {})))
        held = frozen.by_target[st.name]
        classes = sorted({held[p][0] for p in wanted})
        if any(tier not in THAW_TIMES[c] for c in classes):
            raise UsageError(f"--tier {tier} is not offered for {'/'.join(classes)}; use "
                             f"{' or '.join(THAW_TIMES['DEEP_ARCHIVE'])}")
        rep.target, rep.objects = st.name, len(wanted)
        rep.bytes = sum(held[p][1] for p in wanted)
        rep.expected = "; ".join(f"{c} {tier}: {THAW_TIMES[c][tier]}" for c in classes)
        for pid in sorted(wanted):
            try:
                state = await st.thaw(pack_object_name(pid), days, tier)  # type: ignore[attr-defined]
            except StorageError as exc:
                rep.error = str(exc)
                break  # the server refuses thaws (or is down): one line, not one per object
            setattr(rep, state, getattr(rep, state) + 1)
        job.result = rep.to_json()
        if rep.error:
            raise StorageError(st.name, f"thaw of snapshot {snap.short_id} stopped after "
                                        f"{rep.started + rep.running + rep.ready} of {rep.objects} object(s): "
                                        f"{rep.error.removeprefix(f'target {st.name!r}: ')}")
        return rep
