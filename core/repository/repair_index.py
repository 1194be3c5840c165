"""`backstop repair index`: rebuild what damaged or lost index objects listed, from the packs' own headers.

Every pack carries an encrypted header listing its blobs (FORMAT.md 8.3), so
the index is redundant with the packs. Repair, under the exclusive lock:

1. read every index object from every target; a copy that is damaged on one
   target while another target holds it intact is rewritten from the intact
   one (checked by its SHA-256 first);
2. every pack stored on any target that no intact index object lists has its
   header read (two ranged reads, not the whole pack) from a target whose
   copy parses; their blobs go into one new index object, written to every
   target and read back;
3. only then are index objects that no target holds intact deleted;
4. a pack present on some targets only, or whose header no copy delivers,
   is put in quarantine (a backup must not deduplicate against it).

Like restic's `repair index`: nothing a snapshot needs is ever deleted, and
running it again finds nothing to do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from core.errors import BackstopError, StorageError
from core.repository import quarantine
from core.repository.index import INDEX_PREFIX, IndexFile, Location
from core.repository.packs import DATA_PREFIX, fetch_pack_header, pack_id_from_name
from core.repository.repo import Repository, sha256_hex
from core.storage.base import Storage
from core.storage.immutability import delete_where_allowed


@dataclass
class IndexRepairReport:
    """What `repair index` found and did."""

    index_objects: int = 0
    damaged_index: list[str] = field(default_factory=list)  # deleted: no target held them intact
    copies_rewritten: list[str] = field(default_factory=list)  # "<target>: <name>"
    packs_read: int = 0
    packs_indexed: int = 0
    chunks_indexed: int = 0
    new_index: str | None = None
    quarantined: list[str] = field(default_factory=list)
    unreadable_packs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"index_objects": self.index_objects, "damaged_index": self.damaged_index,
                "copies_rewritten": self.copies_rewritten, "packs_read": self.packs_read,
                "packs_indexed": self.packs_indexed, "chunks_indexed": self.chunks_indexed,
                "new_index": self.new_index, "quarantined": self.quarantined,
                "unreadable_packs": self.unreadable_packs}


async def repair_index(repo: Repository, dry_run: bool = False) -> IndexRepairReport:
    """Rebuild the index from pack headers where index objects are damaged or missing (caller holds the lock)."""
    rep = IndexRepairReport()
    stores = repo.storages
    index_lists = await asyncio.gather(*(st.list(INDEX_PREFIX) for st in stores))
    names = sorted(set().union(*({o.name for o in lst} for lst in index_lists)))
    rep.index_objects = len(names)
    listed: set[str] = set()
    for name in names:
        digest = name[len(INDEX_PREFIX):]
        intact: bytes | None = None
        bad: list[Storage] = []
        for st, lst in zip(stores, index_lists, strict=True):
            if name not in {o.name for o in lst}:
                continue
            try:
                data = await st.get(name)
            except StorageError:
                bad.append(st)
                continue
            if sha256_hex(data) == digest:
                try:
                    f = IndexFile.open(data, repo.keys)
                except BackstopError:
                    bad.append(st)
                    continue
                if intact is None:
                    intact = data
                    listed |= set(f.packs)
            else:
                bad.append(st)
        if intact is None:
            rep.damaged_index.append(name)
            continue
        for st in bad:
            rep.copies_rewritten.append(f"{st.name}: {name}")
            if not dry_run:
                await st.put(name, intact)

    pack_lists = await asyncio.gather(*(st.list(DATA_PREFIX) for st in stores))
    where: dict[str, dict[str, int]] = {}  # pack id -> target -> size
    for st, lst in zip(stores, pack_lists, strict=True):
        for o in lst:
            where.setdefault(pack_id_from_name(o.name), {})[st.name] = o.size
    by_name = {st.name: st for st in stores}
    new = IndexFile()
    findings: list[quarantine.Finding] = []
    for pid in sorted(set(where) - listed):
        rep.packs_read += 1
        entries = None
        for target, size in where[pid].items():
            try:
                entries = await fetch_pack_header(by_name[target], pid, size, repo.keys)
                new.packs[pid] = size
                break
            except BackstopError as exc:
                findings.append(quarantine.Finding(pid, target, f"header unreadable ({exc})"))
        if entries is None:
            rep.unreadable_packs.append(pid)
            continue
        for e in entries:
            new.chunks[e.id] = Location(pid, e.key_version, e.offset, e.length, e.raw_length)
        rep.packs_indexed += 1
        rep.chunks_indexed += len(entries)
        for st in stores:
            if st.name not in where[pid]:
                findings.append(quarantine.Finding(pid, st.name, "missing"))
    rep.quarantined = sorted({f.pack_id for f in findings})
    if dry_run:
        return rep
    if new.packs:
        name, data = new.seal(repo.key)
        await repo.put_all(name, data)
        await repo.verify_all(name, name[len(INDEX_PREFIX):])
        rep.new_index = name
    if findings:
        await quarantine.add(repo, findings, "repair index")
    # Last: what the damaged objects listed is indexed again (or was never readable).
    for name in rep.damaged_index:
        await delete_where_allowed(stores, name)  # an append-only target keeps its copy (FORMAT.md 23)
    return rep
