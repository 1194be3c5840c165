"""The index: which pack holds each chunk.

Each backup writes one encrypted index object listing the packs it added.
In memory the union of all index objects maps chunk id -> location.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import NamedTuple

from core.errors import IntegrityError
from core.repository.crypto import open_object, seal_object
from core.repository.keys import DataKey
from core.repository.packs import Pack

INDEX_PREFIX = "index/"
_KIND = b"index"


class Location(NamedTuple):
    """Where a chunk is stored (a tuple: the index can hold millions)."""

    pack_id: str
    key_version: int
    offset: int
    length: int
    raw_length: int


@dataclass
class IndexFile:
    """The content of one index object."""

    packs: dict[str, int] = field(default_factory=dict)  # pack id -> pack size
    chunks: dict[bytes, Location] = field(default_factory=dict)

    def add_pack(self, pack: Pack) -> None:
        """Record every blob of a finished pack."""
        self.packs[pack.id] = len(pack.data)
        for b in pack.blobs:
            self.chunks[b.id] = Location(pack.id, b.key_version, b.offset, b.length, b.raw_length)

    def seal(self, key: DataKey) -> tuple[str, bytes]:
        """Serialise and encrypt; returns (object name, bytes)."""
        by_pack: dict[str, list[list[object]]] = {p: [] for p in self.packs}
        for cid, loc in self.chunks.items():
            by_pack[loc.pack_id].append([cid.hex(), loc.key_version, loc.offset, loc.length, loc.raw_length])
        doc = {"packs": [{"id": p, "size": s, "blobs": by_pack[p]} for p, s in self.packs.items()]}
        data = seal_object(json.dumps(doc, separators=(",", ":")).encode(), _KIND, key)
        return f"{INDEX_PREFIX}{hashlib.sha256(data).hexdigest()}", data

    @classmethod
    def open(cls, data: bytes, keys: dict[int, DataKey]) -> IndexFile:
        """Decrypt and parse an index object."""
        out = cls()
        try:
            doc = json.loads(open_object(data, _KIND, keys))
            for p in doc["packs"]:
                out.packs[p["id"]] = int(p["size"])
                for cid, kv, off, ln, raw in p["blobs"]:
                    out.chunks[bytes.fromhex(cid)] = Location(p["id"], kv, off, ln, raw)
        except (ValueError, KeyError, TypeError):
            raise IntegrityError("index object is malformed") from None
        return out


@dataclass
class Index:
    """The union of index objects: chunk -> location, pack -> size."""

    chunks: dict[bytes, Location] = field(default_factory=dict)
    packs: dict[str, int] = field(default_factory=dict)
    files: set[str] = field(default_factory=set)  # index object names merged
    file_packs: dict[str, set[str]] = field(default_factory=dict)  # index object name -> the packs it lists
    # Index objects no target could deliver intact (name -> why): what they
    # listed is unknown until `backstop repair index` re-reads the pack headers.
    damaged: dict[str, str] = field(default_factory=dict)

    def merge(self, name: str, f: IndexFile, avoid: frozenset[str] | set[str] = frozenset()) -> None:
        """Add one index object's content; a location in an ``avoid`` pack never replaces one outside it."""
        self.files.add(name)
        self.file_packs[name] = set(f.packs)
        self.packs.update(f.packs)
        if not avoid:
            self.chunks.update(f.chunks)
            return
        for cid, loc in f.chunks.items():
            old = self.chunks.get(cid)
            if old is not None and loc.pack_id in avoid and old.pack_id not in avoid:
                continue
            self.chunks[cid] = loc

    def drop_packs(self, packs: set[str]) -> int:
        """Forget every chunk located in ``packs`` (a backup must not reference them); returns how many."""
        if not packs:
            return 0
        gone = [cid for cid, loc in self.chunks.items() if loc.pack_id in packs]
        for cid in gone:
            del self.chunks[cid]
        for p in packs:
            self.packs.pop(p, None)
        return len(gone)

    def __contains__(self, cid: bytes) -> bool:
        return cid in self.chunks
