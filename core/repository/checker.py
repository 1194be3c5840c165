"""`check`: is every snapshot on a target complete and intact?

Structural check: config, keys, index and manifests decrypt and match their
names; every chunk a snapshot needs is indexed; every indexed pack exists
with the recorded size. With ``read_data`` every pack is fetched, its SHA-256
compared with its name, and every chunk decrypted and matched with its id.
Damaged objects are traced to the snapshots they affect.
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from core.errors import BackstopError, IntegrityError, ObjectNotFound, StorageError, TargetUnreachable
from core.repository.crypto import open_chunk
from core.repository.index import INDEX_PREFIX, Index, IndexFile
from core.repository.manifest import SNAPSHOT_PREFIX, Manifest
from core.repository.packs import DATA_PREFIX, pack_id_from_name, pack_object_name, read_pack_header
from core.repository.repo import Repository
from core.storage.base import Storage


@dataclass
class TargetReport:
    """What `check` found on one target."""

    target: str
    objects_checked: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # snapshot id -> problems that make it unrestorable from this target
    affected: dict[str, list[str]] = field(default_factory=dict)
    snapshots: list[str] = field(default_factory=list)
    # Set when the target did not answer: nothing about its data is known (not damage).
    unreachable: str | None = None
    # Packs found damaged, missing or of the wrong size here (pack id -> why): quarantined.
    bad_packs: dict[str, str] = field(default_factory=dict)
    # Packs read in full and found intact here (read-data only).
    intact_packs: set[str] = field(default_factory=set)
    # snapshot id -> "db finished_at", for messages naming snapshots this target lacks.
    described: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def affect(self, sid: str, message: str) -> None:
        """Record a problem that makes snapshot ``sid`` unrestorable from this target."""
        self.problems.append(message)
        self.affected.setdefault(sid, []).append(message)


def _short(name: str) -> str:
    head, _, tail = name.rpartition("/")
    return f"{head}/{tail[:16]}…" if len(tail) > 16 else name


def _verify_pack(data: bytes, pack_id: str, expected: dict[bytes, tuple[int, int, int]],
                 repo: Repository) -> tuple[str | None, set[bytes] | None]:
    """(problem, damaged chunks) for one pack: (None, None) when intact, damaged None meaning all of them.

    Each blob is checked on its own, so damage is traced to the snapshots
    that need a damaged chunk, not to every snapshot using the pack.
    """
    problem = None if hashlib.sha256(data).hexdigest() == pack_id else "checksum mismatch"
    try:
        header = {b.id: b for b in read_pack_header(data, repo.keys)}
    except IntegrityError as exc:
        return f"{problem + ', ' if problem else ''}{exc}", None
    bad: set[bytes] = set()
    first = None
    for cid, (kv, off, ln) in expected.items():
        entry = header.get(cid)
        key = repo.keys.get(kv)
        if entry is None or (entry.offset, entry.length) != (off, ln):
            why = f"chunk {cid.hex()[:16]} is not where the index says"
        elif key is None:
            why = f"chunk {cid.hex()[:16]} needs data key version {kv}, which is missing"
        else:
            try:
                open_chunk(memoryview(data)[off: off + ln], cid, key)
                continue
            except IntegrityError as exc:
                why = f"chunk {cid.hex()[:16]}: {exc}"
        bad.add(cid)
        first = first or why
    if bad:
        return f"{problem + ', ' if problem else ''}{len(bad)} chunk(s) damaged, first: {first}", bad
    return problem, (set() if problem else None)


async def check_target(repo: Repository, st: Storage, read_data: bool, pool: ThreadPoolExecutor,
                       on_progress: Callable[[int, int], None] | None = None,
                       quarantined: frozenset[str] | set[str] = frozenset()) -> TargetReport:
    """Check one target's copy of the repository (``quarantined`` packs give way to other copies of a chunk)."""
    rep = TargetReport(st.name)
    try:
        await _check(repo, st, read_data, pool, rep, on_progress, quarantined)
    except TargetUnreachable as exc:
        rep.unreachable = str(exc)
        rep.problems.append(str(exc))
    except StorageError as exc:
        rep.problems.append(str(exc))
    return rep


async def _check(repo: Repository, st: Storage, read_data: bool, pool: ThreadPoolExecutor, rep: TargetReport,
                 on_progress: Callable[[int, int], None] | None, quarantined: frozenset[str] | set[str]) -> None:
    where = f"target '{st.name}'"
    # The target must open on its own: if the others are lost, this is all there is.
    rep.problems.extend(await repo.verify_identity(st))
    # Index objects.
    index = Index()
    damaged_index: list[str] = []
    for obj in await st.list(INDEX_PREFIX):
        rep.objects_checked += 1
        data = await st.get(obj.name)
        rep.bytes_read += len(data)
        if hashlib.sha256(data).hexdigest() != obj.name[len(INDEX_PREFIX):]:
            damaged_index.append(f"{where}: {_short(obj.name)} is damaged (checksum mismatch)")
            continue
        try:
            index.merge(obj.name, IndexFile.open(data, repo.keys), quarantined)
        except BackstopError as exc:
            damaged_index.append(f"{where}: {_short(obj.name)} cannot be read: {exc}")
    for msg in damaged_index:
        rep.problems.append(f"{msg}; the snapshots it affects are listed below; `backstop repair index` "
                            "rebuilds what it listed from the pack headers")
    pack_sizes = index.packs

    # Packs present.
    present = {pack_id_from_name(o.name): o.size for o in await st.list(DATA_PREFIX)}
    bad_packs = rep.bad_packs
    for pid, size in pack_sizes.items():
        if pid not in present:
            bad_packs[pid] = "missing"
        elif present[pid] != size:
            bad_packs[pid] = f"of the wrong size ({present[pid]} bytes, expected {size})"
    unreferenced = set(present) - set(pack_sizes)
    if unreferenced:
        why = ("listed by no readable index; `backstop repair index` re-reads their headers" if damaged_index else
               "referenced by no index (left by an interrupted backup); prune removes them after the grace period")
        rep.notes.append(f"{where}: {len(unreferenced)} pack(s) {why}")

    # Manifests.
    manifests: dict[str, Manifest] = {}
    for obj in await st.list(SNAPSHOT_PREFIX):
        sid = obj.name[len(SNAPSHOT_PREFIX):]
        rep.objects_checked += 1
        data = await st.get(obj.name)
        rep.bytes_read += len(data)
        if hashlib.sha256(data).hexdigest() != sid:
            rep.affect(sid, f"{where}: {_short(obj.name)} is damaged (checksum mismatch)")
            continue
        try:
            manifests[sid] = Manifest.open(data, repo.keys)
        except BackstopError as exc:
            rep.affect(sid, f"{where}: {_short(obj.name)} cannot be read: {exc}")
    rep.snapshots = sorted(manifests)
    rep.described = {sid: f"{m.db} {m.finished_at}" for sid, m in manifests.items()}
    for sid, m in sorted(manifests.items()):
        missing = [c for c in m.chunk_ids() if c not in index.chunks]
        if missing:
            hint = ("an index object above is damaged: `backstop repair index`" if damaged_index
                    else "run `backstop repair index`")
            rep.affect(sid, f"{where}: snapshot {sid[:8]} ({m.db} {m.finished_at}) needs {len(missing)} chunk(s) "
                            f"that no readable index lists; {hint}")

    # Pack contents.
    bad_chunks: dict[str, set[bytes]] = {}  # pack -> its damaged chunks, where the damage is that precise
    if read_data:
        by_pack: dict[str, dict[bytes, tuple[int, int, int]]] = {}
        for cid, loc in index.chunks.items():
            by_pack.setdefault(loc.pack_id, {})[cid] = (loc.key_version, loc.offset, loc.length)
        todo = [p for p in pack_sizes if p not in bad_packs]
        total = sum(pack_sizes[p] for p in todo)
        done = 0
        loop = asyncio.get_running_loop()
        for pid in todo:
            try:
                data = await st.get(pack_object_name(pid))
            except ObjectNotFound:
                bad_packs[pid] = "missing"  # deleted since the listing
                continue
            rep.objects_checked += 1
            rep.bytes_read += len(data)
            done += len(data)
            problem, chunks = await loop.run_in_executor(pool, _verify_pack, data, pid, by_pack.get(pid, {}), repo)
            if problem:
                bad_packs[pid] = f"damaged ({problem})"
                if chunks is not None:
                    bad_chunks[pid] = chunks
            else:
                rep.intact_packs.add(pid)
            if on_progress:
                on_progress(done, total)
    else:
        rep.objects_checked += len(pack_sizes)

    # Trace damage to snapshots.
    if bad_packs:
        hits: dict[str, list[str]] = {pid: [] for pid in bad_packs}
        for sid, m in sorted(manifests.items()):
            for pid in {index.chunks[c].pack_id for c in m.chunk_ids()
                        if c in index.chunks and index.chunks[c].pack_id in bad_packs
                        and (index.chunks[c].pack_id not in bad_chunks or c in bad_chunks[index.chunks[c].pack_id])}:
                hits[pid].append(sid)
        for pid, why in sorted(bad_packs.items()):
            who = ", ".join(f"{s[:8]} ({manifests[s].db} {manifests[s].finished_at})" for s in hits[pid]) or "none"
            msg = f"{where}: {_short(pack_object_name(pid))} is {why}; affects snapshots: {who}"
            rep.problems.append(msg)
            for s in hits[pid]:
                rep.affected.setdefault(s, []).append(msg)
