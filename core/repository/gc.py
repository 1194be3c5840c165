"""Forgetting snapshots and garbage collection (FORMAT.md 17).

``forget`` deletes snapshot manifests; ``prune`` then deletes the packs no
remaining snapshot needs, in two phases so that a backup or a restore
running at the same time never loses a chunk (17.2): a pack nothing needs
is first *marked* (core.repository.marks) and dropped from the index, and
deleted by a later prune once the mark is older than the grace period and
still nothing needs it. Prune holds the ``prune`` lock (beside backups, not
beside another prune; the caller takes it). Its steps, in this order, so
that a crash at any point loses nothing a snapshot needs:

1. read every manifest on every target: the live chunks; a manifest that
   cannot be read stops prune (what it needs is unknown);
2. every live chunk must be indexed (or marked) and its pack present on
   every target, else prune refuses (deleting around a damaged repository
   could make it worse);
3. marked packs a snapshot needs again are *rescued*: their entries are
   written back as a new index object;
4. unneeded packs whose every copy is older than the grace period (a backup
   still uploading has written no index yet) are marked now;
5. marks older than the grace period, whose packs no snapshot listed just
   before needs, are *doomed*;
6. the surviving marks are written as one new ``marked/`` object, then the
   index objects listing marked or doomed packs are replaced by one that does
   not (index objects younger than the grace period that list none are left
   alone: a backup may still be reading its own back), then the old marks
   objects are deleted, and only then the doomed packs.
"""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import dataclass, field

from core.errors import RepositoryError
from core.repository import quarantine
from core.repository.index import INDEX_PREFIX, Index, IndexFile
from core.repository.manifest import SNAPSHOT_PREFIX, Manifest
from core.repository.marks import MARKS_PREFIX, MarkedPack, Marks
from core.repository.packs import DATA_PREFIX, pack_id_from_name, pack_object_name
from core.repository.repo import Repository
from core.storage.base import ObjectInfo
from core.storage.immutability import Kept, delete_where_allowed, is_append_only, when, why_kept

DEFAULT_GRACE_S = 24 * 3600


async def read_all_manifests(repo: Repository) -> dict[str, Manifest]:
    """Every snapshot on any target, decrypted (a manifest no target can deliver raises)."""
    names: set[str] = set()
    for st in repo.storages:
        names |= await repo.snapshot_names(st)
    return {sid: await repo.read_manifest(sid) for sid in sorted(names)}


async def _live_chunks(repo: Repository) -> tuple[set[str], dict[bytes, str]]:
    """Every snapshot on any target, and its chunks (chunk id -> one snapshot needing it).

    Read one manifest at a time: holding a thousand of them at once would
    cost hundreds of MiB, the chunk ids alone a fraction of that.
    """
    names: set[str] = set()
    for st in repo.storages:
        names |= await repo.snapshot_names(st)
    live: dict[bytes, str] = {}
    for sid in sorted(names):
        for cid in (await repo.read_manifest(sid)).chunk_ids():
            live.setdefault(cid, sid)
    return names, live


def live_chunks(manifests: dict[str, Manifest]) -> dict[bytes, str]:
    """Chunk id -> one snapshot needing it."""
    out: dict[bytes, str] = {}
    for sid, m in manifests.items():
        for cid in m.chunk_ids():
            out.setdefault(cid, sid)
    return out


async def pack_listings(repo: Repository) -> list[dict[str, ObjectInfo]]:
    """Per target: pack id -> listing entry."""
    lists = await asyncio.gather(*(st.list(DATA_PREFIX) for st in repo.storages))
    return [{pack_id_from_name(o.name): o for o in lst} for lst in lists]


def referenced_packs(index: Index, live: dict[bytes, str], listings: list[dict[str, ObjectInfo]],
                     repo: Repository) -> dict[str, str]:
    """Pack id -> a snapshot that needs it; refuses if a needed chunk or pack is missing anywhere."""
    needed: dict[str, str] = {}
    for cid, sid in live.items():
        loc = index.chunks.get(cid)
        if loc is None:
            raise RepositoryError(
                f"snapshot {sid[:8]} needs chunk {cid.hex()[:16]} that no index lists; "
                "run `backstop check` and repair the repository before deleting anything")
        needed.setdefault(loc.pack_id, sid)
    for st, listing in zip(repo.storages, listings, strict=True):
        for pid, sid in needed.items():
            if pid not in listing:
                raise RepositoryError(
                    f"pack {pid[:16]} needed by snapshot {sid[:8]} is missing on target '{st.name}'; "
                    "run `backstop check` and repair the repository before deleting anything")
    return needed


async def replace_index(repo: Repository, index: Index, drop: set[str], add: IndexFile | None = None,
                        keep: set[str] | frozenset[str] = frozenset()) -> int:
    """Write one index object listing ``index`` minus the ``drop`` packs (plus ``add``), then delete the merged ones.

    Only packs present on every target are listed (like a backup's own
    index, 12.3). Of the index objects merged into ``index``, those named in
    ``keep`` stay unless they list a dropped pack; objects written since
    ``index`` was loaded are never touched. Returns how many were replaced.
    """
    listings = await pack_listings(repo)
    everywhere = set.intersection(*(set(lst) for lst in listings)) if listings else set()
    new = IndexFile()
    for pid, size in index.packs.items():
        if pid not in drop and pid in everywhere:
            new.packs[pid] = size
    for cid, loc in index.chunks.items():
        if loc.pack_id in new.packs:
            new.chunks[cid] = loc
    if add is not None:
        new.packs.update(add.packs)
        new.chunks.update(add.chunks)
    old = {n for n in index.files if n not in keep or index.file_packs.get(n, set()) & drop}
    name = None
    if new.packs:
        name, data = new.seal(repo.key)
        await repo.put_all(name, data)
        await repo.verify_all(name, name[len(INDEX_PREFIX):])
    for n in sorted(old - {name}):
        await delete_where_allowed(repo.storages, n)
    return len(old - {name})


async def rewrite_marks(repo: Repository, marks: Marks, remove: set[str]) -> None:
    """Replace the ``marked/`` objects by one listing every mark but ``remove`` (none at all when nothing is left)."""
    name = await _write_marks(repo, Marks({pid: m for pid, m in marks.packs.items() if pid not in remove}))
    for n in sorted(marks.files - {name}):
        await delete_where_allowed(repo.storages, n)


async def _write_marks(repo: Repository, marks: Marks) -> str | None:
    """Write ``marks`` as one object, read back on every target; None when there is nothing to write."""
    if not marks.packs:
        return None
    name, data = marks.seal(repo.key)
    await repo.put_all(name, data)
    await repo.verify_all(name, name[len(MARKS_PREFIX):])
    return name


def _with_marks(index: Index, marks: Marks) -> Index:
    """``index`` plus the marked packs' chunks where the index has no other copy: what readers see."""
    out = Index(dict(index.chunks), dict(index.packs), set(index.files), dict(index.file_packs))
    marks.fill(out)
    return out


async def _needed_since(repo: Repository, known: set[str], readable: Index, packs: set[str]) -> set[str]:
    """Which of ``packs`` the snapshots written since ``known`` was listed need."""
    names: set[str] = set()
    for st in repo.storages:
        names |= await repo.snapshot_names(st)
    hit: set[str] = set()
    for sid in sorted(names - known):
        for cid in (await repo.read_manifest(sid)).chunk_ids():
            loc = readable.chunks.get(cid)
            if loc is not None and loc.pack_id in packs:
                hit.add(loc.pack_id)
    return hit


async def _young_index_objects(repo: Repository, at: float, grace_s: float) -> set[str]:
    """Index objects some copy of which is younger than the grace period (an unknown age counts as young)."""
    young: set[str] = set()
    for lst in await asyncio.gather(*(st.list(INDEX_PREFIX) for st in repo.storages)):
        young |= {o.name for o in lst if at - _mtime(o, at) < grace_s}
    return young


@dataclass
class PruneReport:
    """What prune found and did."""

    snapshots: int
    packs_total: int
    packs_deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0  # per target
    packs_too_young: int = 0  # unreferenced, but within the grace period
    packs_marked: int = 0  # newly marked for deletion by a later prune (17.2)
    packs_waiting: int = 0  # marked (now or before), kept until their mark is older than the grace period
    packs_rescued: int = 0  # marked before, but a snapshot needs them again: back in the index
    index_objects_replaced: int = 0
    dry_run: bool = False
    leftovers: list[str] = field(default_factory=list)  # temp files, unfinished uploads, stale locks removed
    # FORMAT.md 23: doomed packs kept marked because Object Lock retention still holds them, and until when.
    packs_locked: int = 0
    locked_until: float | None = None  # the latest retention end among them
    append_only_targets: list[str] = field(default_factory=list)  # left untouched (nothing deleted there)

    def immutability_lines(self) -> list[str]:
        """What prune kept because a target may not delete it, for people."""
        lines = []
        if self.packs_locked:
            lines.append(f"{self.packs_locked} unneeded pack(s) are locked (Object Lock) until "
                         f"{when(self.locked_until or 0)} at the latest: kept marked, deleted by a prune after that")
        for name in self.append_only_targets:
            lines.append(f"target '{name}' is append-only: nothing was deleted there (prune it on that host with "
                         f"`backstop prune --append-only-override {name}`)")
        return lines

    def to_json(self) -> dict[str, object]:
        return {"snapshots": self.snapshots, "packs_total": self.packs_total, "packs_deleted": len(self.packs_deleted),
                "bytes_freed": self.bytes_freed, "packs_too_young": self.packs_too_young,
                "index_objects_replaced": self.index_objects_replaced, "packs_marked": self.packs_marked,
                "packs_waiting": self.packs_waiting, "packs_rescued": self.packs_rescued, "dry_run": self.dry_run,
                "leftovers_removed": len(self.leftovers), "packs_locked": self.packs_locked,
                "locked_until": self.locked_until, "append_only_targets": list(self.append_only_targets)}


async def prune(repo: Repository, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False,
                now: float | None = None) -> PruneReport:
    """Mark packs no snapshot needs; delete those marked longer than ``grace_s`` ago (caller holds the prune lock)."""
    at = time.time() if now is None else now
    full, repo = repo, deleting_view(repo)
    if not repo.storages:
        # Every target is append-only: nothing may be deleted anywhere.
        return PruneReport(0, 0, dry_run=dry_run, append_only_targets=[st.name for st in full.storages])
    sids, live = await _live_chunks(repo)
    index = await repo.load_index(common=False, marked=False)
    refuse_damaged_index(index)
    marks = await repo.load_marks()
    listings = await pack_listings(repo)
    readable = _with_marks(index, marks)
    needed = referenced_packs(readable, live, listings, repo)
    del live
    every_pack = set(index.packs).union(marks.packs, *(set(lst) for lst in listings))
    report = PruneReport(len(sids), len(every_pack), dry_run=dry_run,
                         append_only_targets=[st.name for st in full.storages if is_append_only(st)])
    rescued = set(marks.packs) & set(needed)
    newly: dict[str, MarkedPack] = {}
    for pid in sorted(every_pack - set(needed) - set(marks.packs)):
        # Every copy must be old: an unknown age counts as new.
        ages = [at - _mtime(lst[pid], at) for lst in listings if pid in lst]
        if not ages:
            continue  # listed by an index but stored nowhere: nothing to delete
        if min(ages) >= grace_s:
            newly[pid] = MarkedPack(index.packs.get(pid, max(lst[pid].size for lst in listings if pid in lst)), at)
        else:
            report.packs_too_young += 1
    if newly:  # one pass over the index, not one per pack
        for cid, loc in index.chunks.items():
            mark = newly.get(loc.pack_id)
            if mark is not None:
                mark.chunks[cid] = loc
    marked = {pid: m for pid, m in {**marks.packs, **newly}.items() if pid not in rescued}
    doomed = {pid for pid, m in marked.items() if at - m.marked_at >= grace_s}
    if doomed:
        # A backup that loaded the index before these packs were marked may have finished since step 1.
        doomed -= await _needed_since(repo, sids, readable, doomed)
    if doomed:
        # Never try to delete a locked pack before its date: it stays marked until a later prune (FORMAT.md 23).
        locked = await _locked_packs(repo, doomed, listings)
        doomed -= set(locked)
        report.packs_locked = len(locked)
        report.locked_until = max((k.until or 0.0 for k in locked.values()), default=None)
    report.packs_marked, report.packs_rescued = len(newly), len(rescued)
    report.packs_waiting = len(set(marked) - doomed)
    report.packs_deleted = sorted(doomed)
    first = listings[0] if listings else {}
    report.bytes_freed = sum(first[p].size for p in doomed if p in first)
    if dry_run:
        return report
    # New objects go to every target, append-only ones too (so backups count them for deduplication, 12.3);
    # reads above and deletes below are on the targets that may delete.
    repo = full
    if rescued:
        back = marks.as_index(rescued)
        name, data = back.seal(repo.key)
        await repo.put_all(name, data)
        await repo.verify_all(name, name[len(INDEX_PREFIX):])
    survivors = Marks({pid: m for pid, m in marked.items() if pid not in doomed})
    changed_marks = bool(newly or rescued or doomed)
    marks_name = await _write_marks(repo, survivors) if changed_marks else None
    dropped = set(marked) & set(index.packs)  # doomed packs are marked ones
    if dropped:
        young = await _young_index_objects(deleting_view(repo), at, grace_s)
        report.index_objects_replaced = await replace_index(repo, index, dropped, keep=young)
    if changed_marks:
        for n in sorted(marks.files - {marks_name}):
            await delete_where_allowed(repo.storages, n)
    holders = deleting_view(repo).storages
    for pid in sorted(doomed):
        obj = pack_object_name(pid)
        kept = await delete_where_allowed([st for st, lst in zip(holders, listings, strict=True) if pid in lst], obj)
        if kept:  # locked since it was planned (by someone else): unmarked now, the next prune marks it again
            report.packs_deleted.remove(pid)
            report.packs_locked += 1
    # A deleted pack needs no quarantine record any more.
    held = await quarantine.load(repo)
    if held & doomed:
        await quarantine.release(repo, held & doomed)
    report.leftovers = await remove_leftovers(repo, at - grace_s)
    return report


def deleting_view(repo: Repository) -> Repository:
    """``repo`` restricted to the targets Backstop may delete from (append-only ones left out).

    Deciding what is unneeded looks only at these: an append-only target keeps
    forgotten manifests and replaced index objects, which must not count.
    """
    if not any(is_append_only(st) for st in repo.storages):
        return repo
    view = copy.copy(repo)
    view.storages = [st for st in repo.storages if not is_append_only(st)]
    return view


async def _locked_packs(repo: Repository, packs: set[str], listings: list[dict[str, ObjectInfo]]) -> dict[str, Kept]:
    """Of ``packs``, those some target holds under Object Lock retention still: pack id -> the latest lock."""
    locked: dict[str, Kept] = {}
    for pid in sorted(packs):
        obj = pack_object_name(pid)
        found = await asyncio.gather(*(why_kept(st, obj) for st, lst in zip(repo.storages, listings, strict=True)
                                       if pid in lst))
        dated = [k for k in found if k is not None and k.until is not None]
        if dated:
            locked[pid] = max(dated, key=lambda k: k.until or 0.0)
    return locked


def _mtime(obj: ObjectInfo, unknown: float) -> float:
    return obj.mtime if obj.mtime is not None else unknown


def refuse_damaged_index(index: Index) -> None:
    """Deleting around an index object nobody can read could delete what it lists: repair first."""
    if index.damaged:
        name = sorted(index.damaged)[0]
        raise RepositoryError(f"{len(index.damaged)} index object(s) cannot be read from any target (first: "
                              f"{name[:22]}…); run `backstop repair index` before deleting anything")


async def remove_leftovers(repo: Repository, older_than: float) -> list[str]:
    """Debris of crashed processes older than ``older_than``: temp files, unfinished uploads, stale locks."""
    removed: list[str] = []
    for st in repo.storages:
        removed += [f"target '{st.name}': {line}" for line in await st.cleanup_leftovers(older_than)]
    stale = [lk for lk in await repo.locks() if lk["stale"]]
    await repo.remove_locks([str(lk["name"]) for lk in stale])
    removed += [f"stale lock {str(lk['name'])[6:14]} of pid {lk['pid']} on {lk['host']} ({lk['purpose']})"
                for lk in stale]
    return removed


async def locked_snapshots(repo: Repository, sids: list[str]) -> dict[str, Kept]:
    """Of ``sids``, the snapshots whose manifest some target holds under Object Lock retention: sid -> the latest."""
    view = deleting_view(repo)
    out: dict[str, Kept] = {}
    for sid in sids:
        found = await asyncio.gather(*(why_kept(st, f"{SNAPSHOT_PREFIX}{sid}") for st in view.storages))
        dated = [k for k in found if k is not None and k.until is not None]
        if dated:
            out[sid] = max(dated, key=lambda k: k.until or 0.0)
    return out


async def forget(repo: Repository, sids: list[str]) -> list[str]:
    """Delete snapshot manifests from every target; returns the ids removed.

    A manifest that replaced another (re-encryption, 10) takes a leftover of
    the one it replaced along, so the snapshot cannot come back through
    ``catalog rebuild``. A snapshot whose manifest is locked (Object Lock)
    is refused before anything is deleted, naming the date it can go; an
    append-only target keeps its copy (FORMAT.md 23).
    """
    locked = await locked_snapshots(repo, sids)
    if locked:
        sid, kept = next(iter(locked.items()))
        more = f" (and {len(locked) - 1} more)" if len(locked) > 1 else ""
        raise RepositoryError(f"snapshot {sid[:8]}{more} is locked on target '{kept.target}' until "
                              f"{when(kept.until or 0)} (object_lock); forget it after that date")
    removed: list[str] = []
    for sid in sids:
        targets = [sid]
        try:
            m = await repo.read_manifest(sid)
            if m.supersedes:
                targets.append(m.supersedes)
        except RepositoryError:
            pass  # unreadable: still delete it
        for s in targets:
            await delete_where_allowed(repo.storages, f"{SNAPSHOT_PREFIX}{s}")
        removed.append(sid)
    return removed
