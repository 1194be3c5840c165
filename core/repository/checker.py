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

from core.errors import BackstopError, IntegrityError, StorageError
from core.repository.crypto import open_chunk
from core.repository.index import INDEX_PREFIX, IndexFile
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

    @property
    def ok(self) -> bool:
        return not self.problems


def _short(name: str) -> str:
    head, _, tail = name.rpartition("/")
    return f"{head}/{tail[:16]}…" if len(tail) > 16 else name


def _verify_pack(data: bytes, pack_id: str, expected: dict[bytes, tuple[int, int, int]], repo: Repository) -> str | None:
    """Return a problem description, or None when the pack is intact."""
    if hashlib.sha256(data).hexdigest() != pack_id:
        return "checksum mismatch"
    try:
        header = {b.id: b for b in read_pack_header(data, repo.keys)}
        for cid, (kv, off, ln) in expected.items():
            entry = header.get(cid)
            if entry is None or (entry.offset, entry.length) != (off, ln):
                return f"chunk {cid.hex()[:16]} is not where the index says"
            key = repo.keys.get(kv)
            if key is None:
                return f"chunk {cid.hex()[:16]} needs data key version {kv}, which is missing"
            open_chunk(memoryview(data)[off: off + ln], cid, key)
    except IntegrityError as exc:
        return str(exc)
    return None


async def check_target(repo: Repository, st: Storage, read_data: bool, pool: ThreadPoolExecutor,
                       on_progress: Callable[[int, int], None] | None = None) -> TargetReport:
    """Check one target's copy of the repository."""
    rep = TargetReport(st.name)
    try:
        await _check(repo, st, read_data, pool, rep, on_progress)
    except StorageError as exc:
        rep.problems.append(str(exc))
    return rep


async def _check(repo: Repository, st: Storage, read_data: bool, pool: ThreadPoolExecutor, rep: TargetReport,
                 on_progress: Callable[[int, int], None] | None) -> None:
    where = f"target '{st.name}'"
    # The target must open on its own: if the others are lost, this is all there is.
    rep.problems.extend(await repo.verify_identity(st))
    # Index objects.
    chunk_pack: dict[bytes, tuple[str, int, int, int]] = {}
    pack_sizes: dict[str, int] = {}
    for obj in await st.list(INDEX_PREFIX):
        rep.objects_checked += 1
        data = await st.get(obj.name)
        rep.bytes_read += len(data)
        if hashlib.sha256(data).hexdigest() != obj.name[len(INDEX_PREFIX):]:
            rep.problems.append(f"{where}: {_short(obj.name)} is damaged (checksum mismatch)")
            continue
        try:
            f = IndexFile.open(data, repo.keys)
        except BackstopError as exc:
            rep.problems.append(f"{where}: {_short(obj.name)} cannot be read: {exc}")
            continue
        pack_sizes.update(f.packs)
        for cid, loc in f.chunks.items():
            chunk_pack[cid] = (loc.pack_id, loc.key_version, loc.offset, loc.length)

    # Packs present.
    present = {pack_id_from_name(o.name): o.size for o in await st.list(DATA_PREFIX)}
    bad_packs: dict[str, str] = {}
    for pid, size in pack_sizes.items():
        if pid not in present:
            bad_packs[pid] = "missing"
        elif present[pid] != size:
            bad_packs[pid] = f"wrong size ({present[pid]} bytes, expected {size})"
    unreferenced = set(present) - set(pack_sizes)
    if unreferenced:
        rep.notes.append(
            f"{where}: {len(unreferenced)} pack(s) referenced by no index (left by an interrupted backup); "
            "prune removes them after the grace period"
        )

    # Manifests.
    manifests: dict[str, Manifest] = {}
    for obj in await st.list(SNAPSHOT_PREFIX):
        sid = obj.name[len(SNAPSHOT_PREFIX):]
        rep.objects_checked += 1
        data = await st.get(obj.name)
        rep.bytes_read += len(data)
        if hashlib.sha256(data).hexdigest() != sid:
            msg = f"{where}: {_short(obj.name)} is damaged (checksum mismatch)"
            rep.problems.append(msg)
            rep.affected.setdefault(sid, []).append(msg)
            continue
        try:
            manifests[sid] = Manifest.open(data, repo.keys)
        except BackstopError as exc:
            msg = f"{where}: {_short(obj.name)} cannot be read: {exc}"
            rep.problems.append(msg)
            rep.affected.setdefault(sid, []).append(msg)
    rep.snapshots = sorted(manifests)
    for sid, m in manifests.items():
        missing = [c for c in m.chunk_ids() if c not in chunk_pack]
        if missing:
            msg = f"{where}: snapshot {sid[:8]} needs {len(missing)} chunk(s) that no index lists"
            rep.problems.append(msg)
            rep.affected.setdefault(sid, []).append(msg)

    # Pack contents.
    if read_data:
        by_pack: dict[str, dict[bytes, tuple[int, int, int]]] = {}
        for cid, (pid, kv, off, ln) in chunk_pack.items():
            by_pack.setdefault(pid, {})[cid] = (kv, off, ln)
        todo = [p for p in pack_sizes if p not in bad_packs]
        total = sum(pack_sizes[p] for p in todo)
        done = 0
        loop = asyncio.get_running_loop()
        for pid in todo:
            data = await st.get(pack_object_name(pid))
            rep.objects_checked += 1
            rep.bytes_read += len(data)
            done += len(data)
            problem = await loop.run_in_executor(pool, _verify_pack, data, pid, by_pack.get(pid, {}), repo)
            if problem:
                bad_packs[pid] = f"damaged ({problem})"
            if on_progress:
                on_progress(done, total)
    else:
        rep.objects_checked += len(pack_sizes)

    # Trace damage to snapshots.
    if bad_packs:
        hits: dict[str, list[str]] = {pid: [] for pid in bad_packs}
        for sid, m in sorted(manifests.items()):
            for pid in {chunk_pack[c][0] for c in m.chunk_ids() if c in chunk_pack} & set(bad_packs):
                hits[pid].append(sid)
        for pid, why in sorted(bad_packs.items()):
            who = ", ".join(f"{s[:8]} ({manifests[s].db} {manifests[s].finished_at})" for s in hits[pid]) or "none"
            msg = f"{where}: {_short(pack_object_name(pid))} is {why}; affects snapshots: {who}"
            rep.problems.append(msg)
            for s in hits[pid]:
                rep.affected.setdefault(s, []).append(msg)
