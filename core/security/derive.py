"""Keys for the security features, derived from the repository's ``id_key``.

``id_key`` is the one secret every DEK version of a repository shares and
that no rotation changes (FORMAT.md 5.1), so keys derived from it stay valid
across KEK and DEK rotations: the audit chain and the sealed TOTP secrets
never need re-keying. They are reachable only with the passphrase, so a
person who can edit the SQLite catalog but does not hold the passphrase can
neither forge audit entries nor read or plant TOTP secrets.

Each purpose gets its own key (HKDF-SHA256, RFC 5869; salt = the repository
id, info = a purpose label), so no key is ever used for two jobs.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

AUDIT_MAC = "audit-mac/v1"
OPERATOR_MAC = "operator-mac/v1"
TOTP_SEAL = "totp-seal/v1"


def derive_key(id_key: bytes, repo_id: str, purpose: str) -> bytes:
    """A 32-byte key for ``purpose``: HKDF-SHA256(ikm=id_key, salt=repo_id, info="backstop:" + purpose)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(repo_id),
                info=f"backstop:{purpose}".encode())
    return hkdf.derive(id_key)


@dataclass(frozen=True)
class SecurityKeys:
    """The derived keys, for one repository."""

    repo_id: str
    audit_mac: bytes
    operator_mac: bytes
    totp_seal: bytes

    @classmethod
    def derive(cls, id_key: bytes, repo_id: str) -> SecurityKeys:
        return cls(repo_id, derive_key(id_key, repo_id, AUDIT_MAC), derive_key(id_key, repo_id, OPERATOR_MAC),
                   derive_key(id_key, repo_id, TOTP_SEAL))

    def __repr__(self) -> str:  # never print key material
        return f"SecurityKeys(repo_id={self.repo_id[:8]})"
