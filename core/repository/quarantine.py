"""Quarantine: packs known to be damaged or missing somewhere, recorded in the repository (FORMAT.md 19).

Damage found by `check --read-data`, `verify` or a restore puts the pack in
quarantine: ``quarantine/<pack id>`` on every reachable target, a sealed
record of what was found where. From then on a backup never deduplicates
against a chunk whose only indexed copy is in a quarantined pack: it stores
a fresh copy, and because chunk ids name content, the index then points
older snapshots at the fresh copy too, which heals them. A pack leaves
quarantine when a read-data check finds it intact on every target, or when
prune deletes it.

Only real damage counts (a checksum or authentication failure, a missing or
wrong-size object on a target that answered); an unreachable target is not
damage and quarantines nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from core.errors import BackstopError, IntegrityError, ObjectDamaged, ObjectNotFound
from core.repository.crypto import open_object, seal_object
from core.repository.repo import Repository

QUARANTINE_PREFIX = "quarantine/"
QUARANTINE_KIND = b"quarantine"


@dataclass(frozen=True)
class Finding:
    """One damaged or missing copy of a pack."""

    pack_id: str
    target: str
    problem: str


def is_damage(exc: BaseException) -> bool:
    """A failed read that proves a copy bad (not a target that did not answer)."""
    return isinstance(exc, (IntegrityError, ObjectNotFound, ObjectDamaged))


def object_name(pack_id: str) -> str:
    return f"{QUARANTINE_PREFIX}{pack_id}"


async def load(repo: Repository) -> set[str]:
    """Ids of quarantined packs, from every reachable target (a listing; nothing is decrypted)."""
    found = {n[len(QUARANTINE_PREFIX):] for n in await repo.names_anywhere(QUARANTINE_PREFIX)}
    return {p for p in found if len(p) == 64}


async def records(repo: Repository) -> dict[str, dict[str, object]]:
    """Quarantined pack id -> its record (what was found, where, by what, when)."""
    out: dict[str, dict[str, object]] = {}
    for pid in sorted(await load(repo)):
        for st in repo.storages:
            try:
                doc = json.loads(open_object(await st.get(object_name(pid)), QUARANTINE_KIND, repo.keys))
            except (BackstopError, ValueError):
                continue
            if isinstance(doc, dict) and doc.get("pack") == pid:
                out[pid] = doc
                break
        else:
            out[pid] = {"pack": pid, "targets": {}, "found_by": "unknown"}
    return out


async def add(repo: Repository, findings: list[Finding], found_by: str) -> list[str]:
    """Quarantine the packs of ``findings`` on every reachable target; returns their ids (best effort)."""
    by_pack: dict[str, dict[str, str]] = {}
    for f in findings:
        by_pack.setdefault(f.pack_id, {})[f.target] = f.problem
    for pid, where in sorted(by_pack.items()):
        doc = {"pack": pid, "targets": where, "found_by": found_by, "at": time.time()}
        data = seal_object(json.dumps(doc, sort_keys=True).encode(), QUARANTINE_KIND, repo.key)
        await asyncio.gather(*(st.put(object_name(pid), data) for st in repo.storages), return_exceptions=True)
    return sorted(by_pack)


async def release(repo: Repository, pack_ids: set[str] | list[str]) -> None:
    """Take packs out of quarantine (intact everywhere again, or deleted)."""
    for pid in sorted(pack_ids):
        await asyncio.gather(*(st.delete(object_name(pid)) for st in repo.storages), return_exceptions=True)
