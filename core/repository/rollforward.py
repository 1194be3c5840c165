"""Finishing a commit a crash interrupted between targets (FORMAT.md 11, crash table, stage 5).

A backup writes its manifest to every target last. A crash (or a power cut)
between two targets' writes leaves a complete snapshot on some targets only:
restorable there, missing elsewhere, and `check` says so for ever. The next
writer (backup or prune, under its lock) rolls it forward: once every chunk
the manifest needs is in the index objects every target holds, in packs
present on every target and out of quarantine (the dedup index), the
manifest is copied to the targets lacking it and read back. A manifest whose
data is not everywhere stays where it is and is reported: taking it back
would delete a restorable snapshot.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from core.errors import BackstopError, StorageError
from core.repository.index import Index
from core.repository.manifest import SNAPSHOT_PREFIX, Manifest
from core.repository.repo import Repository, sha256_hex
from core.storage.base import Storage
from core.storage.immutability import is_append_only


@dataclass
class RollForward:
    """Manifests completed on the targets that lacked them, and those left as they were (with why)."""

    completed: dict[str, list[str]] = field(default_factory=dict)  # snapshot id -> targets it was copied to
    left: dict[str, str] = field(default_factory=dict)  # snapshot id -> why it was not


async def complete_manifests(repo: Repository, index: Index) -> RollForward:
    """Copy manifests present on some targets only to the others, when ``index`` shows their data everywhere."""
    out = RollForward()
    listings = await asyncio.gather(*(st.list(SNAPSHOT_PREFIX) for st in repo.storages))
    held = [{o.name[len(SNAPSHOT_PREFIX):] for o in lst} for lst in listings]
    every = set.intersection(*held) if held else set()
    for sid in sorted(set().union(*held) - every):
        holders = [st for st, have in zip(repo.storages, held, strict=True) if sid in have]
        lacking = [st for st, have in zip(repo.storages, held, strict=True) if sid not in have]
        if all(is_append_only(st) for st in holders) and not all(is_append_only(st) for st in repo.storages):
            continue  # forgotten: an append-only target keeps what forget deleted elsewhere (FORMAT.md 23)
        data = await _intact_copy(holders, sid)
        if data is None:
            out.left[sid] = "no target holds an intact copy of its manifest"
            continue
        try:
            manifest = Manifest.open(data, repo.keys)
        except BackstopError as exc:
            out.left[sid] = f"its manifest cannot be read ({exc})"
            continue
        missing = [c for c in manifest.chunk_ids() if c not in index.chunks]
        if missing:
            out.left[sid] = f"{len(missing)} of its chunks are not stored on every target yet"
            continue
        name = f"{SNAPSHOT_PREFIX}{sid}"
        for st in lacking:
            await st.put(name, data)
            if sha256_hex(await st.get(name)) != sid:
                raise StorageError(st.name, f"read-back of {name} does not match what was written")
        out.completed[sid] = [st.name for st in lacking]
    return out


async def _intact_copy(holders: list[Storage], sid: str) -> bytes | None:
    for st in holders:
        try:
            data = await st.get(f"{SNAPSHOT_PREFIX}{sid}")
        except StorageError:
            continue
        if sha256_hex(data) == sid:
            return data
    return None
