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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from core.errors import BackstopError, IntegrityError, ObjectFrozen, ObjectNotFound, StorageError, TargetUnreachable
from core.repository.crypto import open_chunk
from core.repository.index import INDEX_PREFIX, Index, IndexFile
from core.repository.manifest import SNAPSHOT_PREFIX, Manifest
from core.repository.packs import DATA_PREFIX, pack_id_from_name, pack_object_name, read_pack_header
from core.repository.repo import Repository
from core.repository.tiers import needs_thaw
from core.storage.base import Storage

# Packs check --read-data fetches and verifies at once per target.
_PACKS_IN_FLIGHT = 3


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
    check = _TargetCheck(repo, st, quarantined)
    try:
        await check.run(read_data, pool, on_progress)
    except TargetUnreachable as exc:
        check.rep.unreachable = str(exc)
        check.rep.problems.append(str(exc))
    except StorageError as exc:
        check.rep.problems.append(str(exc))
    return check.rep


class _TargetCheck:
    """The steps of checking one target, each filling in the report (FORMAT.md 15)."""

    def __init__(self, repo: Repository, st: Storage, quarantined: frozenset[str] | set[str]) -> None:
        self.repo, self.st, self.quarantined = repo, st, quarantined
        self.rep = TargetReport(st.name)
        self.where = f"target '{st.name}'"
        self.index = Index()
        self.damaged_index: list[str] = []
        self.marked: set[str] = set()  # packs prune marked for deletion
        self.frozen: set[str] = set()  # packs in a class that must be thawed before a read (FORMAT.md 12.6)
        self.manifests: dict[str, Manifest] = {}
        self.bad_chunks: dict[str, set[bytes]] = {}  # pack -> its damaged chunks, where known that precisely

    async def run(self, read_data: bool, pool: ThreadPoolExecutor,
                  on_progress: Callable[[int, int], None] | None) -> None:
        # The target must open on its own: if the others are lost, this is all there is.
        self.rep.problems.extend(await self.repo.verify_identity(self.st))
        await self._read_index()
        await self._packs_present()
        await self._read_manifests()
        self._chunks_indexed()
        if read_data:
            await self._read_packs(pool, on_progress)
        else:
            self.rep.objects_checked += len(self.index.packs)
        self._trace_damage()

    async def _read_index(self) -> None:
        """Every index object: its SHA-256 matches its name and it opens."""
        rep, where = self.rep, self.where
        for obj in await self.st.list(INDEX_PREFIX):
            rep.objects_checked += 1
            data = await self.st.get(obj.name)
            rep.bytes_read += len(data)
            if hashlib.sha256(data).hexdigest() != obj.name[len(INDEX_PREFIX):]:
                self.damaged_index.append(f"{where}: {_short(obj.name)} is damaged (checksum mismatch)")
                continue
            try:
                self.index.merge(obj.name, IndexFile.open(data, self.repo.keys), self.quarantined)
            except BackstopError as exc:
                self.damaged_index.append(f"{where}: {_short(obj.name)} cannot be read: {exc}")
        for msg in self.damaged_index:
            rep.problems.append(f"{msg}; the snapshots it affects are listed below; `backstop repair index` "
                                "rebuilds what it listed from the pack headers")
        # Packs prune marked for deletion (17.2) are still readable: a snapshot that raced prune may need them.
        try:
            marks = await self.repo.load_marks(self.st)
        except IntegrityError as exc:
            rep.problems.append(f"{where}: {exc}")
            return
        self.marked = set(marks.packs)
        marks.fill(self.index)  # checked like indexed packs where they hold a chunk no index lists

    async def _packs_present(self) -> None:
        """Every indexed pack exists with its recorded size; unindexed packs are a note."""
        listing = await self.st.list(DATA_PREFIX)
        present = {pack_id_from_name(o.name): o.size for o in listing}
        self.frozen = {pack_id_from_name(o.name) for o in listing if needs_thaw(o.storage_class)}
        for pid, size in self.index.packs.items():
            if pid not in present:
                self.rep.bad_packs[pid] = "missing"
            elif present[pid] != size:
                self.rep.bad_packs[pid] = f"of the wrong size ({present[pid]} bytes, expected {size})"
        waiting = self.marked & set(present)
        if waiting:
            self.rep.notes.append(f"{self.where}: {len(waiting)} pack(s) marked for deletion; a prune after the grace "
                                  "period deletes them")
        unreferenced = set(present) - set(self.index.packs) - self.marked
        if unreferenced:
            why = ("listed by no readable index; `backstop repair index` re-reads their headers" if self.damaged_index
                   else "referenced by no index (left by an interrupted backup); prune removes them after the grace "
                        "period")
            self.rep.notes.append(f"{self.where}: {len(unreferenced)} pack(s) {why}")

    async def _read_manifests(self) -> None:
        """Every manifest: its SHA-256 matches its name and it opens."""
        rep, where = self.rep, self.where
        for obj in await self.st.list(SNAPSHOT_PREFIX):
            sid = obj.name[len(SNAPSHOT_PREFIX):]
            rep.objects_checked += 1
            data = await self.st.get(obj.name)
            rep.bytes_read += len(data)
            if hashlib.sha256(data).hexdigest() != sid:
                rep.affect(sid, f"{where}: {_short(obj.name)} is damaged (checksum mismatch)")
                continue
            try:
                self.manifests[sid] = Manifest.open(data, self.repo.keys)
            except BackstopError as exc:
                rep.affect(sid, f"{where}: {_short(obj.name)} cannot be read: {exc}")
        rep.snapshots = sorted(self.manifests)
        rep.described = {sid: f"{m.db} {m.finished_at}" for sid, m in self.manifests.items()}

    def _chunks_indexed(self) -> None:
        """Every chunk a snapshot needs is listed by some readable index object."""
        for sid, m in sorted(self.manifests.items()):
            missing = [c for c in m.chunk_ids() if c not in self.index.chunks]
            if missing:
                hint = ("an index object above is damaged: `backstop repair index`" if self.damaged_index
                        else "run `backstop repair index`")
                self.rep.affect(sid, f"{self.where}: snapshot {sid[:8]} ({m.db} {m.finished_at}) needs {len(missing)} "
                                     f"chunk(s) that no readable index lists; {hint}")

    async def _read_packs(self, pool: ThreadPoolExecutor, on_progress: Callable[[int, int], None] | None) -> None:
        """--read-data: fetch each indexed pack, check its SHA-256 and open every blob the index places in it."""
        rep, index = self.rep, self.index
        by_pack: dict[str, dict[bytes, tuple[int, int, int]]] = {}
        for cid, loc in index.chunks.items():
            by_pack.setdefault(loc.pack_id, {})[cid] = (loc.key_version, loc.offset, loc.length)
        todo = [p for p in index.packs if p not in rep.bad_packs and p not in self.frozen]
        total = sum(index.packs[p] for p in todo)
        done = 0
        loop = asyncio.get_running_loop()
        frozen = [p for p in index.packs if p in self.frozen and p not in rep.bad_packs]
        # A few packs in flight: one downloads while others are verified (zstd, AES-GCM and SHA-256 release the
        # GIL, so the pool's threads use every core); memory stays a few packs.
        sem = asyncio.Semaphore(_PACKS_IN_FLIGHT)

        async def one(pid: str) -> None:
            nonlocal done
            async with sem:
                try:
                    data = await self.st.get(pack_object_name(pid))
                except ObjectNotFound:
                    rep.bad_packs[pid] = "missing"  # deleted since the listing
                    return
                except ObjectFrozen:
                    frozen.append(pid)  # archived since the listing
                    return
                rep.objects_checked += 1
                rep.bytes_read += len(data)
                done += len(data)
                problem, chunks = await loop.run_in_executor(pool, _verify_pack, data, pid, by_pack.get(pid, {}),
                                                             self.repo)
                del data
            if problem:
                rep.bad_packs[pid] = f"damaged ({problem})"
                if chunks is not None:
                    self.bad_chunks[pid] = chunks
            else:
                rep.intact_packs.add(pid)
            if on_progress:
                on_progress(done, total)

        for r in await asyncio.gather(*(one(pid) for pid in todo), return_exceptions=True):
            if isinstance(r, BaseException):
                raise r
        if frozen:
            rep.notes.append(f"{self.where}: {len(frozen)} pack(s) are in an archive class that must be thawed and "
                             "were not read (their size was checked); `backstop archive thaw` makes them readable")

    def _affects(self, cid: bytes) -> str | None:
        """The damaged pack a snapshot needing chunk ``cid`` would read it from, if any."""
        loc = self.index.chunks.get(cid)
        if loc is None or loc.pack_id not in self.rep.bad_packs:
            return None
        known = self.bad_chunks.get(loc.pack_id)
        return loc.pack_id if known is None or cid in known else None

    def _trace_damage(self) -> None:
        """Each bad pack, with the snapshots that need a damaged chunk of it."""
        bad = self.rep.bad_packs
        if not bad:
            return
        hits: dict[str, list[str]] = {pid: [] for pid in bad}
        for sid, m in sorted(self.manifests.items()):
            for pid in {p for p in map(self._affects, m.chunk_ids()) if p is not None}:
                hits[pid].append(sid)
        for pid, why in sorted(bad.items()):
            who = ", ".join(f"{s[:8]} ({self.manifests[s].db} {self.manifests[s].finished_at})" for s in hits[pid])
            msg = f"{self.where}: {_short(pack_object_name(pid))} is {why}; affects snapshots: {who or 'none'}"
            self.rep.problems.append(msg)
            for s in hits[pid]:
                self.rep.affected.setdefault(s, []).append(msg)
