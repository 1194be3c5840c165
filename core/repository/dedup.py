"""What a backup may deduplicate against, and what its "verified" really covers.

A backup references a stored chunk instead of storing it again only when
that chunk's pack is listed by an intact index object present on every
target, is not in quarantine, and is present with the right size on every
target right now (one listing per target). Anything else is stored afresh,
so a new snapshot never depends on a copy known to be damaged or missing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from core.errors import IntegrityError
from core.repository import quarantine
from core.repository.index import INDEX_PREFIX, Index, IndexFile
from core.repository.manifest import Manifest
from core.repository.packs import DATA_PREFIX, pack_id_from_name
from core.repository.repo import Repository
from core.repository.rollforward import complete_manifests
from core.repository.tiers import needs_thaw


@dataclass
class DedupIndex:
    """The index a backup deduplicates against, and what was left out of it and why."""

    index: Index
    warnings: list[str] = field(default_factory=list)
    quarantined: set[str] = field(default_factory=set)
    marked: set[str] = field(default_factory=set)  # packs prune marked for deletion: left out


async def backup_index(repo: Repository) -> DedupIndex:
    """Load the dedup index: intact, common to every target, out of quarantine, present everywhere.

    The caller holds a repository lock: a manifest an interrupted backup left
    on some targets only is completed on the others here (core.repository.rollforward).
    """
    held = await quarantine.load(repo)
    index = await repo.load_index(common=True, avoid=held)
    out = DedupIndex(index)
    for name, why in sorted(index.damaged.items()):
        out.warnings.append(f"index object {name[len(INDEX_PREFIX):][:16]} cannot be read from any target ({why}); "
                            "the chunks it lists are stored again; run `backstop repair index`")
    listings = await asyncio.gather(*(st.list(DATA_PREFIX) for st in repo.storages))
    findings: list[quarantine.Finding] = []
    for st, listing in zip(repo.storages, listings, strict=True):
        sizes = {pack_id_from_name(o.name): o.size for o in listing}
        for pid, size in index.packs.items():
            if pid in held:
                continue
            have = sizes.get(pid)
            if have is None:
                findings.append(quarantine.Finding(pid, st.name, "missing"))
            elif have != size:
                findings.append(quarantine.Finding(pid, st.name, f"wrong size ({have} bytes, expected {size})"))
    if findings:
        newly = await quarantine.add(repo, findings, "backup")
        held |= set(newly)
        for f in findings:
            out.warnings.append(f"target '{f.target}': pack {f.pack_id[:16]} is {f.problem}; quarantined, "
                                "its chunks are stored again")
    out.quarantined = held
    index.drop_packs(held)
    # A pack in a class that must be thawed (FORMAT.md 12.6) is never referenced anew: a new snapshot
    # stores those chunks again rather than depend on a copy a restore could not read without a thaw.
    index.drop_packs({pack_id_from_name(o.name) for lst in listings for o in lst if needs_thaw(o.storage_class)})
    rolled = await complete_manifests(repo, index)
    for sid, where in rolled.completed.items():
        out.warnings.append(f"snapshot {sid[:8]}, left on some targets only by an interrupted backup, was completed "
                            f"on {', '.join(where)}")
    for sid, why in rolled.left.items():
        out.warnings.append(f"snapshot {sid[:8]} is on some targets only and was left as it is: {why}; "
                            "see `backstop check`")
    # A pack prune has marked for deletion (FORMAT.md 17.2) is never referenced anew: a later prune may delete
    # it once the grace period has passed, and this backup might outlive the check that would rescue it.
    try:
        out.marked = set((await repo.load_marks()).packs)
    except IntegrityError as exc:
        # Unreadable marks stop prune from deleting anything, so deduplicating against them is still safe.
        out.warnings.append(str(exc))
    index.drop_packs(out.marked)
    return out


def snapshot_packs(manifest: Manifest, index: Index, new: Index | IndexFile | None = None) -> set[str]:
    """The packs a snapshot's chunks are located in (``new`` first: this backup's own packs)."""
    out: set[str] = set()
    for cid in manifest.chunk_ids():
        loc = (new.chunks.get(cid) if new else None) or index.chunks.get(cid)
        if loc is not None:
            out.add(loc.pack_id)
    return out
