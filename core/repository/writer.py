"""The backup data path: chunk, deduplicate, seal, pack and ship a stream.

Runs in a thread fed by a pipe (the dump). Sealing runs on a bounded thread
pool, finished packs are uploaded to every target from the event loop and
read back before they count. Bounded queues at each step keep memory flat:
at most ``max_inflight`` chunks and ``max_uploads`` packs are held at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyfastcdc import FastCDC

if TYPE_CHECKING:
    # What the chunker reads: a pipe, a file, a COPY stream (anything with read() or readinto()).
    from pyfastcdc import BinaryStreamReader

from core.errors import BackstopError
from core.repository.crypto import chunk_id, seal_chunk
from core.repository.index import Index, IndexFile
from core.repository.manifest import FileEntry
from core.repository.packs import Pack, PackBuilder
from core.repository.repo import Repository
from core.storage.base import Storage
from core.storage.throttle import DEFAULT_PARALLEL_UPLOADS

ProgressFn = Callable[[int], None]



def _parallel_uploads(st: Storage) -> int:
    """A target's parallel_uploads (a test double that does not say gets the default)."""
    n = getattr(st, "parallel_uploads", DEFAULT_PARALLEL_UPLOADS)
    return n if isinstance(n, int) and n > 0 else DEFAULT_PARALLEL_UPLOADS


class WriteAborted(BackstopError):
    """The stream writer was told to stop (the backup failed elsewhere)."""


@dataclass
class WriteStats:
    """What one backup added to the repository."""

    bytes_read: int = 0
    chunks: int = 0
    new_chunks: int = 0
    stored_bytes: int = 0  # bytes of packs uploaded (per target)
    packs: int = 0


_HEAD_PEEK = 64 * 1024  # enough for any pg_dump archive header


def _read_up_to(reader: BinaryStreamReader, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    readinto = getattr(reader, "readinto", None)
    while got < n:
        k = readinto(view[got:]) if readinto else _read_into(reader, view[got:])
        if not k:
            break
        got += k
    return bytes(buf[:got])


def _read_into(reader: BinaryStreamReader, view: memoryview) -> int:
    data = reader.read(len(view))  # type: ignore[union-attr]
    view[:len(data)] = data
    return len(data)


class _Prefixed:
    """``prefix``, then the rest of ``reader``: what was peeked at goes back in front."""

    def __init__(self, prefix: bytes, reader: BinaryStreamReader) -> None:
        self._prefix = memoryview(prefix)
        self._reader = reader

    def readinto(self, dest: memoryview) -> int:
        if self._prefix:
            n = min(len(dest), len(self._prefix))
            dest[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        readinto = getattr(self._reader, "readinto", None)
        return (readinto(dest) if readinto else _read_into(self._reader, dest)) or 0


class _Stream:
    """One stream being written: its hash, chunk list, and the chunks still being sealed."""

    def __init__(self, writer: StreamWriter, name: str, fmt: str,
                 observe: Callable[[memoryview], None] | None = None) -> None:
        self.w, self.name, self.fmt, self.observe = writer, name, fmt, observe
        self.sha = hashlib.sha256()
        self.refs: list[str] = []
        self.size = 0
        self.inflight: deque[tuple[bytes, int, Future[bytes]]] = deque()
        self.last_report = 0.0

    def take(self, view: memoryview) -> None:
        """Hash, reference and (when new) seal one chunk."""
        w = self.w
        if w._abort.is_set():
            raise WriteAborted("backup aborted")
        if not len(view):
            return
        self.sha.update(view)
        if self.observe is not None:
            self.observe(view)
        cid = chunk_id(view, w.key.id_key)
        self.refs.append(cid.hex())
        self.size += len(view)
        with w._lock:
            w.stats.bytes_read += len(view)
            w.stats.chunks += 1
            new = cid not in w.index and cid not in w._pending
            if new:
                w._pending.add(cid)
        if new:
            data = bytes(view)
            self.inflight.append((cid, len(data), w.pool.submit(seal_chunk, data, cid, w.key, w.level)))
            while len(self.inflight) > w._max_inflight:
                w._add_sealed(*self.inflight.popleft())
        now = time.monotonic()
        if w.on_progress and now - self.last_report > 0.2:
            self.last_report = now
            w.on_progress(w.stats.bytes_read)

    def drain(self) -> None:
        while self.inflight:
            self.w._add_sealed(*self.inflight.popleft())

    def cancel(self) -> None:
        for _, _, fut in self.inflight:
            fut.cancel()

    def entry(self) -> FileEntry:
        return FileEntry(name=self.name, format=self.fmt, size=self.size, sha256=self.sha.hexdigest(),
                         chunks=self.refs)


def _cut_fixed(reader: BinaryStreamReader, block_size: int, stream: _Stream) -> None:
    """Feed ``reader`` to ``stream`` in blocks of ``block_size`` bytes (the last one shorter)."""
    buf = bytearray(block_size)
    view = memoryview(buf)
    readinto = getattr(reader, "readinto", None)
    while True:
        got = 0
        while got < block_size:
            k = readinto(view[got:]) if readinto else _read_into(reader, view[got:])
            if not k:
                break
            got += k
        # take() hashes the view in place and copies only a block it must seal, so the buffer is reused.
        stream.take(view[:got])
        if got < block_size:
            return


class StreamWriter:
    """Writes streams into a repository; one instance per backup."""

    def __init__(self, repo: Repository, index: Index, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor,
                 workers: int, on_progress: ProgressFn | None = None) -> None:
        self.repo = repo
        self.index = index
        self.loop = loop
        self.pool = pool
        self.key = repo.key
        self.level = repo.params.compression_level
        self.on_progress = on_progress
        self.stats = WriteStats()
        self.new_index = IndexFile()
        self._pending: set[bytes] = set()  # new chunk ids sealed in this backup
        self._builder = PackBuilder(repo.params.pack_target)
        self._uploads: deque[Future[None]] = deque()
        self._max_inflight = workers * 2 + 2
        # Packs in the air at once: as many as the most parallel target takes (parallel_uploads); each
        # target then takes at most its own number of them at a time.
        parallel = {st.name: _parallel_uploads(st) for st in repo.storages}
        self._slots = {name: asyncio.Semaphore(n) for name, n in parallel.items()}
        self._max_uploads = max(parallel.values(), default=DEFAULT_PARALLEL_UPLOADS) - 1
        self._abort = threading.Event()
        # Several streams (a backup's tables) may be written at once from their own threads:
        # the pack being built, the set of new chunks and the counters are shared.
        self._lock = threading.Lock()

    def abort(self) -> None:
        """Ask a running :meth:`write` to stop at the next chunk."""
        self._abort.set()

    # Runs in a worker thread.
    def write(self, reader: BinaryStreamReader, name: str, fmt: str,
              head: Callable[[bytes], int] | None = None, block_size: int | None = None,
              observe: Callable[[memoryview], None] | None = None) -> FileEntry:
        """Consume ``reader`` to EOF and return the file's manifest entry.

        ``head`` sees the stream's first bytes and says how many of them form
        a volatile header (a pg_dump archive's creation time): those become a
        chunk of their own, so the content-defined chunks after it are the
        same in every backup of unchanged data.

        ``block_size`` cuts fixed blocks from the stream's first byte instead
        of content-defined chunks (physical snapshots, FORMAT.md 10.2): a
        relation file's pages stay where they are, so a block whose pages did
        not change gets the same chunk id in every backup.

        ``observe`` sees the whole stream, chunk by chunk in order (a table's
        row digest, core/repository/table_digest.py); the view is only valid
        during the call.
        """
        stream = _Stream(self, name, fmt, observe)
        if block_size is not None:
            try:
                _cut_fixed(reader, block_size, stream)
                stream.drain()
            finally:
                stream.cancel()
            return stream.entry()
        p = self.repo.params
        cdc = FastCDC(p.chunk_avg, min_size=p.chunk_min, max_size=p.chunk_max)
        try:
            if head is not None:
                first = _read_up_to(reader, _HEAD_PEEK)
                n = head(first)
                stream.take(memoryview(first)[:n])
                reader = _Prefixed(first[n:], reader)
            for ch in cdc.cut_stream(reader):
                # The view is only valid until the next chunk is cut: take() hashes it
                # in place and copies only chunks that are new and must be sealed.
                stream.take(ch.data)
            stream.drain()
        finally:
            stream.cancel()
        if self.on_progress:
            self.on_progress(self.stats.bytes_read)
        return stream.entry()

    def finish(self) -> None:
        """Ship the last partial pack and wait for every upload (worker thread, after every stream ended)."""
        with self._lock:
            if len(self._builder):
                self._ship(self._builder.finish(self.key))
        while self._uploads:
            self._uploads.popleft().result()

    def _add_sealed(self, cid: bytes, raw_len: int, fut: Future[bytes]) -> None:
        blob = fut.result()
        with self._lock:
            self._builder.add(cid, self.key.version, blob, raw_len)
            self.stats.new_chunks += 1
            if self._builder.full:
                self._ship(self._builder.finish(self.key))

    def _ship(self, pack: Pack) -> None:
        self._uploads.append(asyncio.run_coroutine_threadsafe(self._upload(pack), self.loop))
        # Back-pressure: the chunker waits while too many packs are in the air.
        while len(self._uploads) > self._max_uploads:
            self._uploads.popleft().result()

    async def _upload(self, pack: Pack) -> None:
        await self.repo.put_all(pack.name, pack.data, self._slots)
        await self.repo.verify_all(pack.name, pack.id)
        self.new_index.add_pack(pack)
        self.stats.stored_bytes += len(pack.data)
        self.stats.packs += 1
