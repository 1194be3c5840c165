"""Sealing chunks and objects: zstd, then AES-256-GCM with a bound context.

Chunks are sealed with the chunk id as associated data, so a ciphertext
cannot be passed off as another chunk. Other objects (pack headers, index,
snapshot manifests) are sealed in an envelope whose header names the DEK
version, with the object kind as associated data.
"""

from __future__ import annotations

import os
import struct
import threading

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.errors import IntegrityError, RepositoryError
from core.repository.keys import DataKey

ENVELOPE_MAGIC = b"BKS\x01"
_ENVELOPE_HEADER = struct.Struct(">4sI12s")  # magic, dek version, nonce
ENVELOPE_HEADER_SIZE = _ENVELOPE_HEADER.size
NONCE_SIZE = 12
TAG_SIZE = 16
# Refuse to decompress more than this from one chunk or object: a damaged
# or hostile repository must not be able to exhaust memory.
MAX_PLAIN = 512 * 1024 * 1024

_local = threading.local()


def _compressor(level: int, window_log: int | None = None) -> zstandard.ZstdCompressor:
    # One compressor per thread and level: sharing one between threads
    # crashed python-zstandard 0.25 on this machine. Never with zstd's own
    # worker threads (threads=N): a child forked with a preexec_fn frees the
    # cached compressor, whose pool then waits forever for workers the child
    # does not have (it hung the test suite).
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    c = cache.get((level, window_log))
    if c is None:
        if window_log is None:
            c = zstandard.ZstdCompressor(level=level)
        else:
            params = zstandard.ZstdCompressionParameters.from_level(level, window_log=window_log)
            c = zstandard.ZstdCompressor(compression_params=params)
        cache[(level, window_log)] = c
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def chunk_id(data: bytes | memoryview, id_key: bytes) -> bytes:
    """The keyed hash naming a chunk: equal content, equal id; leaks nothing."""
    return blake3.blake3(data, key=id_key).digest()


def compress(data: bytes | memoryview, level: int, window_log: int | None = None) -> bytes:
    """zstd-compress with this thread's compressor (``window_log``: instead of the level's own window)."""
    return _compressor(level, window_log).compress(data)


def decompress(data: bytes) -> bytes:
    """zstd-decompress, refusing absurd sizes."""
    return _decompressor().decompress(data, max_output_size=MAX_PLAIN)


def decompress_frames(data: bytes) -> bytes:
    """zstd-decompress one or more concatenated frames, refusing absurd sizes (ZstdError if anything is off)."""
    d = _decompressor()
    pieces: list[bytes] = []
    total = 0
    rest = data
    while rest:
        declared = zstandard.get_frame_parameters(rest).content_size
        if declared > MAX_PLAIN - total:  # unknown sizes (-1 as a u64) too: every writer records them
            raise zstandard.ZstdError("frame larger than any object")
        frame = d.decompressobj(write_size=max(declared, 1))
        piece = frame.decompress(rest)
        if not frame.eof or len(piece) != declared:
            raise zstandard.ZstdError("truncated or inconsistent frame")
        pieces.append(piece)
        total += declared
        rest = frame.unused_data
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _envelope_head(key: DataKey) -> tuple[bytes, bytes]:
    """(nonce, envelope header) for a new object sealed with ``key``: a fresh nonce every time."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce, _ENVELOPE_HEADER.pack(ENVELOPE_MAGIC, key.version, nonce)


def seal_packed(packed: bytes, kind: bytes, key: DataKey) -> bytes:
    """Encrypt an object payload already compressed (as :func:`seal_object` would after compressing)."""
    nonce, head = _envelope_head(key)
    return head + AESGCM(key.enc_key).encrypt(nonce, packed, head[:8] + kind)


class PackedSealer:
    """:func:`seal_packed` for a payload that arrives in pieces: the same bytes, each piece sealed as it comes.

    ``head`` first, then :meth:`update` of every piece in order, then :meth:`finish` (the GCM tag): joined,
    they are exactly what ``seal_packed`` of the joined pieces gives, and :func:`open_packed` opens them.
    """

    def __init__(self, kind: bytes, key: DataKey) -> None:
        nonce, self.head = _envelope_head(key)
        self._enc = Cipher(algorithms.AES(key.enc_key), modes.GCM(nonce)).encryptor()
        self._enc.authenticate_additional_data(self.head[:8] + kind)

    def update(self, piece: bytes) -> bytes:
        """The ciphertext of the next piece of the payload."""
        return self._enc.update(piece)

    def finish(self) -> bytes:
        """The authentication tag: the object's last bytes."""
        tail = self._enc.finalize()  # empty for GCM
        return tail + self._enc.tag


def open_packed(data: bytes, kind: bytes, keys: dict[int, DataKey]) -> bytes:
    """Decrypt an object sealed by :func:`seal_object` or :func:`seal_packed`; its payload stays compressed."""
    version = envelope_key_version(data)
    key = keys.get(version)
    if key is None:
        raise RepositoryError(f"object needs data key version {version}, which is not in keys/")
    _, _, nonce = _ENVELOPE_HEADER.unpack_from(data)
    try:
        return AESGCM(key.enc_key).decrypt(nonce, data[_ENVELOPE_HEADER.size:], data[:8] + kind)
    except InvalidTag:
        raise IntegrityError(f"{kind.decode()} object failed authentication") from None


def seal_chunk(data: bytes, cid: bytes, key: DataKey, level: int) -> bytes:
    """Compress and encrypt one chunk: nonce || ciphertext+tag."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(key.enc_key).encrypt(nonce, compress(data, level), cid)


def _unseal(blob: bytes | memoryview, cid: bytes, key: DataKey) -> tuple[bytes, bytes]:
    """(compressed, plaintext) of a sealed chunk, fully checked against its id."""
    try:
        packed = AESGCM(key.enc_key).decrypt(bytes(blob[:NONCE_SIZE]), bytes(blob[NONCE_SIZE:]), cid)
        plain = decompress(packed)
    except (InvalidTag, zstandard.ZstdError):
        raise IntegrityError(f"chunk {cid.hex()[:16]} failed authentication") from None
    if chunk_id(plain, key.id_key) != cid:
        raise IntegrityError(f"chunk {cid.hex()[:16]} does not match its id")
    return packed, plain


def open_chunk(blob: bytes | memoryview, cid: bytes, key: DataKey) -> bytes:
    """Decrypt, decompress and check one chunk; IntegrityError if anything is off."""
    return _unseal(blob, cid, key)[1]


def reseal_chunk(blob: bytes | memoryview, cid: bytes, old: DataKey, new: DataKey) -> bytes:
    """Move a sealed chunk to another data key, keeping its compressed bytes.

    The chunk is fully checked first (authenticated, decompressed and matched
    with its id), so re-encryption never copies damage; the compressed form
    is then sealed again as is, which spares re-compressing it.
    """
    packed, _ = _unseal(blob, cid, old)
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(new.enc_key).encrypt(nonce, packed, cid)


def seal_object(payload: bytes, kind: bytes, key: DataKey, level: int = 3) -> bytes:
    """Compress and encrypt a metadata object (index, manifest, pack header)."""
    return seal_packed(compress(payload, level), kind, key)


def envelope_key_version(data: bytes) -> int:
    """The DEK version an envelope was sealed with."""
    if len(data) < _ENVELOPE_HEADER.size or data[:4] != ENVELOPE_MAGIC:
        raise IntegrityError("object is not a backstop envelope")
    return int(_ENVELOPE_HEADER.unpack_from(data)[1])


def open_object(data: bytes, kind: bytes, keys: dict[int, DataKey]) -> bytes:
    """Decrypt and decompress a metadata object sealed by :func:`seal_object`."""
    packed = open_packed(data, kind, keys)
    try:
        return decompress(packed)
    except zstandard.ZstdError:
        raise IntegrityError(f"{kind.decode()} object failed authentication") from None
