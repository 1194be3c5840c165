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
from typing import BinaryIO

from pyfastcdc import FastCDC

from core.errors import BackstopError
from core.repository.crypto import chunk_id, seal_chunk
from core.repository.index import Index, IndexFile
from core.repository.manifest import FileEntry
from core.repository.packs import Pack, PackBuilder
from core.repository.repo import Repository

ProgressFn = Callable[[int], None]


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
        self._max_uploads = 2
        self._abort = threading.Event()

    def abort(self) -> None:
        """Ask a running :meth:`write` to stop at the next chunk."""
        self._abort.set()

    # Runs in a worker thread.
    def write(self, reader: BinaryIO, name: str, fmt: str) -> FileEntry:
        """Consume ``reader`` to EOF and return the file's manifest entry."""
        p = self.repo.params
        cdc = FastCDC(p.chunk_avg, min_size=p.chunk_min, max_size=p.chunk_max)
        sha = hashlib.sha256()
        refs: list[str] = []
        inflight: deque[tuple[bytes, int, Future[bytes]]] = deque()
        id_key = self.key.id_key
        size = 0
        last_report = 0.0
        try:
            for ch in cdc.cut_stream(reader):
                if self._abort.is_set():
                    raise WriteAborted("backup aborted")
                # The view is only valid until the next chunk is cut: hash it in
                # place, and copy only the chunks that are new and must be sealed.
                view = ch.data
                sha.update(view)
                cid = chunk_id(view, id_key)
                refs.append(cid.hex())
                size += ch.length
                self.stats.bytes_read += ch.length
                self.stats.chunks += 1
                if cid not in self.index and cid not in self._pending:
                    self._pending.add(cid)
                    data = bytes(view)
                    inflight.append((cid, len(data), self.pool.submit(seal_chunk, data, cid, self.key, self.level)))
                    while len(inflight) > self._max_inflight:
                        self._add_sealed(*inflight.popleft())
                now = time.monotonic()
                if self.on_progress and now - last_report > 0.2:
                    last_report = now
                    self.on_progress(self.stats.bytes_read)
            while inflight:
                self._add_sealed(*inflight.popleft())
        finally:
            for _, _, fut in inflight:
                fut.cancel()
        if self.on_progress:
            self.on_progress(self.stats.bytes_read)
        return FileEntry(name=name, format=fmt, size=size, sha256=sha.hexdigest(), chunks=refs)

    def finish(self) -> None:
        """Ship the last partial pack and wait for every upload (worker thread)."""
        if len(self._builder):
            self._ship(self._builder.finish(self.key))
        while self._uploads:
            self._uploads.popleft().result()

    def _add_sealed(self, cid: bytes, raw_len: int, fut: Future[bytes]) -> None:
        self._builder.add(cid, self.key.version, fut.result(), raw_len)
        self.stats.new_chunks += 1
        if self._builder.full:
            self._ship(self._builder.finish(self.key))

    def _ship(self, pack: Pack) -> None:
        self._uploads.append(asyncio.run_coroutine_threadsafe(self._upload(pack), self.loop))
        # Back-pressure: the chunker waits while too many packs are in the air.
        while len(self._uploads) > self._max_uploads:
            self._uploads.popleft().result()

    async def _upload(self, pack: Pack) -> None:
        await self.repo.put_all(pack.name, pack.data)
        await self.repo.verify_all(pack.name, pack.id)
        self.new_index.add_pack(pack)
        self.stats.stored_bytes += len(pack.data)
        self.stats.packs += 1
