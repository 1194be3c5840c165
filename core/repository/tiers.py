"""Archive storage classes (FORMAT.md 12.6): which packs must be thawed before a restore can read them.

The S3 listing of ``data/`` reports each pack's storage class; nothing else
records it. A pack in GLACIER or DEEP_ARCHIVE cannot be read until a thaw
(S3 ``restore_object``) has made a temporary copy, which takes minutes to
days; every other class (STANDARD_IA, GLACIER_IR, ...) reads directly. A
restore scans the classes first, reads each pack from a target where it is
readable, and refuses in one line, naming the thaw command, when a pack it
needs is frozen everywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from core.errors import RestoreRefused, StorageError
from core.repository.index import Index
from core.repository.manifest import FileEntry
from core.repository.packs import DATA_PREFIX, pack_id_from_name, pack_object_name
from core.storage.base import Storage

# Classes whose objects must be thawed before a GET, and AWS's published thaw times per retrieval tier.
THAW_TIMES: dict[str, dict[str, str]] = {
    "GLACIER": {"Expedited": "1-5 minutes", "Standard": "3-5 hours", "Bulk": "5-12 hours"},
    "DEEP_ARCHIVE": {"Standard": "within 12 hours", "Bulk": "within 48 hours"},
}
THAW_TIERS = ("Expedited", "Standard", "Bulk")


def needs_thaw(storage_class: str | None) -> bool:
    """True for a class whose objects cannot be read without a thaw."""
    return storage_class in THAW_TIMES


def thawed(restore_header: str | None) -> bool:
    """True when S3's ``Restore`` header says a thawed copy is ready (``ongoing-request="false"``)."""
    return restore_header is not None and 'ongoing-request="false"' in restore_header


def times_text(storage_class: str) -> str:
    """``GLACIER: Expedited 1-5 minutes, Standard 3-5 hours, Bulk 5-12 hours``."""
    return f"{storage_class}: " + ", ".join(f"{t} {d}" for t, d in THAW_TIMES[storage_class].items())


def has_classes(st: Storage) -> bool:
    """True for a target whose objects carry a storage class (S3)."""
    return bool(getattr(st, "storage_classes", False))


def packs_of(files: Iterable[FileEntry], index: Index) -> dict[str, int]:
    """Pack id -> stored size of the packs ``files`` read (chunks not indexed are left to check_complete)."""
    out: dict[str, int] = {}
    for f in files:
        for hexid in f.chunks:
            loc = index.chunks.get(bytes.fromhex(hexid))
            if loc is not None and loc.pack_id not in out:
                out[loc.pack_id] = index.packs.get(loc.pack_id, 0)
    return out


@dataclass
class FrozenCopies:
    """Per target, the packs listed in a class that needs a thaw (and their class and size)."""

    by_target: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)

    @classmethod
    async def scan(cls, storages: Sequence[Storage]) -> FrozenCopies:
        """List ``data/`` on the targets that have storage classes; an unreachable one is left to the reader."""
        tiered = [st for st in storages if has_classes(st)]
        out = cls()
        listings = await asyncio.gather(*(st.list(DATA_PREFIX) for st in tiered), return_exceptions=True)
        for st, listing in zip(tiered, listings, strict=True):
            if isinstance(listing, BaseException):
                if not isinstance(listing, StorageError):
                    raise listing
                continue
            out.by_target[st.name] = {pack_id_from_name(o.name): (o.storage_class or "", o.size)
                                      for o in listing if needs_thaw(o.storage_class)}
        return out

    def packs(self) -> set[str]:
        """Every pack frozen on some target."""
        return set().union(*(set(p) for p in self.by_target.values())) if self.by_target else set()

    async def drop_thawed(self, storages: Sequence[Storage], wanted: Iterable[str]) -> None:
        """Forget the ``wanted`` packs whose thaw has finished (their ``Restore`` header says so): readable now."""
        want = set(wanted)
        for st in storages:
            frozen = self.by_target.get(st.name, {})
            for pid in sorted(want & set(frozen)):
                try:
                    _, restore, _ = await st.object_class(pack_object_name(pid))  # type: ignore[attr-defined]
                except StorageError:
                    continue
                if thawed(restore):
                    del frozen[pid]


def _short(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{nbytes} B"


async def plan_reads(storages: Sequence[Storage], frozen: FrozenCopies, needed: dict[str, int],
                     snapshot: str) -> tuple[dict[str, set[str]], list[str]]:
    """Which needed packs to avoid on which target, and notes; RestoreRefused when one is readable nowhere.

    ``storages`` are the targets the restore may read, best first; ``needed``
    maps pack id to size. The refusal is one line: which target holds the
    frozen packs, how many and how large, the thaw command and its times.
    """
    await frozen.drop_thawed(storages, needed)
    avoid = {st.name: set(needed) & set(frozen.by_target.get(st.name, {})) for st in storages}
    stuck = {pid for pid in needed if all(pid in avoid[st.name] for st in storages)} if storages else set()
    notes: list[str] = []
    for st in storages:
        moved = avoid[st.name] - stuck
        if moved:
            classes = sorted({frozen.by_target[st.name][p][0] for p in moved})
            notes.append(f"{len(moved)} pack(s) this restore needs are in {'/'.join(classes)} on target '{st.name}' "
                         "(they must be thawed there); they are read from another target instead")
    if stuck:
        where = next(st.name for st in storages if stuck & avoid[st.name])
        held = frozen.by_target[where]
        classes = sorted({held[p][0] for p in stuck if p in held})
        nbytes = sum(needed.get(p) or held[p][1] for p in stuck if p in held)
        raise RestoreRefused(
            f"snapshot {snapshot[:8]} needs {len(stuck)} object(s) ({_short(nbytes)}) that are in "
            f"{'/'.join(classes)} on target '{where}' and no other target holds a readable copy; thaw them first: "
            f"`backstop archive thaw --snapshot {snapshot[:8]} --target {where} [--tier Expedited|Standard|Bulk]` "
            f"(expected: {'; '.join(times_text(c) for c in classes)}), then run the restore again")
    return {n: s for n, s in avoid.items() if s}, notes
