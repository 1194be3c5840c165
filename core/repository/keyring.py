"""Key rotation and retirement (FORMAT.md 5.4): the ``keys/`` objects over time.

- KEK rotation: every key object is wrapped again under a KEK from a fresh
  scrypt salt. Only ``keys/`` changes; no chunk, pack, index or manifest is
  touched or uploaded again.
- DEK rotation: a new DEK version with a fresh ``enc_key`` and the same
  ``id_key`` (so deduplication continues) is added; writers seal new data
  with it from then on. Old versions stay for the data they protect.
- Retirement: a DEK version's key object is deleted from every target, which
  makes whatever it still sealed unreadable for good. It is refused while
  anything reachable still needs it (see :func:`key_usage`); ``reencrypt``
  moves that data first.

All key objects written by one rotation share one KEK (one salt), so opening
the repository costs a single scrypt however many versions exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import struct
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from core.errors import IntegrityError, RepositoryError, StorageError
from core.repository.crypto import ENVELOPE_HEADER_SIZE, envelope_key_version
from core.repository.index import INDEX_PREFIX, IndexFile
from core.repository.keys import (
    KEY_PREFIX,
    DataKey,
    KdfParams,
    KeyObjectInfo,
    key_object_info,
    key_object_name,
    new_data_key,
    wrap_data_key,
)
from core.repository.manifest import SNAPSHOT_PREFIX
from core.repository.packs import pack_object_name
from core.repository.repo import RECORD_KINDS, Repository, sha256_hex
from core.storage.base import ObjectInfo, Storage

_TRAILER = struct.Struct(">I4s")
_PARALLEL = 16
T = TypeVar("T")


@dataclass(frozen=True)
class KeyStatus:
    """One DEK version as `key list` shows it (nothing secret)."""

    version: int
    dek_created: str
    wrapped_at: str
    kek_id: str  # first 8 hex of SHA-256(salt): equal ids share one KEK
    current: bool

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "dek_created": self.dek_created, "wrapped_at": self.wrapped_at,
                "kek_id": self.kek_id, "current": self.current}


async def read_key_objects(st: Storage) -> dict[str, bytes]:
    """Every object under ``keys/`` on one target."""
    return {o.name: await st.get(o.name) for o in await st.list(KEY_PREFIX)}


def _kek_id(params: KdfParams) -> str:
    return hashlib.sha256(params.salt).hexdigest()[:8]


async def key_status(repo: Repository) -> list[KeyStatus]:
    """The key versions of the repository, oldest first (from the first target)."""
    infos = [key_object_info(d) for d in (await read_key_objects(repo.storages[0])).values()]
    newest = max(repo.keys)
    return [KeyStatus(i.version, i.dek_created, i.created, _kek_id(i.kdf), i.version == newest)
            for i in sorted(infos, key=lambda i: i.version)]


def last_rotation(statuses: list[KeyStatus]) -> datetime:
    """When keys last changed: the newest wrap (a KEK rotation) or DEK creation."""
    stamps = [datetime.fromisoformat(s.wrapped_at) for s in statuses]
    stamps += [datetime.fromisoformat(s.dek_created) for s in statuses]
    return max(t if t.tzinfo else t.replace(tzinfo=UTC) for t in stamps)


def rotation_due(statuses: list[KeyStatus], every: timedelta, now: datetime | None = None) -> bool:
    """True when the policy ``every`` says the keys are due for rotation."""
    now = now or datetime.now(UTC)
    return now - last_rotation(statuses) >= every


async def _put_verified(repo: Repository, name: str, data: bytes) -> None:
    await repo.put_all(name, data)
    await repo.verify_all(name, sha256_hex(data))


async def sync_key_objects(repo: Repository) -> list[str]:
    """Copy key objects a target lacks from one that has them (after an interrupted rotation)."""
    per_target = [await read_key_objects(st) for st in repo.storages]
    union: dict[str, bytes] = {}
    for objs in per_target:
        for name, data in objs.items():
            union.setdefault(name, data)
    copied = []
    for st, objs in zip(repo.storages, per_target, strict=True):
        for name in sorted(set(union) - set(objs)):
            await st.put(name, union[name])
            copied.append(f"{name} -> {st.name}")
    return copied


async def _current_infos(repo: Repository) -> dict[int, KeyObjectInfo]:
    objs = await read_key_objects(repo.storages[0])
    return {i.version: i for i in (key_object_info(d) for d in objs.values())}


async def rotate_kek(repo: Repository, passphrase: bytes) -> str:
    """Wrap every DEK again under a KEK from a fresh salt; returns the new KEK id.

    Each key object is replaced atomically on every target; a crash half way
    leaves some objects under the old salt and some under the new, and both
    open with the same passphrase, so running it again simply finishes it.
    """
    infos = await _current_infos(repo)
    params = KdfParams(salt=secrets.token_bytes(16))
    for version in sorted(repo.keys):
        dek = repo.keys[version]
        info = infos.get(version)
        data = wrap_data_key(dek, passphrase, repo.params.repo_id, params,
                             dek_created=info.dek_created if info else None)
        await _put_verified(repo, key_object_name(version), data)
    return _kek_id(params)


async def rotate_dek(repo: Repository, passphrase: bytes) -> DataKey:
    """Add a new DEK version (same ``id_key``); new data is sealed with it from now on."""
    infos = await _current_infos(repo)
    newest = max(repo.keys)
    version = newest + 1
    dek = new_data_key(version, id_key=repo.keys[newest].id_key)
    params = infos[newest].kdf if newest in infos else None  # the current KEK: one scrypt per open
    name = key_object_name(version)
    try:
        await _put_verified(repo, name, wrap_data_key(dek, passphrase, repo.params.repo_id, params))
    except BaseException:
        # A key on some targets only must never be used: take it back everywhere.
        await repo.delete_all(name)
        raise
    repo.keys[version] = dek
    return dek


# -- what still needs a key ------------------------------------------------------


@dataclass
class KeyUsage:
    """Stored things sealed with one DEK version."""

    chunks: int = 0  # index entries of blobs sealed with it
    pack_headers: int = 0
    index_objects: int = 0
    manifests: int = 0
    records: int = 0  # audit log copies and operator records
    packs: set[str] = field(default_factory=set)  # packs holding such blobs or headers

    @property
    def total(self) -> int:
        return self.chunks + self.pack_headers + self.index_objects + self.manifests + self.records

    def describe(self) -> str:
        parts = [(self.chunks, "chunk", "chunks"), (self.pack_headers, "pack header", "pack headers"),
                 (self.index_objects, "index object", "index objects"),
                 (self.manifests, "snapshot manifest", "snapshot manifests"),
                 (self.records, "audit/operator record", "audit/operator records")]
        return ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in parts if n) or "nothing"

    def to_json(self) -> dict[str, int]:
        return {"chunks": self.chunks, "pack_headers": self.pack_headers, "index_objects": self.index_objects,
                "manifests": self.manifests, "records": self.records, "packs": len(self.packs)}


async def union_listing(repo: Repository, prefix: str) -> dict[str, ObjectInfo]:
    """Objects under ``prefix`` on any target (first listing wins)."""
    out: dict[str, ObjectInfo] = {}
    for lst in await asyncio.gather(*(st.list(prefix) for st in repo.storages)):
        for o in lst:
            out.setdefault(o.name, o)
    return out


async def envelope_version(repo: Repository, name: str, offset: int = 0) -> int:
    """The DEK version in the envelope header at ``offset`` of an object (any target)."""
    errors = []
    for st in repo.storages:
        try:
            return envelope_key_version(await st.get_range(name, offset, ENVELOPE_HEADER_SIZE))
        except (StorageError, IntegrityError) as exc:
            errors.append(str(exc))
    raise RepositoryError(f"cannot read {name} from any target: " + "; ".join(errors))


async def pack_header_version(repo: Repository, pack_id: str, size: int) -> int:
    """The DEK version a pack's header envelope is sealed with (two small ranged reads)."""
    name = pack_object_name(pack_id)
    errors = []
    for st in repo.storages:
        try:
            hlen, magic = _TRAILER.unpack(await st.get_range(name, size - _TRAILER.size, _TRAILER.size))
            if magic != b"BKP1" or hlen > size - _TRAILER.size:
                raise IntegrityError(f"{name}: pack trailer is damaged")
            return await envelope_version(repo, name, size - _TRAILER.size - hlen)
        except (StorageError, IntegrityError, RepositoryError) as exc:
            errors.append(str(exc))
    raise RepositoryError(f"cannot read the header of {name} from any target: " + "; ".join(errors))


async def bounded_gather(coros: list[Awaitable[T]]) -> list[T]:
    """Await many small reads, at most a few at a time (S3 connection pools are small)."""
    sem = asyncio.Semaphore(_PARALLEL)

    async def one(c: Awaitable[T]) -> T:
        async with sem:
            return await c
    return list(await asyncio.gather(*(one(c) for c in coros)))


@dataclass
class KeyScan:
    """Where each DEK version is used, plus what the scan read on the way."""

    usage: dict[int, KeyUsage]
    index_versions: dict[str, int]  # index object name -> envelope version
    manifest_versions: dict[str, int]  # snapshot id -> envelope version
    pack_versions: dict[str, int]  # pack id -> header version
    index_files: dict[str, IndexFile]


async def scan_key_usage(repo: Repository) -> KeyScan:
    """Count, per DEK version, every stored thing that needs it (all reachable targets).

    Index entries count whether or not a snapshot still references the
    chunk: a listed chunk may be deduplicated against by the next backup.
    """
    usage: dict[int, KeyUsage] = {v: KeyUsage() for v in repo.keys}

    def u(v: int) -> KeyUsage:
        return usage.setdefault(v, KeyUsage())

    index_names = sorted(await union_listing(repo, INDEX_PREFIX))
    index_files: dict[str, IndexFile] = {}
    index_versions: dict[str, int] = {}
    packs: dict[str, int] = {}
    for name in index_names:
        data, _ = await repo.get_any(name)
        if sha256_hex(data) != name[len(INDEX_PREFIX):]:
            raise IntegrityError(f"{name} is damaged (checksum mismatch); run `backstop check`")
        index_versions[name] = envelope_key_version(data)
        u(index_versions[name]).index_objects += 1
        f = index_files[name] = IndexFile.open(data, repo.keys)
        packs.update(f.packs)
        for loc in f.chunks.values():
            u(loc.key_version).chunks += 1
            u(loc.key_version).packs.add(loc.pack_id)
    pack_ids = sorted(packs)
    versions = await bounded_gather([pack_header_version(repo, p, packs[p]) for p in pack_ids])
    pack_versions = dict(zip(pack_ids, versions, strict=True))
    for p, v in pack_versions.items():
        u(v).pack_headers += 1
        u(v).packs.add(p)
    snaps = sorted(await union_listing(repo, SNAPSHOT_PREFIX))
    versions = await bounded_gather([envelope_version(repo, n) for n in snaps])
    manifest_versions = {n[len(SNAPSHOT_PREFIX):]: v for n, v in zip(snaps, versions, strict=True)}
    for v in versions:
        u(v).manifests += 1
    records = [n for prefix in RECORD_KINDS for n in sorted(await union_listing(repo, prefix))]
    for v in await bounded_gather([envelope_version(repo, n) for n in records]):
        u(v).records += 1
    return KeyScan(usage, index_versions, manifest_versions, pack_versions, index_files)


async def retire_key(repo: Repository, version: int) -> None:
    """Delete DEK ``version``'s key object from every target (the caller checked it is unused)."""
    if version == max(repo.keys):
        raise RepositoryError(f"data key {version} is the current key; rotate (`backstop key rotate --dek`) first")
    if version not in repo.keys:
        raise RepositoryError(f"there is no data key {version}; see `backstop key list`")
    name = key_object_name(version)
    await asyncio.gather(*(st.delete(name) for st in repo.storages))
    for st in repo.storages:
        if await st.exists(name):
            raise StorageError(st.name, f"{name} is still present after deleting it")
    del repo.keys[version]
