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
import errno
import fcntl
import hashlib
import mmap
import os
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import crc32c

from core.errors import IntegrityError, ObjectFrozen, StorageError
from core.repository.crc import crc32c_combine, manifest_hex
from core.repository.crypto import open_chunk
from core.repository.index import Index, Location
from core.repository.manifest import FileEntry
from core.repository.packs import pack_object_name
from core.repository.quarantine import Finding, is_damage
from core.repository.repo import Repository
from core.repository.sources import ReadSources
from core.threads import run_to_end

# A run is capped by plaintext, not stored bytes: with 40:1 compression an
# 8 MiB stored read would expand to 320 MiB in memory.
MAX_RUN_PLAIN = 8 * 1024 * 1024
READ_AHEAD = 4


@dataclass
class _Opened:
    """A run's plaintext chunks and, once written, their CRC-32C and length."""

    chunks: list[bytes]
    crc: int
    size: int


@dataclass
class _Run:
    pack_id: str
    start: int
    end: int
    plain: int
    chunks: list[tuple[bytes, Location]] = field(default_factory=list)
    at: int = 0  # where the run's plaintext starts in the file


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
    at = 0
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
            run = _Run(loc.pack_id, loc.offset, loc.offset + loc.length, loc.raw_length, [(cid, loc)], at)
        at += loc.raw_length
    if run:
        yield run


class _Target:
    """The file a restore writes runs into, and the lock its writes take turns on.

    The runs of one file are opened in several threads at once, but their writes go one at a time: ext4
    takes the inode's lock for each buffered write, and threads waiting there spin on the CPU (perf put
    rwsem_spin_on_owner at 9-11% of a restore's CPU). Waiting on this lock sleeps instead.

    A large file whose size is a whole number of pages (a relation file: so is every block of it) is
    written with O_DIRECT, from a page-aligned buffer of the writing thread, by DMA: a restore writes
    gigabytes nobody reads soon, and the kernel's copy of every byte into the page cache was 42% of a
    restore's CPU (perf, 3.46 GB), its sys time varying 2x with the memory the cache had to reclaim. A
    file system without direct I/O (tmpfs) refuses the flag: the page cache then. A piece off the page
    grid turns O_DIRECT off for the rest of the file (under the lock: no write is in flight). The fd's
    flags are as they were once :meth:`done`.
    """

    __slots__ = ("direct", "fd", "flags", "lock")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        self.direct = bool(self.flags & _O_DIRECT)
        if _O_DIRECT and not self.direct and size >= _DIRECT_FROM and size % _DIRECT_ALIGN == 0:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, self.flags | _O_DIRECT)
                self.direct = True
            except OSError:
                pass

    def done(self) -> None:
        """Give the fd back with the flags it came with (every write has returned)."""
        if fcntl.fcntl(self.fd, fcntl.F_GETFL) != self.flags:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self.flags)

    def pwrite(self, data: bytes, at: int) -> None:
        n = len(data)
        with self.lock:
            if self.direct and (at % _DIRECT_ALIGN or n % _DIRECT_ALIGN):
                self._buffered()
            view = memoryview(data)
            if self.direct:
                buf = _aligned_buffer(n)
                buf[:n] = data
                view = memoryview(buf)[:n]
            try:
                while view:
                    try:
                        w = os.pwrite(self.fd, view, at)
                    except OSError as exc:
                        if not self.direct or exc.errno != errno.EINVAL:
                            raise
                        self._buffered()  # the file system took the flag but not the write: the page cache
                        continue
                    view, at = view[w:], at + w
                    if view and self.direct and at % _DIRECT_ALIGN:
                        self._buffered()  # a short write left the rest unaligned
            finally:
                view.release()

    def _buffered(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~_O_DIRECT)
        self.direct = False


_O_DIRECT = getattr(os, "O_DIRECT", 0)
_DIRECT_ALIGN = 4096  # what O_DIRECT needs offsets and lengths to be multiples of (ext4, XFS: the block size)
_DIRECT_FROM = 1024 * 1024
_buffers = threading.local()


def _aligned_buffer(size: int) -> mmap.mmap:
    """This thread's page-aligned buffer of at least ``size`` bytes (anonymous memory, reused)."""
    buf: mmap.mmap | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < size:
        if buf is not None:
            buf.close()
        buf = _buffers.buf = mmap.mmap(-1, max(size, 1024 * 1024))
    return buf


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

    def _open_run(self, data: bytes, run: _Run, target: _Target | None = None) -> _Opened:
        """The run's chunks, each checked against its id; with ``target``, each also written at its offset there.

        Written chunks are also run through CRC-32C right after their write, while still in the CPU's cache.
        """
        view = memoryview(data)
        out = []
        at = run.at
        crc = 0
        for cid, loc in run.chunks:
            key = self.repo.keys.get(loc.key_version)
            if key is None:
                raise IntegrityError(f"chunk needs data key version {loc.key_version}, which is not in keys/")
            off = loc.offset - run.start
            plain = open_chunk(view[off: off + loc.length], cid, key)
            if len(plain) != loc.raw_length:  # the offsets of every later chunk come from these lengths
                raise IntegrityError(f"chunk {cid.hex()[:16]} is {len(plain)} bytes, the index says {loc.raw_length}")
            if target is not None:
                target.pwrite(plain, at)
                crc = crc32c.crc32c(plain, value=crc)
            at += len(plain)
            out.append(plain)
        return _Opened(out, crc, at - run.at)

    async def _fetch(self, run: _Run, target: _Target | None = None) -> _Opened:
        name = pack_object_name(run.pack_id)
        errors = []
        frozen: list[ObjectFrozen] = []
        for st in self.sources.order(run.pack_id):
            try:
                data = await st.get_range(name, run.start, run.end - run.start)
                if len(data) != run.end - run.start:
                    raise IntegrityError(f"{name} is truncated")
                # A copy found damaged midway is rewritten whole from the next target, over the same offsets.
                opened = await run_to_end(self.pool, self._open_run, data, run, target)
                self.sources.served(st, len(data))
                return opened
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

    async def _opened_runs(self, entry: FileEntry, fd: int | None = None) -> AsyncGenerator[_Opened, None]:
        """The file's runs, fetched and opened a few ahead (and written into ``fd``), yielded in order."""
        check_complete(entry, self.index)
        target = _Target(fd, entry.size) if fd is not None else None
        pending: deque[asyncio.Task[_Opened]] = deque()
        it = _plan_runs(entry, self.index)
        try:
            for run in it:
                pending.append(asyncio.ensure_future(self._fetch(run, target)))
                if len(pending) >= READ_AHEAD:
                    break
            while pending:
                opened = await pending.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(asyncio.ensure_future(self._fetch(nxt, target)))
                yield opened
        finally:
            for t in pending:
                t.cancel()
            # Their jobs may be writing into fd: the caller closes it only once they have stopped.
            await asyncio.gather(*pending, return_exceptions=True)
            if target is not None:
                target.done()

    async def _checked_runs(self, entry: FileEntry, fd: int | None = None) -> AsyncGenerator[list[bytes], None]:
        """The file's runs in order (written into ``fd`` when given), hashed as they come; SHA-256 checked last."""
        sha = hashlib.sha256()
        runs = self._opened_runs(entry, fd)
        try:
            async for opened in runs:
                # In order, but off the event loop: a restore hashes every byte, as much work as decompressing.
                await run_to_end(self.pool, _hash_all, sha, opened.chunks)
                yield opened.chunks
        finally:
            await runs.aclose()
        if sha.hexdigest() != entry.sha256:
            raise IntegrityError(f"{entry.name}: restored stream does not match its recorded SHA-256")

    async def stream(self, entry: FileEntry) -> AsyncGenerator[bytes, None]:
        """Yield the file's plaintext in order; checks its SHA-256 at the end."""
        runs = self._checked_runs(entry)
        try:
            async for chunks in runs:
                for c in chunks:
                    yield c
        finally:
            await runs.aclose()

    async def write_into(self, entry: FileEntry, fd: int, crc32c_hex: str | None = None) -> AsyncGenerator[int, None]:
        """Write the file's plaintext into ``fd`` at its offsets; yields the bytes of each run written.

        Each run is opened (every chunk checked against its id) and written in one worker-thread job, a few
        runs at once, out of order: one large file keeps every core busy. The whole file is checked at the
        end against ``crc32c_hex``, the CRC-32C the server put in the backup's backup_manifest, joined from
        the runs' own CRCs; without one, against the snapshot's SHA-256, hashed in order. A large file of
        whole pages is written with O_DIRECT (see _Target); ``fd`` has its own flags again at the end. A
        caller must discard the file when this raises.
        """
        if crc32c_hex is None:
            runs = self._checked_runs(entry, fd)
            try:
                async for chunks in runs:
                    yield sum(len(c) for c in chunks)
            finally:
                await runs.aclose()
            return
        crc, size = 0, 0
        opened_runs = self._opened_runs(entry, fd)
        try:
            async for opened in opened_runs:
                crc = crc32c_combine(crc, opened.crc, opened.size)
                size += opened.size
                yield opened.size
        finally:
            await opened_runs.aclose()
        if size != entry.size:
            raise IntegrityError(f"{entry.name}: {size} bytes restored, the snapshot records {entry.size}")
        if manifest_hex(crc) != crc32c_hex.lower():
            raise IntegrityError(f"{entry.name}: the restored file does not match the CRC-32C in the backup's "
                                 "backup_manifest")
