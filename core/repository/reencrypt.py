"""Re-encryption: move everything sealed with old DEK versions to the current one (FORMAT.md 5.5).

Runs under the exclusive lock (the caller takes it), in commit order, so an
interruption at any point leaves every snapshot restorable and a second run
finishes the job:

1. packs holding a blob or a header sealed with an old version are read
   (whole, checked against their id), their still-needed chunks re-sealed
   with the current key (compressed bytes kept, see ``reseal_chunk``) into
   new packs, uploaded and read back on every target; chunks no snapshot
   needs are dropped on the way;
2. one new index object lists the untouched packs and the new ones; the old
   index objects are deleted;
3. each manifest sealed with an old version is sealed again with
   ``supersedes`` naming its old id, written and read back, then the old
   manifest is deleted. The snapshot id changes (it is the SHA-256 of the
   sealed manifest); ``on_renamed(old, new)`` lets the caller keep the
   catalog and the audit log in step. A run interrupted between the two
   steps leaves both manifests; the next run (and ``catalog rebuild``)
   resolves that through ``supersedes``;
4. audit log copies and operator records sealed with an old version are
   sealed again in place;
5. the replaced packs are deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from core.errors import IntegrityError, RepositoryError, StorageError
from core.repository.crypto import envelope_key_version, open_object, reseal_chunk, seal_object
from core.repository.gc import (
    live_chunks,
    pack_listings,
    read_all_manifests,
    referenced_packs,
    refuse_damaged_index,
    replace_index,
    rewrite_marks,
)
from core.repository.index import Index, IndexFile, Location
from core.repository.keyring import bounded_gather, envelope_version, pack_header_version
from core.repository.keys import DataKey
from core.repository.manifest import SNAPSHOT_PREFIX
from core.repository.packs import Pack, PackBuilder, pack_object_name
from core.repository.repo import RECORD_KINDS, Repository

RenameFn = Callable[[str, str], Awaitable[None]]
ProgressFn = Callable[[int, int], None]


@dataclass
class ReencryptReport:
    """What a re-encryption moved."""

    versions: list[int]
    packs_rewritten: int = 0
    chunks_resealed: int = 0
    chunks_dropped: int = 0
    bytes_written: int = 0
    index_objects_replaced: int = 0
    snapshots: dict[str, str] = field(default_factory=dict)  # old id -> new id
    records: int = 0  # audit log copies and operator records re-sealed

    def to_json(self) -> dict[str, object]:
        return {"versions": self.versions, "packs_rewritten": self.packs_rewritten,
                "chunks_resealed": self.chunks_resealed, "chunks_dropped": self.chunks_dropped,
                "bytes_written": self.bytes_written, "index_objects_replaced": self.index_objects_replaced,
                "snapshots": self.snapshots, "records": self.records}


def _reseal_blobs(data: bytes, blobs: list[tuple[bytes, Location]], keys: dict[int, DataKey],
                  current: DataKey) -> list[tuple[bytes, bytes, int]]:
    """(cid, sealed blob, raw length) for each blob, under ``current`` (runs in a worker thread)."""
    view = memoryview(data)
    out = []
    for cid, loc in blobs:
        blob = view[loc.offset: loc.offset + loc.length]
        old = keys.get(loc.key_version)
        if old is None:
            raise IntegrityError(f"chunk {cid.hex()[:16]} needs data key version {loc.key_version}, "
                                 "which is not in keys/")
        out.append((cid, reseal_chunk(blob, cid, old, current), loc.raw_length))
    return out


async def _fetch_pack(repo: Repository, pid: str) -> bytes:
    errors = []
    for st in repo.storages:
        try:
            data = await st.get(pack_object_name(pid))
            if hashlib.sha256(data).hexdigest() != pid:
                raise IntegrityError(f"target '{st.name}': pack {pid[:16]} is damaged (checksum mismatch)")
            return data
        except (StorageError, IntegrityError) as exc:
            errors.append(str(exc))
    raise IntegrityError(f"no intact copy of pack {pid[:16]}: " + "; ".join(errors))


async def _ship(repo: Repository, pack: Pack, new_index: IndexFile, report: ReencryptReport) -> None:
    await repo.put_all(pack.name, pack.data)
    await repo.verify_all(pack.name, pack.id)
    new_index.add_pack(pack)
    report.bytes_written += len(pack.data)


async def reencrypt(repo: Repository, versions: set[int], pool: ThreadPoolExecutor, on_renamed: RenameFn,
                    on_progress: ProgressFn | None = None) -> ReencryptReport:
    """Move every chunk, header, index, manifest and audit copy sealed with ``versions`` to the current key."""
    current = repo.key
    if current.version in versions:
        raise RepositoryError(f"data key {current.version} is the current key; "
                              "rotate (`backstop key rotate --dek`) first")
    report = ReencryptReport(sorted(versions))
    loop = asyncio.get_running_loop()

    manifests = await read_all_manifests(repo)
    # Finish an interrupted run: a new manifest and the old one it supersedes both exist.
    for sid, m in list(manifests.items()):
        if m.supersedes and m.supersedes in manifests:
            await asyncio.gather(*(st.delete(f"{SNAPSHOT_PREFIX}{m.supersedes}") for st in repo.storages))
            del manifests[m.supersedes]
            report.snapshots[m.supersedes] = sid
            await on_renamed(m.supersedes, sid)
    live = live_chunks(manifests)
    index: Index = await repo.load_index(common=False)
    refuse_damaged_index(index)
    listings = await pack_listings(repo)
    referenced_packs(index, live, listings, repo)  # refuses on a damaged repository

    # 1. packs to rewrite: an old blob version (from the index) or an old header version.
    header_versions = dict(zip(sorted(index.packs), await bounded_gather(
        [pack_header_version(repo, p, index.packs[p]) for p in sorted(index.packs)]), strict=True))
    rewrite = {loc.pack_id for loc in index.chunks.values() if loc.key_version in versions}
    rewrite |= {p for p, v in header_versions.items() if v in versions}
    by_pack: dict[str, list[tuple[bytes, Location]]] = defaultdict(list)
    for cid, loc in index.chunks.items():
        if loc.pack_id in rewrite:
            if cid in live:
                by_pack[loc.pack_id].append((cid, loc))
            else:
                report.chunks_dropped += 1
    total = sum(index.packs[p] for p in rewrite)
    done = 0
    new_index = IndexFile()
    builder = PackBuilder(repo.params.pack_target)
    for pid in sorted(rewrite):
        blobs = sorted(by_pack.get(pid, []), key=lambda b: b[1].offset)
        if blobs:
            data = await _fetch_pack(repo, pid)
            sealed = await loop.run_in_executor(pool, _reseal_blobs, data, blobs, repo.keys, current)
            for cid, blob, raw in sealed:
                builder.add(cid, current.version, blob, raw)
                report.chunks_resealed += 1
                if builder.full:
                    await _ship(repo, builder.finish(current), new_index, report)
        report.packs_rewritten += 1
        done += index.packs[pid]
        if on_progress:
            on_progress(done, total)
    if len(builder):
        await _ship(repo, builder.finish(current), new_index, report)

    # 2. one index without the rewritten packs, with the new ones (also re-seals old index objects).
    stale_index = set(index.files)
    old_index_versions = await bounded_gather([envelope_version(repo, n) for n in sorted(stale_index)])
    if rewrite or any(v in versions for v in old_index_versions):
        report.index_objects_replaced = await replace_index(repo, index, rewrite, new_index)

    # 3. manifests.
    for sid, m in manifests.items():
        if await envelope_version(repo, f"{SNAPSHOT_PREFIX}{sid}") not in versions:
            continue
        new_sid, name, data = replace(m, supersedes=sid).seal(current)
        await repo.put_all(name, data)
        await repo.verify_all(name, new_sid)
        await on_renamed(sid, new_sid)
        await asyncio.gather(*(st.delete(f"{SNAPSHOT_PREFIX}{sid}") for st in repo.storages))
        report.snapshots[sid] = new_sid

    # 4. audit and operator records: named by position or name, not by hash, so replaced in place.
    for prefix, kind in RECORD_KINDS.items():
        for st in repo.storages:
            for obj in await st.list(prefix):
                data = await st.get(obj.name)
                if envelope_key_version(data) in versions:
                    await st.put(obj.name, seal_object(open_object(data, kind, repo.keys), kind, current))
                    report.records += 1

    # Marks of packs prune will delete (17.2): sealed again with the current key; the packs rewritten above
    # leave them, since they are deleted below.
    marks = await repo.load_marks()
    if marks.files:
        await rewrite_marks(repo, marks, rewrite)

    # 5. the replaced packs: nothing lists or needs them any more.
    for pid in sorted(rewrite):
        name = pack_object_name(pid)
        await asyncio.gather(*(st.delete(name) for st, lst in zip(repo.storages, listings, strict=True) if pid in lst))
    return report
