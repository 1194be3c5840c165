"""CRC-32C as PostgreSQL's backup_manifest writes it, and joining the CRCs of pieces computed apart.

A restore checks each file against the CRC-32C the server computed when it
sent the file (the snapshot keeps the server's backup_manifest). The pieces
of a large file are written out of order on several threads, each piece's
CRC computed while it is still in the CPU's cache; :func:`crc32c_combine`
joins them in file order afterwards (zlib's ``crc32_combine``, for the
Castagnoli polynomial), so no thread ever reads the file a second time.
"""

from __future__ import annotations

from functools import lru_cache

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), bit-reflected


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial (both reflected, x^0 in the top bit)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))  # x^(2^(n+1)) = (x^(2^n))^2
    return table


_X2N = _x2n_table()


@lru_cache(maxsize=256)
def _x8n(n: int) -> int:
    """x^(8n) modulo the polynomial: the operator shifting a CRC past ``n`` zero bytes (runs repeat lengths)."""
    p = 1 << 31  # x^0
    k = 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32C of A + B from the CRC-32C of A, that of B, and B's length in bytes."""
    if len2 <= 0:
        return crc1
    return _multmodp(_x8n(len2), crc1) ^ crc2


def manifest_hex(value: int) -> str:
    """A CRC-32C as backup_manifest prints it: the value's bytes as they lie in memory (little-endian), in hex."""
    return value.to_bytes(4, "little").hex()
