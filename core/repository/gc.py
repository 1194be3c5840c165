"""Forgetting snapshots and garbage collection (FORMAT.md 17.1).

``forget`` deletes snapshot manifests; ``prune`` then deletes the packs no
remaining snapshot needs. Prune runs under the repository's exclusive lock
(the caller takes it) and in this order, so that a crash at any point loses
nothing a snapshot needs:

1. read every manifest on every target: the live chunks; a manifest that
   cannot be read stops prune (what it needs is unknown);
2. every live chunk must be indexed and its pack present on every target,
   else prune refuses (deleting around a damaged repository could make it
   worse);
3. a pack is deleted only if no live chunk is in it **and** every copy of it
   is older than the grace period (default 24 h): a backup that is still
   uploading, or crashed before writing its index, is never touched;
4. the index objects are first replaced by one that no longer lists the
   doomed packs (written and read back on every target), then the old index
   objects are deleted, and only then the packs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from core.errors import RepositoryError
from core.repository import quarantine
from core.repository.index import INDEX_PREFIX, Index, IndexFile
from core.repository.manifest import SNAPSHOT_PREFIX, Manifest
from core.repository.packs import DATA_PREFIX, pack_id_from_name, pack_object_name
from core.repository.repo import Repository
from core.storage.base import ObjectInfo

DEFAULT_GRACE_S = 24 * 3600


async def read_all_manifests(repo: Repository) -> dict[str, Manifest]:
    """Every snapshot on any target, decrypted (a manifest no target can deliver raises)."""
    names: set[str] = set()
    for st in repo.storages:
        names |= await repo.snapshot_names(st)
    return {sid: await repo.read_manifest(sid) for sid in sorted(names)}


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


async def replace_index(repo: Repository, index: Index, drop: set[str], add: IndexFile | None = None) -> int:
    """Write one index object listing ``index`` minus the ``drop`` packs (plus ``add``), then delete the old ones.

    Only packs present on every target are listed (like a backup's own
    index, 12.3). Returns how many old index objects were replaced.
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
    old: set[str] = set()
    for st in repo.storages:
        old |= {o.name for o in await st.list(INDEX_PREFIX)}
    name = None
    if new.packs:
        name, data = new.seal(repo.key)
        await repo.put_all(name, data)
        await repo.verify_all(name, name[len(INDEX_PREFIX):])
    for n in sorted(old - {name}):
        await asyncio.gather(*(st.delete(n) for st in repo.storages))
    return len(old - {name})


@dataclass
class PruneReport:
    """What prune found and did."""

    snapshots: int
    packs_total: int
    packs_deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0  # per target
    packs_too_young: int = 0  # unreferenced, but within the grace period
    index_objects_replaced: int = 0
    dry_run: bool = False
    leftovers: list[str] = field(default_factory=list)  # temp files, unfinished uploads, stale locks removed

    def to_json(self) -> dict[str, object]:
        return {"snapshots": self.snapshots, "packs_total": self.packs_total, "packs_deleted": len(self.packs_deleted),
                "bytes_freed": self.bytes_freed, "packs_too_young": self.packs_too_young,
                "index_objects_replaced": self.index_objects_replaced, "dry_run": self.dry_run,
                "leftovers_removed": len(self.leftovers)}


async def prune(repo: Repository, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False,
                now: float | None = None) -> PruneReport:
    """Delete packs no snapshot needs and that are older than ``grace_s`` (caller holds the exclusive lock)."""
    at = time.time() if now is None else now
    manifests = await read_all_manifests(repo)
    index = await repo.load_index(common=False)
    refuse_damaged_index(index)
    listings = await pack_listings(repo)
    needed = referenced_packs(index, live_chunks(manifests), listings, repo)
    every_pack = set(index.packs).union(*(set(lst) for lst in listings))
    report = PruneReport(len(manifests), len(every_pack), dry_run=dry_run)
    doomed: set[str] = set()
    for pid in sorted(every_pack - set(needed)):
        # Every copy must be old: an unknown age counts as new.
        ages = [at - _mtime(lst[pid], at) for lst in listings if pid in lst]
        if not ages:
            continue  # listed by an index but stored nowhere: nothing to delete
        if min(ages) >= grace_s:
            doomed.add(pid)
        else:
            report.packs_too_young += 1
    report.packs_deleted = sorted(doomed)
    first = listings[0] if listings else {}
    report.bytes_freed = sum(first[p].size for p in doomed if p in first)
    if dry_run:
        return report
    if doomed & set(index.packs):
        report.index_objects_replaced = await replace_index(repo, index, doomed)
    for pid in sorted(doomed):
        name = pack_object_name(pid)
        await asyncio.gather(*(st.delete(name) for st, lst in zip(repo.storages, listings, strict=True) if pid in lst))
    # A deleted pack needs no quarantine record any more.
    held = await quarantine.load(repo)
    if held & doomed:
        await quarantine.release(repo, held & doomed)
    report.leftovers = await remove_leftovers(repo, at - grace_s)
    return report


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


async def forget(repo: Repository, sids: list[str]) -> list[str]:
    """Delete snapshot manifests from every target; returns the ids removed.

    A manifest that replaced another (re-encryption, 10) takes a leftover of
    the one it replaced along, so the snapshot cannot come back through
    ``catalog rebuild``.
    """
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
            await asyncio.gather(*(st.delete(f"{SNAPSHOT_PREFIX}{s}") for st in repo.storages))
        removed.append(sid)
    return removed
