"""Packs: many sealed chunks in one object, with an encrypted header at the end.

Layout: ``blob* | sealed header | u32 header length | b"BKP1"``. The header
lists every blob (id, DEK version, offset, length, plaintext length), so a
pack describes itself and the index can be rebuilt from packs alone. The
pack's name is the SHA-256 of its bytes, which makes every pack
self-verifying.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import IntegrityError
from core.repository.crypto import open_object, seal_object
from core.repository.keys import DataKey

if TYPE_CHECKING:
    from core.storage.base import Storage

PACK_MAGIC = b"BKP1"
DATA_PREFIX = "data/"
_ENTRY = struct.Struct(">32sIQII")  # id, dek version, offset, length, raw length
_TRAILER = struct.Struct(">I4s")
_HEADER_KIND = b"packheader"


def pack_object_name(pack_id: str) -> str:
    """Repository path of a pack: data/<first two hex digits>/<id>."""
    return f"{DATA_PREFIX}{pack_id[:2]}/{pack_id}"


def pack_id_from_name(name: str) -> str:
    """The pack id in an object name under data/."""
    return name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class BlobEntry:
    """Where one sealed chunk lives inside a pack."""

    id: bytes
    key_version: int
    offset: int
    length: int
    raw_length: int


@dataclass(frozen=True)
class Pack:
    """A finished pack, ready to upload."""

    id: str
    data: bytes
    blobs: list[BlobEntry]

    @property
    def name(self) -> str:
        return pack_object_name(self.id)


class PackBuilder:
    """Accumulates sealed chunks until the pack is large enough to ship."""

    def __init__(self, target_size: int) -> None:
        self.target_size = target_size
        self._parts: list[bytes] = []
        self._blobs: list[BlobEntry] = []
        self._size = 0

    def add(self, cid: bytes, key_version: int, blob: bytes, raw_length: int) -> None:
        """Append one sealed chunk."""
        self._blobs.append(BlobEntry(cid, key_version, self._size, len(blob), raw_length))
        self._parts.append(blob)
        self._size += len(blob)

    @property
    def full(self) -> bool:
        return self._size >= self.target_size

    def __len__(self) -> int:
        return len(self._blobs)

    def finish(self, key: DataKey) -> Pack:
        """Seal the header, name the pack by its SHA-256, and reset."""
        header = b"".join(_ENTRY.pack(b.id, b.key_version, b.offset, b.length, b.raw_length) for b in self._blobs)
        sealed = seal_object(header, _HEADER_KIND, key)
        self._parts.append(sealed)
        self._parts.append(_TRAILER.pack(len(sealed), PACK_MAGIC))
        data = b"".join(self._parts)
        pack = Pack(id=hashlib.sha256(data).hexdigest(), data=data, blobs=self._blobs)
        self._parts, self._blobs, self._size = [], [], 0
        return pack


def read_pack_header(data: bytes, keys: dict[int, DataKey]) -> list[BlobEntry]:
    """Parse the blob list of a whole pack (used by check and index rebuild)."""
    if len(data) < _TRAILER.size:
        raise IntegrityError("pack is truncated")
    hlen, magic = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    if magic != PACK_MAGIC or hlen > len(data) - _TRAILER.size:
        raise IntegrityError("pack trailer is damaged")
    start = len(data) - _TRAILER.size - hlen
    header = open_object(data[start: start + hlen], _HEADER_KIND, keys)
    if len(header) % _ENTRY.size:
        raise IntegrityError("pack header is damaged")
    return [BlobEntry(*_ENTRY.unpack_from(header, i)) for i in range(0, len(header), _ENTRY.size)]


async def fetch_pack_header(st: Storage, pack_id: str, size: int, keys: dict[int, DataKey]) -> list[BlobEntry]:
    """A stored pack's blob list, read with two ranged reads (trailer, then header), not the whole pack."""
    name = pack_object_name(pack_id)
    if size < _TRAILER.size:
        raise IntegrityError("pack is truncated")
    hlen, magic = _TRAILER.unpack(await st.get_range(name, size - _TRAILER.size, _TRAILER.size))
    if magic != PACK_MAGIC or hlen > size - _TRAILER.size:
        raise IntegrityError("pack trailer is damaged")
    sealed = await st.get_range(name, size - _TRAILER.size - hlen, hlen)
    header = open_object(sealed, _HEADER_KIND, keys)
    if len(header) % _ENTRY.size:
        raise IntegrityError("pack header is damaged")
    entries = [BlobEntry(*_ENTRY.unpack_from(header, i)) for i in range(0, len(header), _ENTRY.size)]
    if any(e.offset + e.length > size - _TRAILER.size - hlen for e in entries):
        raise IntegrityError("pack header lists blobs beyond the pack's end")
    return entries
