"""Unit tests of the repository format's building blocks."""

from __future__ import annotations

import hashlib
import os

import pytest
from core.errors import IntegrityError, RepositoryError, WrongKey
from core.repository.crypto import chunk_id, open_chunk, open_object, seal_chunk, seal_object
from core.repository.index import Index, IndexFile
from core.repository.keys import KdfParams, new_data_key, unwrap_data_key, wrap_data_key
from core.repository.manifest import FileEntry, Manifest
from core.repository.packs import PackBuilder, read_pack_header

KEY = new_data_key(1)
FAST_KDF = KdfParams(salt=b"0123456789abcdef", n=2**10)


def test_chunk_seal_round_trip_and_tamper_detection() -> None:
    data = os.urandom(1000) + b"A" * 100_000
    cid = chunk_id(data, KEY.id_key)
    blob = seal_chunk(data, cid, KEY, 3)
    assert len(blob) < len(data)  # compressed
    assert open_chunk(blob, cid, KEY) == data
    for pos in (0, 12, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x80
        with pytest.raises(IntegrityError):
            open_chunk(bytes(bad), cid, KEY)
    # A ciphertext cannot be passed off as another chunk (the id is associated data).
    other = chunk_id(b"other", KEY.id_key)
    with pytest.raises(IntegrityError):
        open_chunk(blob, other, KEY)


def test_chunk_ids_are_keyed() -> None:
    other = new_data_key(1)
    assert chunk_id(b"same", KEY.id_key) != chunk_id(b"same", other.id_key)
    assert chunk_id(b"same", KEY.id_key) == chunk_id(b"same", KEY.id_key)
    assert chunk_id(b"same", KEY.id_key) != hashlib.sha256(b"same").digest()


def test_envelope_binds_kind_and_key_version() -> None:
    sealed = seal_object(b'{"a":1}', b"index", KEY)
    assert open_object(sealed, b"index", {1: KEY}) == b'{"a":1}'
    with pytest.raises(IntegrityError):
        open_object(sealed, b"snapshot", {1: KEY})
    with pytest.raises(RepositoryError, match="needs data key version 1"):
        open_object(sealed, b"index", {2: KEY})


def test_pack_header_describes_its_blobs() -> None:
    b = PackBuilder(target_size=10_000)
    chunks = [os.urandom(3000) for _ in range(5)]
    for c in chunks:
        cid = chunk_id(c, KEY.id_key)
        b.add(cid, 1, seal_chunk(c, cid, KEY, 3), len(c))
    assert b.full
    pack = b.finish(KEY)
    assert pack.id == hashlib.sha256(pack.data).hexdigest()
    assert read_pack_header(pack.data, {1: KEY}) == pack.blobs
    for entry, c in zip(pack.blobs, chunks, strict=False):
        assert open_chunk(pack.data[entry.offset: entry.offset + entry.length], entry.id, KEY) == c
    f = IndexFile()
    f.add_pack(pack)
    name, sealed = f.seal(KEY)
    assert name == "index/" + hashlib.sha256(sealed).hexdigest()
    idx = Index()
    idx.merge(name, IndexFile.open(sealed, {1: KEY}))
    assert all(e.id in idx for e in pack.blobs) and idx.packs == {pack.id: len(pack.data)}


def test_key_wrapping() -> None:
    stored = wrap_data_key(KEY, b"pass", "repo1", FAST_KDF)
    assert KEY.enc_key not in stored and KEY.id_key not in stored
    got = unwrap_data_key(stored, b"pass", "repo1", "here")
    assert (got.enc_key, got.id_key, got.version) == (KEY.enc_key, KEY.id_key, 1)
    with pytest.raises(WrongKey, match="wrong passphrase"):
        unwrap_data_key(stored, b"wrong", "repo1", "here")
    # A key object copied into another repository does not open there.
    with pytest.raises(WrongKey):
        unwrap_data_key(stored, b"pass", "repo2", "here")
    assert "enc_key" not in repr(KEY) and KEY.enc_key.hex() not in repr(KEY)


def test_manifest_round_trip() -> None:
    m = Manifest(db="w", kind="logical", started_at="s", finished_at="f",
                 files=[FileEntry("x", "fmt", 3, "ab", ["00" * 32])], size_bytes=3, stored_bytes=1, new_chunks=1,
                 targets=["t"], tables=["a.b"])
    sid, name, data = m.seal(KEY)
    assert name == f"snapshots/{sid}" and sid == hashlib.sha256(data).hexdigest()
    assert Manifest.open(data, {1: KEY}) == m
