"""The WAL archive in the repository (FORMAT.md 21): one sealed object per WAL file, and the cluster it belongs to.

``wal/<TLI>/<file name>`` holds one WAL segment, ``.partial`` segment,
timeline history or backup history file, sealed in an envelope of kind
``wal`` whose payload starts with a header naming the file, the source
cluster's system identifier, the file's size and its digest (BLAKE3; SHA-256 in
objects written before 2026-12-05). ``wal/cluster``
(kind ``wal-cluster``) records the system identifier of the first WAL file
archived: WAL of any other cluster is refused.

A push is acknowledged only once the object is on every target and read
back; the same file pushed twice is success, other content under a stored
name is an error naming it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import blake3
import zstandard

from core.errors import IntegrityError, NotFound, ObjectNotFound, RepositoryError, StorageError
from core.format import now_iso
from core.postgres.wal import (
    DEFAULT_SEG_SIZE,
    WalNameError,
    check_segment,
    parse_segment_name,
    segment_file,
    segments_between,
    wal_file_kind,
)
from core.repository.crypto import (
    PackedSealer,
    compress,
    decompress_frames,
    open_object,
    open_packed,
    seal_object,
)
from core.repository.keys import DataKey
from core.repository.repo import Repository
from core.storage.base import ObjectInfo, Storage

WAL_PREFIX = "wal/"
CLUSTER_NAME = "wal/cluster"
WAL_KIND = b"wal"
CLUSTER_KIND = b"wal-cluster"
# WAL is mostly compressible (zero-filled tails of switched segments, repeated page images); level 1 is
# several times faster than 3 at nearly the same ratio, and wal-push latency is what PostgreSQL waits on.
WAL_COMPRESSION_LEVEL = 1
# A 128 KiB window instead of level 1's 512 KiB: on pgbench WAL it compresses 6% faster and as small (a
# segment's full-page images repeat within a few pages, not across megabytes). Readers need no change.
WAL_WINDOW_LOG = 17
_HEADER = struct.Struct(">4sQQ32sH")  # magic, system identifier, size, digest, name length; then name, then data
# The magic names the digest (FORMAT.md 21.2). BLAKE3 since 2026-12-05: a third of SHA-256's CPU (3.5 ms a
# segment here against 9.3 ms), on the two cores where the pusher compresses what PostgreSQL waits on.
_MAGIC = b"BKW2"
_MAGIC_SHA256 = b"BKW1"
_ALGORITHMS = {_MAGIC: "blake3", _MAGIC_SHA256: "sha256"}
# A WAL file this large is compressed as four frames, one per quarter, on two threads: compression is most
# of a push's time, and what PostgreSQL's archiver waits on. The first two quarters are written and on their
# way to disk while the last two are compressed (FORMAT.md 21.2).
_SPLIT_FROM = 1024 * 1024
_PARTS = 4
_COMPRESS_THREADS = 2


class WalNotArchived(NotFound):
    """The archive holds no such WAL file (what PostgreSQL expects at the end of the archive)."""

    exit_code = 1

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not in the WAL archive")
        self.name = name


class WalRefused(RepositoryError):
    """A WAL file the archive must not take: another cluster's, or other content under a stored name."""


@dataclass(frozen=True)
class WalFile:
    """An archived WAL file, opened and checked."""

    name: str
    system_identifier: int  # 0 for history and backup history files archived before any segment
    digest: str  # "blake3:<hex>", or "sha256:<hex>" for an object written before 2026-12-05
    data: bytes


@dataclass(frozen=True)
class ClusterIdentity:
    """``wal/cluster``: whose WAL this repository archives."""

    system_identifier: int
    wal_segment_size: int
    first_file: str
    created: str

    def to_json(self) -> dict[str, object]:
        return {"system_identifier": str(self.system_identifier), "wal_segment_size": self.wal_segment_size,
                "first_file": self.first_file, "created": self.created}


@dataclass(frozen=True)
class PushResult:
    """What one push did: ``stored`` False when the same file was already archived."""

    name: str
    size: int
    digest: str  # as WalFile.digest: what the spool records
    stored: bool
    sealed_size: int


def wal_object_name(name: str) -> str:
    """``wal/00000001/000000010000000000000003``: the object holding WAL file ``name``."""
    wal_file_kind(name)
    return f"{WAL_PREFIX}{name[:8]}/{name}"


def data_parts(data: bytes) -> list[memoryview]:
    """The parts of a WAL file compressed as frames of their own (FORMAT.md 21.2): a segment's four quarters."""
    view = memoryview(data)
    if len(data) < _SPLIT_FROM:
        return [view]
    cuts = [len(data) * i // _PARTS for i in range(_PARTS + 1)]
    return [view[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


def compress_part(part: memoryview) -> bytes:
    """One data frame of a WAL object."""
    return compress(part, WAL_COMPRESSION_LEVEL, WAL_WINDOW_LOG)


def wal_digest(data: bytes) -> bytes:
    """The digest a WAL object's header records of its file: BLAKE3-256, one thread."""
    return blake3.blake3(data).digest()


def digest_like(data: bytes, other: str, blake3_digest: str | None = None) -> str:
    """``data``'s digest spelled as ``other`` is (``blake3:<hex>`` or ``sha256:<hex>``), to compare the two.

    ``blake3_digest``: data's ``blake3:<hex>`` when the caller has it already.
    """
    if other.startswith("sha256:"):
        return "sha256:" + hashlib.sha256(data).hexdigest()
    return blake3_digest or "blake3:" + wal_digest(data).hex()


def header_frame(name: str, size: int, digest: bytes, system_identifier: int) -> bytes:
    """The first frame of a WAL object: its header and name (FORMAT.md 21.2)."""
    raw = name.encode("ascii")
    return compress(_HEADER.pack(_MAGIC, system_identifier, size, digest, len(raw)) + raw, WAL_COMPRESSION_LEVEL)


_pool: ThreadPoolExecutor | None = None


def _compress_pool() -> ThreadPoolExecutor:
    """Two threads compressing WAL parts, in the order they were submitted."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_COMPRESS_THREADS, thread_name_prefix="backstop-wal-zstd")
    return _pool


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of its parent's threads: it starts its own pool


os.register_at_fork(after_in_child=_forget_pool)


def seal_wal(name: str, data: bytes, system_identifier: int, key: DataKey, digest: bytes | None = None) -> bytes:
    """The sealed object for one WAL file (``digest``: wal_digest(data), when the caller has it already)."""
    digest = digest if digest is not None else wal_digest(data)
    sealer = PackedSealer(WAL_KIND, key)
    frames = [header_frame(name, len(data), digest, system_identifier), *map(compress_part, data_parts(data))]
    return sealer.head + b"".join(map(sealer.update, frames)) + sealer.finish()


def open_wal(blob: bytes, name: str, keys: dict[int, DataKey]) -> WalFile:
    """Open a sealed WAL object and check it: the name it was sealed for, its size and its digest."""
    packed = open_packed(blob, WAL_KIND, keys)
    try:
        payload = decompress_frames(packed)
    except zstandard.ZstdError:
        raise IntegrityError(f"WAL object {name} is damaged (its compressed payload does not decode)") from None
    try:
        magic, sysid, size, digest, n = _HEADER.unpack_from(payload)
    except struct.error:
        raise IntegrityError(f"WAL object {name} is damaged (short header)") from None
    stored_name = payload[_HEADER.size:_HEADER.size + n].decode("ascii", "replace")
    data = payload[_HEADER.size + n:]
    algorithm = _ALGORITHMS.get(magic)
    if algorithm is None:
        raise IntegrityError(f"WAL object {name} is damaged (bad magic)")
    if stored_name != name:
        raise IntegrityError(f"WAL object {name} holds {stored_name} (renamed or misplaced)")
    actual = wal_digest(data) if algorithm == "blake3" else hashlib.sha256(data).digest()
    if len(data) != size or actual != digest:
        raise IntegrityError(f"WAL object {name} is damaged (size or {algorithm.upper()} mismatch)")
    return WalFile(name, sysid, f"{algorithm}:{digest.hex()}", data)


def _parse_wal_name(object_name: str) -> str | None:
    """The WAL file name of a ``wal/`` object (None for ``wal/cluster`` and anything unknown)."""
    parts = object_name.split("/")
    if len(parts) != 3 or parts[0] != "wal":
        return None
    try:
        wal_file_kind(parts[2])
    except WalNameError:
        return None
    return parts[2] if parts[2][:8] == parts[1] else None


class WalArchive:
    """The WAL archive of one opened repository (caches the cluster identity)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._identity: ClusterIdentity | None = None
        self._claiming = asyncio.Lock()

    # -- the cluster ---------------------------------------------------------------------------------------

    async def identity(self) -> ClusterIdentity | None:
        """``wal/cluster`` from the first target holding an intact copy; None when nothing was archived yet."""
        if self._identity is not None:
            return self._identity
        errors: list[str] = []
        absent = 0
        for st in self.repo.storages:
            try:
                doc = json.loads(open_object(await st.get(CLUSTER_NAME), CLUSTER_KIND, self.repo.keys))
                self._identity = ClusterIdentity(int(doc["system_identifier"]), int(doc["wal_segment_size"]),
                                                 str(doc["first_file"]), str(doc["created"]))
                return self._identity
            except ObjectNotFound:
                absent += 1
            except (StorageError, IntegrityError, ValueError, KeyError, TypeError) as exc:
                errors.append(f"target '{st.name}': {CLUSTER_NAME}: {exc}" if "target" not in str(exc) else str(exc))
        if absent == len(self.repo.storages):
            return None
        raise RepositoryError("the WAL archive's cluster record could not be read: " + "; ".join(errors)
                              + "; run `backstop check`")

    async def _claim(self, sysid: int, seg_size: int, first: str) -> ClusterIdentity:
        """Record the cluster on every target (first push into this repository)."""
        async with self._claiming:
            known = await self.identity()  # another push of this process may have claimed meanwhile
            if known is not None:
                return known
            ident = ClusterIdentity(sysid, seg_size, first, now_iso())
            sealed = seal_object(json.dumps(ident.to_json()).encode(), CLUSTER_KIND, self.repo.key)
            await self.repo.put_all(CLUSTER_NAME, sealed)
            try:
                await self.repo.verify_same(CLUSTER_NAME, sealed)
            except IntegrityError:
                # Another process claimed at the same moment (other nonce, other bytes): what counts is
                # whose system identifier is recorded now.
                self._identity = None
                known = await self.identity()
                if known is None:
                    raise
                return known
            self._identity = ident
            return ident

    # -- pushing -------------------------------------------------------------------------------------------

    async def push(self, name: str, data: bytes) -> PushResult:
        """Archive one WAL file on every target, read back; idempotent for the same content."""
        kind = wal_file_kind(name)
        # Hashing and compressing start at once beside the checks below: they are most of a push, and
        # PostgreSQL's archiver waits on it. The parts go through two threads of their own in order, so the
        # first ones are written (and on their way to disk) while the last are being compressed. Compressed
        # work is thrown away only when the file turns out archived already, or refused.
        loop = asyncio.get_running_loop()
        frames = [loop.run_in_executor(_compress_pool(), compress_part, part) for part in data_parts(data)]
        for f in frames:
            # Seen in every case: after a refusal, neither a compression error nor the cancellation is worth a
            # warning.
            f.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        try:
            return await self._push(name, kind, data, frames)
        finally:
            for f in frames:
                f.cancel()  # once refused: parts already compressing finish by themselves, their work dropped

    async def _push(self, name: str, kind: str, data: bytes, frames: list[asyncio.Future[bytes]]) -> PushResult:
        raw_digest = await asyncio.to_thread(wal_digest, data)
        digest = "blake3:" + raw_digest.hex()
        ident = await self.identity()
        if kind in ("segment", "partial"):
            try:
                header = check_segment(name, data[:64])
            except WalNameError as exc:
                raise WalRefused(f"{name} is not a WAL segment PostgreSQL wrote: {exc}; nothing was archived") \
                    from None
            if kind == "segment" and len(data) != header.seg_size:
                raise WalRefused(f"{name} is {len(data)} bytes but its header says segments are {header.seg_size}; "
                                 "a truncated copy? nothing was archived")
            sysid = header.system_identifier
            if ident is None:
                ident = await self._claim(sysid, header.seg_size, name)
            if ident.system_identifier != sysid:
                raise WalRefused(
                    f"{name} comes from database system {sysid}, but this repository archives the WAL of system "
                    f"{ident.system_identifier}; give each cluster its own repository (its own targets)")
        else:
            sysid = ident.system_identifier if ident is not None else 0
        obj = wal_object_name(name)
        present = await asyncio.gather(*(st.exists(obj) for st in self.repo.storages))
        have = [st for st, p in zip(self.repo.storages, present, strict=True) if p]
        if have:
            # Every copy is read: a duplicate is acknowledged only when each target holds it intact.
            copies = [c for c in await asyncio.gather(*(self._open_copy(st, name) for st in have)) if c]
            # Compared in the copy's own digest (an object from before 2026-12-05 records a SHA-256).
            other = next((c for c in copies if c.digest != digest_like(data, c.digest, digest)), None)
            if other is not None:
                mine = digest_like(data, other.digest, digest)
                raise WalRefused(
                    f"{name} is already archived with different content ({other.digest[:19]}..., this file "
                    f"{mine[:19]}...); two clusters or a restored copy archive into one repository: give each "
                    "its own repository")
            if len(copies) == len(self.repo.storages):
                return PushResult(name, len(data), digest, False, 0)
            # Missing or damaged on some target: write this (the same) content everywhere.
        sealer = PackedSealer(WAL_KIND, self.repo.key)
        head = header_frame(name, len(data), raw_digest, sysid)

        async def pieces() -> AsyncIterator[bytes]:
            yield sealer.head + sealer.update(head)
            for frame in frames:
                yield await asyncio.to_thread(sealer.update, await frame)
            yield sealer.finish()

        sealed = await self.repo.put_all_stream(obj, pieces())
        await self.repo.verify_same(obj, sealed)
        return PushResult(name, len(data), digest, not have, sum(len(p) for p in sealed))

    async def _open_copy(self, st: Storage, name: str) -> WalFile | None:
        """The copy on one target, opened and checked; None when it vanished or is damaged (to be rewritten)."""
        try:
            blob = await st.get(wal_object_name(name))
            return await asyncio.to_thread(open_wal, blob, name, self.repo.keys)
        except (ObjectNotFound, IntegrityError):
            return None

    # -- reading -------------------------------------------------------------------------------------------

    async def read(self, name: str) -> WalFile:
        """One WAL file, checked (SHA-256, name, system identifier); WalNotArchived when no target has it."""
        obj = wal_object_name(name)
        errors: list[str] = []
        for st in self.repo.storages:
            try:
                blob = await st.get(obj)
            except ObjectNotFound:
                continue
            except StorageError as exc:
                errors.append(str(exc))
                continue
            try:
                wf = await asyncio.to_thread(open_wal, blob, name, self.repo.keys)
                ident = await self.identity()
                if ident is not None and wf.system_identifier not in (0, ident.system_identifier):
                    raise IntegrityError(f"WAL object {name} comes from database system {wf.system_identifier}, "
                                         f"not the archive's {ident.system_identifier}")
                return wf
            except IntegrityError as exc:
                errors.append(f"target '{st.name}': {exc}")
        if not errors:
            raise WalNotArchived(name)
        raise RepositoryError(f"{name} could not be read from any target: " + "; ".join(errors)
                              + "; run `backstop check`")


# -- the contract's functions (physical backups and restores use these) ------------------------------------


async def wal_objects(storage: Storage, timeline: int | None = None) -> list[tuple[str, ObjectInfo]]:
    """(WAL file name, listing entry) of every WAL object on one target (of one timeline only, if given)."""
    out = []
    for info in await storage.list(WAL_PREFIX if timeline is None else f"{WAL_PREFIX}{timeline:08X}/"):
        name = _parse_wal_name(info.name)
        if name is not None:
            out.append((name, info))
    return out


async def list_wal(repo: Repository, storage: Storage | None = None) -> dict[int, set[str]]:
    """Timeline -> the WAL file names archived on ``storage``, or (by default) on every target of ``repo``."""
    stores = [storage] if storage is not None else repo.storages
    listings = await asyncio.gather(*(wal_objects(st) for st in stores))
    names = set.intersection(*({n for n, _ in lst} for lst in listings)) if listings else set()
    out: dict[int, set[str]] = {}
    for n in names:
        out.setdefault(int(n[:8], 16), set()).add(n)
    return out


@dataclass
class WalCheck:
    """What `check` found about the WAL archive on one target."""

    target: str
    files: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)


async def check_wal(repo: Repository, storages: list[Storage], read_data: bool) -> list[WalCheck]:
    """Every WAL file archived on some target is on each of ``storages``; with ``read_data`` each copy opens intact.

    A point-in-time restore replays the WAL from one target at a time: a file only the other targets hold
    is a gap for this one.
    """
    got = await asyncio.gather(*(wal_objects(st) for st in storages), return_exceptions=True)
    listings: list[list[tuple[str, ObjectInfo]] | None] = []
    for g in got:
        if isinstance(g, BaseException) and not isinstance(g, StorageError):
            raise g
        listings.append(None if isinstance(g, BaseException) else g)
    everywhere = set().union(*({n for n, _ in lst} for lst in listings if lst is not None))
    out = []
    for st, lst, g in zip(storages, listings, got, strict=True):
        if lst is None:
            out.append(WalCheck(st.name, problems=[f"the WAL archive could not be listed: {g}"]))
            continue
        here = {n for n, _ in lst}
        rep = WalCheck(st.name, files=len(here))
        missing = sorted(everywhere - here)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            rep.problems.append(f"WAL file {missing[0]}{more} is archived on other targets but missing here; a "
                                "restore reading only this target stops there")
        if read_data:
            for name in sorted(here):
                try:
                    blob = await st.get(wal_object_name(name))
                    rep.bytes_read += len(blob)
                    await asyncio.to_thread(open_wal, blob, name, repo.keys)
                except (IntegrityError, ObjectNotFound) as exc:
                    rep.problems.append(f"WAL file {name} is damaged here ({exc}); restores read it from "
                                        "another target while one holds it intact")
        out.append(rep)
    return out


async def missing_segments(repo: Repository, timeline: int, start_lsn: int | str, stop_lsn: int | str,
                           seg_size: int = DEFAULT_SEG_SIZE) -> list[str]:
    """The segments from ``start_lsn`` to ``stop_lsn`` (both included) that are not archived on every target."""
    have = (await list_wal(repo)).get(timeline, set())
    return [n for n in segments_between(timeline, start_lsn, stop_lsn, seg_size) if n not in have]


async def read_wal(repo: Repository, name: str) -> bytes:
    """One archived WAL file's bytes, checked; WalNotArchived when the archive does not hold it."""
    return (await WalArchive(repo).read(name)).data


async def push_wal(repo: Repository, name: str, data: bytes) -> PushResult:
    """Archive one WAL file (see :meth:`WalArchive.push`)."""
    return await WalArchive(repo).push(name, data)


def gaps(names: Iterable[str], seg_size: int) -> list[tuple[str, str]]:
    """Runs of segments missing between the first and the last archived one: (first missing, last missing)."""
    segnos = sorted({parse_segment_name(n, seg_size) for n in names})
    out = []
    for (tli, a), (_, b) in zip(segnos, segnos[1:], strict=False):
        if b > a + 1:
            out.append((segment_file(tli, a + 1, seg_size), segment_file(tli, b - 1, seg_size)))
    return out
