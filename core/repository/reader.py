"""The restore data path: fetch, check and decrypt a stored stream, in order.

Adjacent chunks of one pack are fetched with a single ranged read; a few
reads are kept in flight for throughput, no more, so memory stays flat.
A read that fails on one target (unreachable, missing, or failing its
checksum) is retried on the next for that same object, and that target is
demoted for the rest of the read (core/repository/sources.py); damaged copies
are reported for quarantine. What each target served is counted.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from core.errors import IntegrityError, ObjectFrozen, StorageError
from core.repository.crypto import open_chunk
from core.repository.index import Index, Location
from core.repository.manifest import FileEntry
from core.repository.packs import pack_object_name
from core.repository.quarantine import Finding, is_damage
from core.repository.repo import Repository
from core.repository.sources import ReadSources

# A run is capped by plaintext, not stored bytes: with 40:1 compression an
# 8 MiB stored read would expand to 320 MiB in memory.
MAX_RUN_PLAIN = 8 * 1024 * 1024
READ_AHEAD = 4


@dataclass
class _Run:
    pack_id: str
    start: int
    end: int
    plain: int
    chunks: list[tuple[bytes, Location]] = field(default_factory=list)


def check_complete(entry: FileEntry, index: Index) -> None:
    """Fail before anything is restored if a chunk of the file is not indexed."""
    missing = sum(1 for hexid in entry.chunks if bytes.fromhex(hexid) not in index.chunks)
    if not missing:
        return
    if index.damaged:
        raise IntegrityError(
            f"{missing} chunk(s) of {entry.name} are listed by no readable index object, and {len(index.damaged)} "
            "index object(s) are damaged on every target; run `backstop repair index` (it re-reads the pack headers)")
    raise IntegrityError(f"{missing} chunk(s) of {entry.name} are not in the index; run `backstop check`")


def _plan_runs(entry: FileEntry, index: Index) -> Iterator[_Run]:
    """Group adjacent chunks of one pack into single reads, lazily (memory stays flat)."""
    run: _Run | None = None
    for hexid in entry.chunks:
        cid = bytes.fromhex(hexid)
        loc = index.chunks[cid]
        if run and run.pack_id == loc.pack_id and run.end == loc.offset and run.plain + loc.raw_length <= MAX_RUN_PLAIN:
            run.end = loc.offset + loc.length
            run.plain += loc.raw_length
            run.chunks.append((cid, loc))
        else:
            if run:
                yield run
            run = _Run(loc.pack_id, loc.offset, loc.offset + loc.length, loc.raw_length, [(cid, loc)])
    if run:
        yield run


def _hash_all(h: hashlib._Hash, pieces: list[bytes]) -> None:  # noqa: SLF001
    for piece in pieces:
        h.update(piece)


class StreamReader:
    """Reads stored streams back; notes damaged copies it had to skip."""

    def __init__(self, repo: Repository, index: Index, pool: ThreadPoolExecutor,
                 on_damage: Callable[[str], None] | None = None, sources: ReadSources | None = None) -> None:
        self.repo = repo
        # Which target to read first, and what each served (default: the repository's order).
        self.sources = sources or ReadSources(list(repo.storages))
        self.index = index
        self.pool = pool
        self.on_damage = on_damage
        self.damaged: list[str] = []
        # Damaged or missing copies found while reading (not unreachable targets): what to quarantine.
        self.findings: list[Finding] = []
        self._reported: set[tuple[str, str]] = set()

    def _open_run(self, data: bytes, run: _Run) -> list[bytes]:
        view = memoryview(data)
        out = []
        for cid, loc in run.chunks:
            key = self.repo.keys.get(loc.key_version)
            if key is None:
                raise IntegrityError(f"chunk needs data key version {loc.key_version}, which is not in keys/")
            off = loc.offset - run.start
            out.append(open_chunk(view[off: off + loc.length], cid, key))
        return out

    async def _fetch(self, run: _Run) -> list[bytes]:
        name = pack_object_name(run.pack_id)
        loop = asyncio.get_running_loop()
        errors = []
        frozen: list[ObjectFrozen] = []
        for st in self.sources.order(run.pack_id):
            try:
                data = await st.get_range(name, run.start, run.end - run.start)
                if len(data) != run.end - run.start:
                    raise IntegrityError(f"{name} is truncated")
                chunks = await loop.run_in_executor(self.pool, self._open_run, data, run)
                self.sources.served(st, len(data))
                return chunks
            except (StorageError, IntegrityError) as exc:
                if isinstance(exc, ObjectFrozen):
                    frozen.append(exc)
                unreachable = not is_damage(exc)
                self.sources.failed(st, str(exc))
                msg = (f"target '{st.name}' could not be read ({exc}); reading {name} from the next target"
                       if unreachable else f"target '{st.name}': {name} is damaged or missing ({exc})")
                errors.append(msg)
                # Parallel restore jobs read the same stream: report each bad copy once.
                if (st.name, name) not in self._reported:
                    self._reported.add((st.name, name))
                    if not unreachable:
                        self.damaged.append(msg)
                        self.findings.append(Finding(run.pack_id, st.name, str(exc)))
                    if self.on_damage:
                        self.on_damage(msg)
        if frozen and len(frozen) == len(errors):
            raise frozen[0]  # archived everywhere (FORMAT.md 12.6): its message says how to thaw it
        raise IntegrityError(f"no intact copy of {name} on any target: " + "; ".join(errors))

    async def stream(self, entry: FileEntry) -> AsyncIterator[bytes]:
        """Yield the file's plaintext in order; checks its SHA-256 at the end."""
        check_complete(entry, self.index)
        sha = hashlib.sha256()
        pending: deque[asyncio.Task[list[bytes]]] = deque()
        it = _plan_runs(entry, self.index)
        try:
            for run in it:
                pending.append(asyncio.ensure_future(self._fetch(run)))
                if len(pending) >= READ_AHEAD:
                    break
            loop = asyncio.get_running_loop()
            while pending:
                chunks = await pending.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(asyncio.ensure_future(self._fetch(nxt)))
                # In order, but off the event loop: a restore hashes every byte, as much work as decompressing.
                await loop.run_in_executor(self.pool, _hash_all, sha, chunks)
                for c in chunks:
                    yield c
        finally:
            for t in pending:
                t.cancel()
        if sha.hexdigest() != entry.sha256:
            raise IntegrityError(f"{entry.name}: restored stream does not match its recorded SHA-256")
