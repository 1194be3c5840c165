"""Envelope keys: a KEK derived from the passphrase wraps each data key (DEK).

A DEK is two secrets: ``enc_key`` (AES-256-GCM for chunks and objects) and
``id_key`` (keys the BLAKE3 hash that names chunks). ``id_key`` is the same in
every DEK version of a repository, so rotating the DEK keeps deduplication.
Rotating the KEK rewrites only the small ``keys/`` objects.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from core.errors import IntegrityError, RepositoryError, WrongKey
from core.format import now_iso

KEY_PREFIX = "keys/"
# scrypt N=2^15, r=8: ~32 MiB and ~0.1 s per unlock here; slows guessing
# without making every CLI call (archive_command) sluggish.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


def key_object_name(version: int) -> str:
    """Name of the object that holds DEK ``version``."""
    return f"{KEY_PREFIX}dek-{version:08d}"


@dataclass(frozen=True)
class DataKey:
    """One version of the data key."""

    version: int
    enc_key: bytes
    id_key: bytes

    def __repr__(self) -> str:  # never print key material
        return f"DataKey(version={self.version})"


@dataclass(frozen=True)
class KdfParams:
    salt: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def to_json(self) -> dict[str, object]:
        return {"kdf": "scrypt", "salt": _b64(self.salt), "n": self.n, "r": self.r, "p": self.p}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KdfParams:
        if d.get("kdf") != "scrypt":
            raise RepositoryError(f"unsupported key derivation {d.get('kdf')!r}; upgrade backstop")
        return cls(salt=_unb64(str(d["salt"])), n=int(d["n"]), r=int(d["r"]), p=int(d["p"]))


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


@lru_cache(maxsize=8)
def derive_kek(passphrase: bytes, params: KdfParams) -> bytes:
    """The key-encryption key for a passphrase (cached: scrypt is slow on purpose)."""
    return Scrypt(salt=params.salt, length=32, n=params.n, r=params.r, p=params.p).derive(passphrase)


def _aad(repo_id: str, version: int) -> bytes:
    return f"backstop-dek:{repo_id}:{version}".encode()


def _kek_check(kek: bytes, repo_id: str) -> str:
    """Tells a wrong passphrase (this differs) from a damaged ``wrapped`` field (this matches).

    It costs a guesser the same scrypt per guess as the GCM tag does, so it
    reveals nothing the tag does not.
    """
    return hmac.new(kek, f"backstop-kek-check:{repo_id}".encode(), hashlib.sha256).hexdigest()


def _digest(doc: dict) -> str:
    """SHA-256 over every other field: a damaged key object is found before any passphrase is tried."""
    rest = {k: v for k, v in doc.items() if k != "digest"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def new_data_key(version: int, id_key: bytes | None = None) -> DataKey:
    """A fresh DEK; pass the repository's ``id_key`` to keep chunk ids stable."""
    return DataKey(version=version, enc_key=secrets.token_bytes(32), id_key=id_key or secrets.token_bytes(32))


def wrap_data_key(dek: DataKey, passphrase: bytes, repo_id: str, params: KdfParams | None = None,
                  dek_created: str | None = None) -> bytes:
    """Serialise a DEK wrapped by the passphrase's KEK (the stored key object).

    ``params`` reuses a KEK (same salt) so opening the repository costs one
    scrypt however many DEK versions it has; ``dek_created`` keeps a DEK's
    birth time when it is re-wrapped by a KEK rotation.
    """
    params = params or KdfParams(salt=secrets.token_bytes(16))
    kek = derive_kek(passphrase, params)
    nonce = os.urandom(12)
    secret = json.dumps({"enc_key": _b64(dek.enc_key), "id_key": _b64(dek.id_key)}).encode()
    wrapped = nonce + AESGCM(kek).encrypt(nonce, secret, _aad(repo_id, dek.version))
    now = now_iso()
    doc: dict[str, object] = {
        "format": 1,
        "version": dek.version,
        "created": now,
        "dek_created": dek_created or now,
        "kek": params.to_json(),
        "wrapped": _b64(wrapped),
        "check": _kek_check(kek, repo_id),
    }
    doc["digest"] = _digest(doc)
    return json.dumps(doc, indent=1).encode()


@dataclass(frozen=True)
class KeyObjectInfo:
    """The plaintext fields of a key object (nothing secret)."""

    version: int
    created: str  # when this wrap was made (the last KEK rotation)
    dek_created: str  # when the DEK itself was made
    kdf: KdfParams


def key_object_info(data: bytes) -> KeyObjectInfo:
    """Read a key object's plaintext fields without unwrapping it."""
    doc = _parse(data)
    try:
        created = str(doc["created"])
        return KeyObjectInfo(int(doc["version"]), created, str(doc.get("dek_created") or created),
                             KdfParams.from_json(doc["kek"]))
    except (KeyError, TypeError, ValueError):
        raise RepositoryError("a key object in keys/ is damaged or of an unknown format") from None


def _parse(data: bytes) -> dict:
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != 1:
            raise ValueError("not a key object")
        return doc
    except ValueError:
        raise RepositoryError("a key object in keys/ is damaged or of an unknown format") from None


def unwrap_data_key(data: bytes, passphrase: bytes, repo_id: str, where: str) -> DataKey:
    """Recover a DEK from its stored key object.

    WrongKey if the passphrase is wrong; IntegrityError if the object is
    damaged (its digest or, with a matching passphrase check, its wrapped key
    fails). Objects written before the digest existed cannot tell the two
    apart and report a wrong passphrase.
    """
    try:
        doc = _parse(data)
    except RepositoryError:
        raise IntegrityError(f"{where}: a key object is damaged (not a readable key object)") from None
    damaged = IntegrityError(f"{where}: key object for data key {doc.get('version')} is damaged "
                             "(its checksum does not match)")
    if "digest" in doc and not hmac.compare_digest(str(doc["digest"]), _digest(doc)):
        raise damaged
    try:
        version = int(doc["version"])
        kek = derive_kek(passphrase, KdfParams.from_json(doc["kek"]))
        raw = _unb64(str(doc["wrapped"]))
    except (KeyError, TypeError, ValueError):
        raise damaged from None
    wrong = WrongKey(
        f"wrong passphrase: it does not unlock the repository key at {where}; "
        "check encryption.passphrase_file / passphrase_env"
    )
    checked = "check" in doc
    if checked and not hmac.compare_digest(str(doc["check"]), _kek_check(kek, repo_id)):
        raise wrong
    try:
        secret = json.loads(AESGCM(kek).decrypt(raw[:12], raw[12:], _aad(repo_id, version)))
        return DataKey(version=version, enc_key=_unb64(secret["enc_key"]), id_key=_unb64(secret["id_key"]))
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise (damaged if checked else wrong) from None
