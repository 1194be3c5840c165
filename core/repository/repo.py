"""A repository replicated on several targets: config, keys, objects, locks."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import AsyncIterator

from core.config import RepositoryConfig
from core.errors import (
    IntegrityError,
    LockConflict,
    ObjectNotFound,
    RepositoryError,
    RepositoryNotInitialised,
    StorageError,
)
from core.repository.index import INDEX_PREFIX, Index, IndexFile
from core.repository.keys import (
    KEY_PREFIX,
    DataKey,
    key_object_name,
    new_data_key,
    unwrap_data_key,
    wrap_data_key,
)
from core.repository.manifest import SNAPSHOT_PREFIX, Manifest
from core.storage.base import Storage

CONFIG_NAME = "config"
LOCK_PREFIX = "locks/"
# Copies of the audit log and of the operator records (core/security), sealed
# envelopes of these kinds. Named by position or name, not content: replaced in place.
AUDIT_PREFIX = "audit/"
AUDIT_KIND = b"audit"
OPERATOR_PREFIX = "operators/"
OPERATOR_KIND = b"operator"
RECORD_KINDS = {AUDIT_PREFIX: AUDIT_KIND, OPERATOR_PREFIX: OPERATOR_KIND}
FORMAT_VERSION = 1
# Holders rewrite their lock this often; one not rewritten for STALE_LOCK_SECONDS
# was left by a crashed process and no longer blocks.
LOCK_REFRESH_SECONDS = 300
STALE_LOCK_SECONDS = 3600


@dataclass(frozen=True)
class RepoParams:
    """The plaintext `config` object: identity and fixed parameters."""

    repo_id: str
    version: int
    chunk_avg: int
    chunk_min: int
    chunk_max: int
    pack_target: int
    compression_level: int
    created: str

    @classmethod
    def new(cls, cfg: RepositoryConfig) -> "RepoParams":
        avg = cfg.chunk_avg_kib * 1024
        return cls(
            repo_id=uuid.uuid4().hex,
            version=FORMAT_VERSION,
            chunk_avg=avg,
            chunk_min=avg // 4,
            chunk_max=avg * 4,
            pack_target=cfg.pack_target_mib * 1024 * 1024,
            compression_level=cfg.compression_level,
            created=_now(),
        )

    def to_bytes(self) -> bytes:
        return json.dumps({"format": "backstop-repository", **asdict(self)}, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "RepoParams":
        try:
            doc = json.loads(data)
            if doc.pop("format") != "backstop-repository":
                raise ValueError
            version = int(doc["version"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RepositoryError(f"{where}: the config object is not a backstop repository config") from None
        if version > FORMAT_VERSION:
            raise RepositoryError(f"{where}: repository format {version} is newer than this backstop; upgrade it")
        try:
            return cls(**doc)
        except TypeError:
            raise RepositoryError(f"{where}: the repository config object is damaged") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256, the checksum recorded for every stored object."""
    return hashlib.sha256(data).hexdigest()


async def _read_config(st: Storage) -> RepoParams | None:
    try:
        return RepoParams.from_bytes(await st.get(CONFIG_NAME), f"target '{st.name}'")
    except ObjectNotFound:
        return None


class Repository:
    """One logical repository, identical on every target."""

    def __init__(self, storages: list[Storage], params: RepoParams, keys: dict[int, DataKey],
                 unreachable: dict[str, str] | None = None, passphrase: bytes = b"") -> None:
        self.storages = storages
        self.params = params
        self.keys = keys
        self._passphrase = passphrase  # kept to check each target's own key objects
        # Targets that could not be opened (name -> message), when tolerated.
        self.unreachable = unreachable or {}

    # -- opening -----------------------------------------------------------

    @classmethod
    async def init(cls, storages: list[Storage], passphrase: bytes, cfg: RepositoryConfig) -> tuple["Repository", list[str]]:
        """Create the repository on every target that lacks it; returns it and those targets.

        Idempotent. Refuses when an existing repository does not open with this
        passphrase, or when targets already hold different repositories.
        """
        found = await asyncio.gather(*(_read_config(s) for s in storages))
        existing = {p.repo_id: (p, s) for p, s in zip(found, storages) if p is not None}
        if len(existing) > 1:
            names = ", ".join(s.name for _, s in existing.values())
            raise RepositoryError(f"targets {names} hold different repositories; give each repository its own targets")
        if existing:
            params, src = next(iter(existing.values()))
            key_objects = await _read_key_objects(src)
            keys = _unwrap_all(key_objects, passphrase, params.repo_id, f"target '{src.name}'")
        else:
            params = RepoParams.new(cfg)
            dek = new_data_key(1)
            key_objects = {key_object_name(1): wrap_data_key(dek, passphrase, params.repo_id)}
            keys = {1: dek}
        created = []
        for st, p in zip(storages, found):
            if p is not None:
                continue
            # Keys first, config last: a target counts as initialised only
            # once everything needed to open it is there.
            for name, data in key_objects.items():
                await st.put(name, data)
            await st.put(CONFIG_NAME, params.to_bytes())
            created.append(st.name)
        return cls(storages, params, keys, passphrase=passphrase), created

    @classmethod
    async def open(cls, storages: list[Storage], passphrase: bytes, require_all: bool = True) -> "Repository":
        """Open the repository; with ``require_all=False`` unreachable targets are only noted."""
        results = await asyncio.gather(*(_read_config(s) for s in storages), return_exceptions=True)
        usable: list[tuple[Storage, RepoParams]] = []
        unreachable: dict[str, str] = {}
        for st, res in zip(storages, results):
            if isinstance(res, StorageError):
                if require_all:
                    raise res
                unreachable[st.name] = str(res)
            elif isinstance(res, BaseException):
                raise res
            elif res is None:
                raise RepositoryNotInitialised(
                    f"target '{st.name}' ({st.describe()}) holds no repository; run `backstop init` first"
                )
            else:
                usable.append((st, res))
        if not usable:
            raise StorageError(storages[0].name if len(storages) == 1 else "all",
                               "no target could be reached: " + "; ".join(unreachable.values()))
        ids = {p.repo_id for _, p in usable}
        if len(ids) > 1:
            raise RepositoryError("the targets hold different repositories (repo ids differ); check the targets list")
        src, params = usable[0]
        keys = _unwrap_all(await _read_key_objects(src), passphrase, params.repo_id, f"target '{src.name}'")
        live = [s for s, _ in usable]
        return cls(live, params, keys, unreachable, passphrase)

    # -- keys ---------------------------------------------------------------

    async def verify_identity(self, st: Storage) -> list[str]:
        """Problems with a target's own config and key objects (empty when it opens on its own)."""
        where = f"target '{st.name}'"
        try:
            params = await _read_config(st)
            if params is None:
                return [f"{where}: the config object is missing"]
            if params.repo_id != self.params.repo_id:
                return [f"{where}: holds another repository ({params.repo_id[:8]})"]
            keys = _unwrap_all(await _read_key_objects(st), self._passphrase, params.repo_id, where)
        except (RepositoryError, StorageError) as exc:
            return [f"{where}: {exc}" if not str(exc).startswith(where) else str(exc)]
        missing = sorted(set(self.keys) - set(keys))
        if missing:
            return [f"{where}: key version(s) {missing} are missing from keys/"]
        return []

    @property
    def key(self) -> DataKey:
        """The data key new data is sealed with (the newest version)."""
        return self.keys[max(self.keys)]

    @property
    def id_key(self) -> bytes:
        return self.key.id_key

    # -- objects ------------------------------------------------------------

    async def put_all(self, name: str, data: bytes) -> None:
        """Write one object to every target, concurrently."""
        await asyncio.gather(*(s.put(name, data) for s in self.storages))

    async def verify_all(self, name: str, digest: str) -> None:
        """Read an object back from every target and compare its SHA-256."""
        async def one(st: Storage) -> None:
            got = sha256_hex(await st.get(name))
            if got != digest:
                raise IntegrityError(f"target '{st.name}': read-back of {name} does not match what was written")
        await asyncio.gather(*(one(s) for s in self.storages))

    async def delete_all(self, name: str) -> None:
        """Remove an object from every target, ignoring failures (best effort cleanup)."""
        await asyncio.gather(*(s.delete(name) for s in self.storages), return_exceptions=True)

    async def get_any(self, name: str) -> tuple[bytes, Storage]:
        """Fetch an object from the first target that has an intact copy."""
        errors: list[str] = []
        for st in self.storages:
            try:
                return await st.get(name), st
            except StorageError as exc:
                errors.append(str(exc))
        raise RepositoryError(f"{name} could not be read from any target: " + "; ".join(errors))

    # -- index --------------------------------------------------------------

    async def load_index(self, storage: Storage | None = None, common: bool = True) -> Index:
        """Merge the index objects of the targets (or of ``storage`` only).

        With ``common`` (backups), an index object missing from some target (a
        backup that failed half way through its commit) is left out, so its
        chunks are stored again rather than referenced where a copy may be
        missing. Without it (restores), every index object any target holds
        counts, read from whichever target has an intact copy.
        """
        stores = [storage] if storage else self.storages
        listings = await asyncio.gather(*(s.list(INDEX_PREFIX) for s in stores))
        sets = [{o.name for o in lst} for lst in listings]
        names = set.intersection(*sets) if common else set.union(*sets)
        index = Index()
        for name in sorted(names):
            index.merge(name, await self._read_index(name, [s for s, have in zip(stores, sets) if name in have]))
        return index

    async def _read_index(self, name: str, stores: list[Storage]) -> IndexFile:
        errors = []
        for st in stores:
            try:
                data = await st.get(name)
                if sha256_hex(data) != name[len(INDEX_PREFIX):]:
                    raise IntegrityError(f"target '{st.name}': {name} is damaged (checksum mismatch)")
                return IndexFile.open(data, self.keys)
            except (StorageError, IntegrityError) as exc:
                errors.append(str(exc))
        raise IntegrityError("; ".join(errors) + "; run `backstop check`")

    # -- snapshots ----------------------------------------------------------

    async def snapshot_names(self, storage: Storage | None = None) -> set[str]:
        """Snapshot ids present on a target (the first one by default)."""
        st = storage or self.storages[0]
        return {o.name[len(SNAPSHOT_PREFIX):] for o in await st.list(SNAPSHOT_PREFIX)}

    async def read_manifest(self, sid: str) -> Manifest:
        """Fetch and decrypt a snapshot manifest, trying every target."""
        name = f"{SNAPSHOT_PREFIX}{sid}"
        errors: list[str] = []
        for st in self.storages:
            try:
                data = await st.get(name)
                if sha256_hex(data) != sid:
                    raise IntegrityError(f"target '{st.name}': {name} is damaged (checksum mismatch)")
                return Manifest.open(data, self.keys)
            except (StorageError, IntegrityError) as exc:
                errors.append(str(exc))
        raise RepositoryError(f"snapshot {sid[:8]} could not be read from any target: " + "; ".join(errors))

    # -- locks --------------------------------------------------------------

    @asynccontextmanager
    async def lock(self, kind: str, purpose: str) -> AsyncIterator[None]:
        """Hold a shared or exclusive lock on every target for the block's duration.

        The lock is rewritten every LOCK_REFRESH_SECONDS, so however long the
        holder runs it never looks stale; a crashed holder's lock goes stale
        after STALE_LOCK_SECONDS.
        """
        assert kind in ("shared", "exclusive")
        await self._check_lock_conflicts(kind)
        name = f"{LOCK_PREFIX}{uuid.uuid4().hex}"
        doc = {"kind": kind, "purpose": purpose, "host": socket.gethostname(), "pid": os.getpid(), "created": _now()}
        await self.put_all(name, json.dumps(doc).encode())
        refresher = asyncio.ensure_future(self._refresh_lock(name, doc))
        try:
            # Two processes may have passed the check at once: look again now
            # that ours is visible, and give way if we collide.
            await self._check_lock_conflicts(kind, ignore=name)
            yield
        finally:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            await self.delete_all(name)

    async def _refresh_lock(self, name: str, doc: dict[str, object]) -> None:
        while True:
            await asyncio.sleep(LOCK_REFRESH_SECONDS)
            try:
                await self.put_all(name, json.dumps({**doc, "refreshed": _now()}).encode())
            except StorageError:
                pass  # a missed refresh only matters after STALE_LOCK_SECONDS; the next try may work

    async def locks(self) -> list[dict[str, object]]:
        """Locks currently present on the first target, with a `stale` flag."""
        out = []
        st = self.storages[0]
        for o in await st.list(LOCK_PREFIX):
            try:
                doc = json.loads(await st.get(o.name))
                created = datetime.fromisoformat(doc.get("refreshed") or doc["created"])
                if created.tzinfo is None:
                    created = created.replace(tzinfo=timezone.utc)
            except (ObjectNotFound, ValueError, KeyError, TypeError):
                continue  # vanished meanwhile, or not a lock we can read: it cannot hold anything
            age = (datetime.now(timezone.utc) - created).total_seconds()
            out.append({**doc, "name": o.name, "stale": age > STALE_LOCK_SECONDS})
        return out

    async def _check_lock_conflicts(self, kind: str, ignore: str | None = None) -> None:
        for lk in await self.locks():
            if lk["stale"] or lk["name"] == ignore:
                continue
            if kind == "exclusive" or lk["kind"] == "exclusive":
                raise LockConflict(
                    f"the repository is locked ({lk['kind']}, {lk['purpose']}) by pid {lk['pid']} on {lk['host']} "
                    f"since {lk['created']}; wait for it to finish"
                )


async def _read_key_objects(st: Storage) -> dict[str, bytes]:
    objs = await st.list(KEY_PREFIX)
    if not objs:
        raise RepositoryError(f"target '{st.name}': keys/ is empty; the repository cannot be opened")
    return {o.name: await st.get(o.name) for o in objs}


def _unwrap_all(objects: dict[str, bytes], passphrase: bytes, repo_id: str, where: str) -> dict[int, DataKey]:
    keys: dict[int, DataKey] = {}
    for name in sorted(objects):
        dek = unwrap_data_key(objects[name], passphrase, repo_id, where)
        keys[dek.version] = dek
    return keys

