"""Packs prune has marked for deletion (FORMAT.md 17.2): the first of its two phases.

Prune never deletes a pack the moment nothing needs it: a backup running at
the same time may have loaded the index before and be about to reference
that pack's chunks. It first *marks* the pack (a ``marked/<sha256>`` object
records when, and where each of its chunks is) and drops it from the index,
so backups starting later store those chunks afresh. A later prune deletes
the pack once the mark is older than the grace period (longer than any
backup) and still no snapshot needs it; if a snapshot needs it again, that
prune writes its entries back into the index instead. Until then readers
(restore, check) still find the chunks through the mark.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from core.errors import IntegrityError
from core.repository.crypto import open_object, seal_object
from core.repository.index import Index, IndexFile, Location
from core.repository.keys import DataKey

MARKS_PREFIX = "marked/"
_KIND = b"marked"


@dataclass
class MarkedPack:
    """One marked pack: its size, when it was marked, and its chunks' locations (none for an unindexed pack)."""

    size: int
    marked_at: float
    chunks: dict[bytes, Location] = field(default_factory=dict)


@dataclass
class Marks:
    """The union of the ``marked/`` objects: pack id -> its mark (the earliest, where several objects list it)."""

    packs: dict[str, MarkedPack] = field(default_factory=dict)
    files: set[str] = field(default_factory=set)  # object names merged

    def merge(self, name: str, other: Marks) -> None:
        """Add one object's marks; a pack marked twice keeps its earlier time."""
        self.files.add(name)
        for pid, mark in other.packs.items():
            have = self.packs.get(pid)
            if have is None or mark.marked_at < have.marked_at:
                self.packs[pid] = mark

    def seal(self, key: DataKey) -> tuple[str, bytes]:
        """Serialise and encrypt; returns (object name, bytes)."""
        doc = {"packs": [{"id": pid, "size": m.size, "marked_at": m.marked_at,
                          "blobs": [[cid.hex(), loc.key_version, loc.offset, loc.length, loc.raw_length]
                                    for cid, loc in m.chunks.items()]}
                         for pid, m in sorted(self.packs.items())]}
        data = seal_object(json.dumps(doc, separators=(",", ":")).encode(), _KIND, key)
        return f"{MARKS_PREFIX}{hashlib.sha256(data).hexdigest()}", data

    @classmethod
    def open(cls, data: bytes, keys: dict[int, DataKey]) -> Marks:
        """Decrypt and parse a ``marked/`` object."""
        out = cls()
        try:
            doc = json.loads(open_object(data, _KIND, keys))
            for p in doc["packs"]:
                pid = str(p["id"])
                out.packs[pid] = MarkedPack(int(p["size"]), float(p["marked_at"]), {
                    bytes.fromhex(cid): Location(pid, kv, off, ln, raw) for cid, kv, off, ln, raw in p["blobs"]})
        except (ValueError, KeyError, TypeError):
            raise IntegrityError("marked-packs object is malformed") from None
        return out

    def fill(self, index: Index) -> None:
        """Add to ``index`` the chunks only marked packs hold, and those packs: what readers may still need.

        A marked pack all of whose chunks the index has elsewhere (debris, or a forgotten snapshot's
        copy) stays out: it is the next prune's to delete.
        """
        for pid, mark in self.packs.items():
            fresh = {cid: loc for cid, loc in mark.chunks.items() if cid not in index.chunks}
            if fresh:
                index.packs.setdefault(pid, mark.size)
                index.chunks.update(fresh)

    def as_index(self, pids: set[str] | None = None) -> IndexFile:
        """The marked packs (or ``pids`` of them) as index entries: to put them back, or to read through them."""
        out = IndexFile()
        for pid, m in self.packs.items():
            if pids is None or pid in pids:
                out.packs[pid] = m.size
                out.chunks.update(m.chunks)
        return out
